"""Part III — multimodal methods: connect a frozen image encoder to a frozen language model.

``visual_prompt`` holds the shared glue (:class:`VisualProjection`: encoder features → visual prompt tokens in the
language model's width). ``llama_adapter_v2`` is LLaMA-Adapter V2's multimodal side: its visual path (early fusion
into a ``LlamaForCausalLM`` through Part II's ``minipeft.peft.llama_adapter``), the disjoint parameter groups and
joint training. ``experts`` holds LLaMA-Adapter V2's inference-time expert models, which
describe the image in *text* for the prompt (:class:`PixelReader`, :class:`ProbeCaptioner`, :func:`with_context`).
``splice`` puts visual tokens at image-placeholder positions of any ``transformers`` causal LM (label masking, batching,
generated answers and their scoring); ``projector`` (LLaVA / MiniGPT-4), ``qformer`` (BLIP-2) and ``video_qformer``
(Video-LLaMA's video and audio branches) are the connectors built on it, each a method of the contract
(``apply(language_model, config)`` returns a :class:`~minipeft.core.Handle` whose ``model`` is the vision-language
model). Import a method by its module, as in Part II.
"""

from .experts import PixelReader, ProbeCaptioner, with_context
from .visual_prompt import VisualProjection

__all__ = ["PixelReader", "ProbeCaptioner", "VisualProjection", "with_context"]
