"""Part III — multimodal methods: connect a frozen image encoder to a frozen language model.

``visual_prompt`` holds the shared glue (:class:`VisualProjection`: encoder features → visual prompt tokens in the
language model's width). ``llama_adapter_v2`` is LLaMA-Adapter V2's multimodal side: its visual path (early fusion
into a ``LlamaForCausalLM`` through Part II's ``minipeft.peft.llama_adapter``), the disjoint parameter groups and
joint training. ``experts`` holds LLaMA-Adapter V2's inference-time expert models, which
describe the image in *text* for the prompt (:class:`PixelReader`, :class:`ProbeCaptioner`, :func:`with_context`).
Import a method by its module, as in Part II.
"""

from .experts import PixelReader, ProbeCaptioner, with_context
from .visual_prompt import VisualProjection

__all__ = ["PixelReader", "ProbeCaptioner", "VisualProjection", "with_context"]
