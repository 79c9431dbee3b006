r"""LLaMA-Adapter V2's multimodal side: the visual projection, the two disjoint parameter groups, joint training.

Part II's :mod:`minipeft.peft.llama_adapter` holds the method on a language model: v1's zero-init gated prompts and
V2's bias, scale and unlocked norms. What V2 adds to read an image lives here, in Part III (Gao et al. 2023,
"LLaMA-Adapter V2: Parameter-Efficient Visual Instruction Model", arXiv:2304.15010):

* :func:`apply` — V2 with its visual path: a :class:`~minipeft.multimodal.VisualProjection` turns a frozen image
  encoder's features into ``visual_len`` tokens of the language model's width, which enter the early layers through
  the same zero-init gated attention (``fusion="early"``, the paper) or are added to the top layers' static prompts
  (``fusion="add"``, the released code);
* :func:`disjoint_groups` — V2's "joint training with disjoint parameters" (Sec. 4.2): image–text data trains the
  visual projection and the early gated attention; instruction data trains the late prompts and gates, the norms,
  biases and scales;
* :func:`joint_train` — one image–text batch and one language-only batch per step, each stepping only its own group:
  two :class:`~minipeft.core.Stream` s of the book's one training loop, :func:`minipeft.core.train`;
* :func:`count_llama_adapter_parameters` — the method's parameter counts at a paper's scale, on the meta device.

Chapter: Part III, "LLaMA-Adapter v1 and V2".
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import default_collate

from ..core.contract import count_on_meta
from ..core.params import decay_groups
from ..core.train import History, Stream, TrainConfig, train
from ..peft import llama_adapter
from ..peft.llama_adapter import VISUAL_ATTRIBUTE, LlamaAdapterConfig, LlamaAdapterHandle, LlamaAdapterV2Config
from .visual_prompt import VisualProjection


def apply(model: nn.Module, config: LlamaAdapterConfig | None = None,
          visual_projection: nn.Module | None = None) -> LlamaAdapterHandle:
    """LLaMA-Adapter (v1, or V2 with its visual path): :func:`minipeft.peft.llama_adapter.apply` plus, when
    ``config.visual_dim`` is set, a :class:`VisualProjection` from ``visual_dim`` to the model's width.

    Returns the :class:`~minipeft.peft.llama_adapter.LlamaAdapterHandle`; give it an image with
    ``handle.set_visual_features(features)`` or ``with handle.visual_features(features): ...``.
    """
    if (visual_projection is None and isinstance(config, LlamaAdapterV2Config) and config.visual_dim is not None
            and getattr(model, "config", None) is not None):
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        device = next(model.parameters()).device
        visual_projection = VisualProjection(config.visual_dim, text.hidden_size, config.visual_len, device=device)
    return llama_adapter.apply(model, config, visual_projection=visual_projection)


def disjoint_groups(handle: LlamaAdapterHandle, names: bool = False) -> dict[str, list]:
    """V2's disjoint groups: ``{"image_text": [...], "language": [...]}`` (parameters, or their names with
    ``names=True``). Together they are every trainable tensor of the method, and no tensor is in both.

    * ``fusion="early"`` (the paper): image–text = the visual projection + the early layers' gated attention;
      language = the top layers' prompts and gates + biases, scales and norms.
    * ``fusion="add"`` (the released code): image–text = the visual projection + every prompt and gate;
      language = biases, scales and norms.
    * without a visual path everything is ``"language"``.

    Train one group per batch type, e.g. ``torch.optim.AdamW(groups["image_text"])`` on captions and another
    optimiser over ``groups["language"]`` on instructions.
    """
    image_text_modules = list(handle.early_layers)
    if handle.has_visual:
        image_text_modules.append(VISUAL_ATTRIBUTE)
        if handle.config.fusion == "add":
            image_text_modules += handle.top_layers
    groups: dict[str, list] = {"image_text": [], "language": []}
    for name, parameter in handle.named_parameters():
        in_image_text = any(name.startswith(m + ".") for m in image_text_modules) and not name.endswith(
            ("adapter_bias", "adapter_scale"))  # a linear layer inside an early attention is still "language"
        groups["image_text" if in_image_text else "language"].append(name if names else parameter)
    return groups


def joint_train(model: nn.Module, handle: LlamaAdapterHandle, image_text_data: Sequence,
                image_text_loss: Callable[[nn.Module, Any], torch.Tensor], language_data: Sequence,
                language_loss: Callable[[nn.Module, Any], torch.Tensor], config: TrainConfig, *,
                language_batch_size: int | None = None, language_lr: float | None = None, disjoint: bool = True,
                collate: Callable[[list], Any] = default_collate,
                evaluate: Callable[[nn.Module], dict] | None = None) -> dict[str, History]:
    """V2's joint training (Sec. 4.2): every step trains on one image–text batch, then on one language-only batch.

    * ``disjoint=True`` (the paper): the image–text batch updates only ``disjoint_groups(handle)["image_text"]``
      and the language batch only ``["language"]``. Each group has its own AdamW, and while one group steps the other
      is frozen (``requires_grad=False``), so autograd does not even compute the other group's gradient and neither
      kind of data can move the other's parameters — not through a gradient and not through an optimiser's momentum.
    * ``disjoint=False`` (the ablation, "single-stage"): one AdamW over every V2 tensor, and both batches update
      everything. Same data, same order, same number of updates, same learning rate per tensor: only the split
      differs.

    Before every language batch the image is cleared (``handle.set_visual_features(None)``), so a text-only batch
    never reads the features the previous image–text batch left behind. ``image_text_loss`` must set the features of
    its own batch (e.g. looked up in a cache with the batch's image indices).

    Args:
        model, handle: a model and the :class:`LlamaAdapterHandle` of a V2 with a visual path.
        image_text_data, image_text_loss: map-style dataset and ``loss(model, batch) -> scalar`` of image–text pairs.
        language_data, language_loss: the same for the language-only instructions.
        config: a :class:`~minipeft.core.TrainConfig`. ``steps`` counts *pairs* of batches; everything else is
            used as :func:`~minipeft.core.train` uses it (checkpoints and evaluation included): this function only
            builds V2's two :class:`~minipeft.core.Stream` s and calls it with ``mix="alternate"``.
        language_batch_size: batch size of the language stream (default: ``config.batch_size``).
        language_lr: peak learning rate of the language group's tensors (default: ``config.lr``, which the
            image–text group's tensors use). Biases, scales and norms act on every input, so they usually want a
            smaller one than the prompts and the projection. It follows the same warm-up and decay.
        disjoint: the paper's disjoint groups (True) or one group for everything (False).

    Returns:
        ``{"image_text": History, "language": History}``, one loss per step each; both carry the total wall time.
    """
    if not handle.has_visual:
        raise ValueError("joint training needs V2 with a visual path (LlamaAdapterV2Config(visual_dim=...)); without "
                         "one every tensor is in the language group: use minipeft.core.train.")
    if len(image_text_data) == 0 or len(language_data) == 0:
        raise ValueError("both training sets must be non-empty (image–text and language-only).")
    named = dict(handle.named_parameters())
    lrs = {"image_text": config.lr, "language": config.lr if language_lr is None else language_lr}
    # Weight decay on matrices only, as minipeft.core.train does; each group at its own peak learning rate.
    groups = {stream: decay_groups([(n, named[n]) for n in names], config.weight_decay, lr=lrs[stream])
              for stream, names in disjoint_groups(handle, names=True).items()}
    streams = [
        Stream("image_text", image_text_data, image_text_loss, config.batch_size, groups["image_text"],
               collate=collate),
        # Before every language batch the image goes: a text-only batch must not read the last image-text batch's.
        Stream("language", language_data, language_loss, language_batch_size or config.batch_size, groups["language"],
               before=lambda model: handle.set_visual_features(None), collate=collate),
    ]
    try:
        history = train(model, streams, config=config, evaluate=evaluate, mix="alternate",
                        separate_optimizers=disjoint)
    finally:
        handle.set_visual_features(None)
    return history.streams


def count_llama_adapter_parameters(model_config, adapter_len: int = 10, adapter_layers: int | None = 30,
                                   v2: bool = False, **options) -> dict[str, int]:
    r"""Count the trainable parameters of LLaMA-Adapter on a model of this shape, built on the meta device.

    The model is built with ``torch.device("meta")`` (shapes only, no memory: LLaMA-65B takes a fraction of a
    second), the method is applied to it, and its trainable tensors are counted by kind. So the counts are those of
    the real method, not of a formula; the tests check them against the closed forms

    * v1: prompts :math:`K L C`, gates :math:`L H` (or :math:`L`);
    * V2: biases :math:`L_{tot} \sum \text{out}`, scales :math:`L_{tot} \sum \text{out}` (``scale_on="output"``) or
      :math:`L_{tot} \sum \text{in}` (``"input"``) over the 7 linear layers, norms :math:`(2 L_{tot} + 1) C`.

    Args:
        model_config: a ``transformers.LlamaConfig`` or a dict of its fields, e.g. LLaMA-7B:
            ``{"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "vocab_size": 32000}``.
        adapter_len, adapter_layers: ``K`` and ``L`` (the paper's 10 and 30 by default).
        v2: count LLaMA-Adapter V2 (bias, scale, norms, and the visual path if ``visual_dim`` is given).
        options: further config fields (``gate_per_head``, ``scale_on``, ``train_norms``, ``bias_scale``,
            ``visual_dim``, ``visual_len``, ``visual_layers``, ``fusion``, ``gate``).

    Returns:
        ``{"prompts", "gates", "biases", "scales", "norms", "visual", "total", "base_model"}``: counts, with
        ``base_model`` the frozen model's own size (the norms are part of it too).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if isinstance(model_config, dict):
        model_config = LlamaConfig(**model_config)
    config_class = LlamaAdapterV2Config if v2 else LlamaAdapterConfig
    config = config_class(adapter_len=adapter_len, adapter_layers=adapter_layers, **options)
    base_model, handle = count_on_meta(lambda: LlamaForCausalLM(model_config), lambda model: apply(model, config))
    counts = dict.fromkeys(("prompts", "gates", "biases", "scales", "norms", "visual"), 0)
    kinds = {"adaption_prompt": "prompts", "adaption_gate": "gates", "adapter_bias": "biases",
             "adapter_scale": "scales"}
    for name, parameter in handle.named_parameters():
        kind = kinds.get(name.rsplit(".", 1)[-1])
        if kind is None:
            kind = "visual" if name.startswith(VISUAL_ATTRIBUTE + ".") else "norms"
        counts[kind] += parameter.numel()
    counts["total"] = sum(counts.values())
    counts["base_model"] = base_model
    return counts
