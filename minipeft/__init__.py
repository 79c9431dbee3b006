"""minipeft — parameter-efficient fine-tuning from scratch, the library of the book
*From unimodal to multimodal: parameter-efficient fine-tuning, from scratch*.

``minipeft.core`` holds the shared mechanics (inject, params, train, scale, io), ``minipeft.models`` the frozen
pretrained backbones that ship offline, ``minipeft.datasets`` the book's data, ``minipeft.peft`` one file per
method.
"""

from .core.scale import scale

__version__ = "0.1.0"
__all__ = ["scale", "__version__"]
