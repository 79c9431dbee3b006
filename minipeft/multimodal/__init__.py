"""Part III — multimodal methods: connect a frozen image encoder to a frozen language model.

``visual_prompt`` holds the shared glue (:class:`VisualProjection`: encoder features → visual prompt tokens in the
language model's width). LLaMA-Adapter V2's early fusion (``minipeft.peft.llama_adapter``) feeds those tokens into the
early layers of a ``LlamaForCausalLM``. ``experts`` holds LLaMA-Adapter V2's inference-time expert models, which
describe the image in *text* for the prompt (:class:`PixelReader`, :class:`ProbeCaptioner`, :func:`with_context`).
Import a method by its module, as in Part II.
"""

from .experts import PixelReader, ProbeCaptioner, with_context
from .visual_prompt import VisualProjection

__all__ = ["PixelReader", "ProbeCaptioner", "VisualProjection", "with_context"]
