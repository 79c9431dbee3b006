"""A frozen-feature cache: encode each data set once per encoder, then reuse the features in every run and chapter.

A connector (projector, Q-Former) trains on top of *frozen* encoders, so the encoder's output for a given input
never changes: EfficientNet-Lite0 takes ~56 ms per image on one core, and Whisper's encoder ~0.1–0.4 s per clip,
which would eat a chapter's whole budget on every run. We therefore store

.. math::

    F = \\mathrm{encoder}(X) \\quad\\text{under the key}\\quad
    k = \\mathrm{sha256}(\\text{name},\\ \\mathrm{fp}(\\text{encoder}),\\ \\mathrm{fp}(X),\\ \\text{storage dtype})

where :math:`\\mathrm{fp}(X)` hashes the input bytes (dtype, shape and values) and :math:`\\mathrm{fp}(\\text{encoder})`
hashes every weight of the encoder plus its preprocessing settings. Change one pixel, one weight or the pooling and
the key changes, so a stale file is never read; the same data and encoder always hit the same file.

Files live in ``<cache>/features/`` (``MINIPEFT_CACHE`` or ``~/.cache/minipeft``, see
:func:`minipeft.models.cache_dir`) as safetensors with the fingerprints in their metadata, written atomically
(:func:`minipeft.core.io.atomic_write`), so an interrupted run never leaves half a file. Features are stored in
float16 by default (half the disk; encoders' outputs lose nothing a connector can use) and always returned as
float32 — the same values on a miss and on a hit. Introduced in chapter 11; used by chapters 11–13.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.io import atomic_write
from ..models._cache import cache_dir

FORMAT_VERSION = 1


class FeatureCacheError(RuntimeError):
    """A cached feature file cannot be read or does not belong to the key it is stored under."""


def fingerprint(*parts) -> str:
    """sha256 over arrays/tensors (dtype, shape, bytes) and JSON-able values, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu()
            digest.update(f"tensor{part.dtype}{tuple(part.shape)}".encode())
            digest.update(part.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(part, np.ndarray):
            digest.update(f"array{part.dtype}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's class and every parameter and buffer (name, dtype, shape, values)."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(fingerprint(name, tensor).encode())
    return digest.hexdigest()


def feature_path(name: str, key: str) -> Path:
    return cache_dir() / "features" / f"{name}-{key[:24]}.safetensors"


def _read(path: Path, expected: dict) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("minipeft_features", "{}"))
            features = handle.get_tensor("features")
    except Exception as error:  # safetensors raises its own error types on a truncated or garbled file
        raise FeatureCacheError(
            f"the cached features {path} cannot be read ({type(error).__name__}: {error}); the file is corrupt or "
            "was cut short. Delete it (or pass refresh=True) and they will be recomputed."
        ) from error
    for field in ("name", "encoder", "data", "dtype"):
        if metadata.get(field) != expected[field]:
            raise FeatureCacheError(
                f"the cached features {path} were made with a different {field} ({metadata.get(field)!r}, expected "
                f"{expected[field]!r}); delete the file (or pass refresh=True) and they will be recomputed."
            )
    return features


@torch.no_grad()
def cached_features(name: str, encode: Callable[[torch.Tensor], torch.Tensor], data, *, encoder_key: str,
                    batch_size: int = 32, store_dtype: torch.dtype = torch.float16, refresh: bool = False,
                    progress: bool = False) -> torch.Tensor:
    """``encode`` applied to ``data`` in batches along dim 0, computed once per (``encoder_key``, data) and cached.

    Args:
        name: a readable prefix of the file name (``"efficientnet-grid"``); part of the key.
        encode: maps a batch (a slice of ``data`` as a tensor) to features with the batch as dim 0.
        data: a numpy array or tensor (N, ...); its bytes are fingerprinted.
        encoder_key: a string that changes whenever the encoder or its preprocessing does
            (e.g. ``module_fingerprint(encoder)`` plus settings).
        store_dtype: dtype on disk; the result is always float32 and identical on a miss and a hit.
        refresh: recompute and overwrite even if a file exists (e.g. after a :class:`FeatureCacheError`).

    Returns features (N, ...) as a float32 CPU tensor.
    """
    if not isinstance(data, (np.ndarray, torch.Tensor)):
        raise TypeError(f"data must be a numpy array or a torch tensor, got {type(data).__name__}.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a positive batch size.")
    expected = {"name": name, "encoder": encoder_key, "data": fingerprint(data), "dtype": str(store_dtype),
                "version": FORMAT_VERSION}
    key = fingerprint(expected)
    path = feature_path(name, key)
    if path.exists() and not refresh:
        return _read(path, expected).float()
    from safetensors.torch import save_file

    batches = range(0, len(data), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"encoding {name}", unit="batch")
    outputs = []
    for start in batches:
        batch = data[start:start + batch_size]
        batch = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        outputs.append(encode(batch).detach().to("cpu", store_dtype))
    features = torch.cat(outputs).contiguous()  # (N, ...)
    metadata = {"minipeft_features": json.dumps({**expected, "shape": list(features.shape)}, sort_keys=True)}
    atomic_write(path, lambda temporary: save_file({"features": features}, temporary, metadata=metadata))
    return features.float()


def _as_image_batch(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] → float (B, 3, H, W) in [0, 1]."""
    if batch.dtype == torch.uint8:
        if batch.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3); got {tuple(batch.shape)}.")
        return batch.permute(0, 3, 1, 2).float() / 255.0  # (B, H, W, 3) → (B, 3, H, W)
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W) in [0, 1]; got {tuple(batch.shape)}.")
    return batch.float()


def image_features(images, *, encoder=None, grid: int = 7, size: int = 224, batch_size: int = 32,
                   refresh: bool = False, progress: bool = False) -> torch.Tensor:
    """EfficientNet-Lite0 patch tokens of images, cached: (..., grid·grid, 1280).

    ``images``: uint8 (..., H, W, 3) — e.g. :attr:`SceneSet.images` (N, S, S, 3) or :attr:`ClipSet.frames`
    (N, T, S, S, 3), whose leading dims are kept — or a float tensor (N, 3, H, W) in [0, 1]. Images are resized
    to ``size`` px (224: the model's training size; its grid is ``size / 32`` cells per side, 7×7 at 224, 4×4 at
    128), and the grid is average-pooled to ``grid``×``grid`` (``grid=1``: the pooled image vector).
    ``encoder``: an :class:`~minipeft.models.EfficientNetEncoder` (default: the frozen ImageNet weights).

    Identical uint8 images are encoded once: a clip's frames repeat between its events (the book's clips show
    3–4 distinct pictures in 8 frames), and a frozen encoder gives the same features for the same pixels.
    """
    from ..models.efficientnet import load_efficientnet_lite0, preprocess_images

    if not isinstance(size, int) or isinstance(size, bool) or size < 32:
        raise ValueError(f"size={size!r}; give the resize target in pixels, at least 32 (one grid cell).")
    native = -(-size // 32)  # EfficientNet downsamples by 32 with 'same' padding: ceil(size / 32) cells per side
    if not 1 <= grid <= native:
        raise ValueError(f"grid={grid}; EfficientNet-Lite0 at {size} px gives a {native}×{native} grid, pool it "
                         f"to 1..{native} per side.")
    if encoder is None:
        encoder, _ = load_efficientnet_lite0()
    uint8 = isinstance(images, np.ndarray) and images.dtype == np.uint8 or \
        isinstance(images, torch.Tensor) and images.dtype == torch.uint8
    leading = tuple(images.shape[:-3])  # (N,) or (N, T)
    flat = images.reshape(-1, *images.shape[-3:]) if uint8 else images  # (N·T, H, W, 3)
    inverse = None
    if uint8:
        pixels = np.asarray(flat).reshape(len(flat), -1)  # (N·T, H·W·3): one row of bytes per image
        _, first, inverse = np.unique(pixels, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # keep the distinct images in the order they first appear
        flat, inverse = flat[np.sort(first)], np.argsort(order)[inverse.reshape(-1)]  # (U, H, W, 3); (N·T,) → row

    def encode(batch: torch.Tensor) -> torch.Tensor:
        tokens = encoder(preprocess_images(_as_image_batch(batch), size=size)).tokens  # (B, native², 1280)
        if grid == native:
            return tokens
        maps = tokens.transpose(1, 2).reshape(len(tokens), -1, native, native)  # (B, 1280, native, native)
        pooled = nn.functional.adaptive_avg_pool2d(maps, grid)  # (B, 1280, grid, grid)
        return pooled.flatten(2).transpose(1, 2)  # (B, grid·grid, 1280)

    size_key = "224px" if size == 224 else f"{size}px"  # 224 keeps the key (and cached files) of earlier runs
    key = f"efficientnet-lite0|{module_fingerprint(encoder)}|{size_key}|[-1,1]|grid={grid}"
    features = cached_features(f"efficientnet-lite0-grid{grid}", encode, flat, encoder_key=key,
                               batch_size=batch_size, refresh=refresh, progress=progress)  # (U, g², 1280)
    if inverse is not None:
        features = features[torch.from_numpy(inverse)]  # (N·T, g², 1280): each image gets its distinct row back
    return features.reshape(*leading, *features.shape[1:]) if uint8 else features  # (N, T, g², 1280)


def audio_features(waveforms, *, encoder=None, seconds: int | None = None, batch_size: int = 8,
                   refresh: bool = False, progress: bool = False) -> torch.Tensor:
    """Whisper tiny.en encoder frames of 16 kHz waveforms (N, samples), cached: (N, frames, 384).

    One frame per 20 ms; the window is ``seconds`` long (default: the clip length rounded up), and frames past
    the end of the audio are dropped. ``encoder``: a :class:`~minipeft.models.whisper.WhisperAudioEncoder`
    (default: :func:`~minipeft.models.whisper.load_whisper_encoder` for that window).
    """
    from ..models.whisper import SAMPLE_RATE, load_whisper_encoder

    if not isinstance(waveforms, (np.ndarray, torch.Tensor)) or waveforms.ndim != 2:
        raise ValueError("waveforms must be a (N, samples) array of 16 kHz audio, e.g. ClipSet.audio.")
    duration = waveforms.shape[1] / SAMPLE_RATE
    if encoder is None:
        encoder = load_whisper_encoder(seconds or max(1, int(np.ceil(duration))))
    if duration > encoder.seconds:
        raise ValueError(f"the audio lasts {duration:.2f} s but the encoder reads {encoder.seconds} s windows; "
                         f"load it with seconds >= {int(np.ceil(duration))}.")
    frames = int(np.ceil(waveforms.shape[1] / (SAMPLE_RATE // 50)))  # 320 samples (20 ms) per frame
    key = f"whisper|{module_fingerprint(encoder)}|seconds={encoder.seconds}|frames={frames}"
    return cached_features("whisper-tiny.en", lambda batch: encoder(batch)[:, :frames], waveforms,
                           encoder_key=key, batch_size=batch_size, refresh=refresh, progress=progress)
