"""minipeft — parameter-efficient fine-tuning from scratch, the library of the book
*From unimodal to multimodal: parameter-efficient fine-tuning, from scratch*.

``minipeft.core`` holds the shared mechanics (inject, params, train, scale, io), ``minipeft.models`` the frozen
pretrained backbones that ship offline, ``minipeft.datasets`` the book's data, ``minipeft.peft`` one file per
method.
"""

import warnings

from .core.scale import scale

# tqdm.auto (imported by transformers/sentence-transformers) warns when ipywidgets is absent and falls back to a
# text bar, which is exactly what the book wants; the warning is noise in every notebook.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
__all__ = ["scale", "__version__"]
