"""Part III — multimodal methods: connect a frozen image encoder to a frozen language model.

``visual_prompt`` holds the shared glue (:class:`VisualProjection`: encoder features → visual prompt tokens in the
language model's width). LLaMA-Adapter V2's early fusion (``minipeft.peft.llama_adapter``) feeds those tokens into the
early layers of a ``LlamaForCausalLM``. Import a method by its module, as in Part II.
"""

from .visual_prompt import VisualProjection

__all__ = ["VisualProjection"]
