"""The frozen-feature cache: computed once, identical on a hit, invalidated by any change, loud on a bad file."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from minipeft.datasets import features
from minipeft.datasets.features import FeatureCacheError, cached_features, fingerprint, module_fingerprint


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path))
    return tmp_path


class CountingEncoder:
    """A frozen linear map that counts how many batches (and rows) it was asked to encode."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.layer = nn.Linear(6, 4)
        self.batches = self.rows = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        self.rows += len(batch)
        return self.layer(batch.float())

    @property
    def key(self) -> str:
        return module_fingerprint(self.layer)


def _files(folder):
    return sorted((folder / "features").glob("*"))


def test_a_hit_returns_identical_tensors_without_recomputing(private_cache):
    data = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    encoder = CountingEncoder()
    first = cached_features("toy", encoder, data, encoder_key=encoder.key, batch_size=4)
    assert (encoder.batches, encoder.rows) == (3, 10)  # ceil(10 / 4) batches, every row once
    second = cached_features("toy", encoder, data, encoder_key=encoder.key, batch_size=4)
    assert (encoder.batches, encoder.rows) == (3, 10)  # nothing recomputed
    assert torch.equal(first, second) and first.dtype == torch.float32
    with torch.no_grad():
        direct = encoder.layer(torch.from_numpy(data)).half().float()  # stored as float16, returned as float32
    assert torch.equal(first, direct)
    assert len(_files(private_cache)) == 1 and _files(private_cache)[0].suffix == ".safetensors"  # no temp files


def test_changed_data_encoder_or_dtype_recompute(private_cache):
    data = torch.randn(8, 6)
    encoder = CountingEncoder()
    base = cached_features("toy", encoder, data, encoder_key=encoder.key)
    changed = data.clone()
    changed[3, 2] += 1e-3  # one value
    cached_features("toy", encoder, changed, encoder_key=encoder.key)
    assert encoder.batches == 2
    other = CountingEncoder(seed=1)  # different weights → different fingerprint
    assert other.key != encoder.key
    result = cached_features("toy", other, data, encoder_key=other.key)
    assert other.batches == 1 and not torch.equal(result, base)
    cached_features("toy", encoder, data, encoder_key=encoder.key, store_dtype=torch.float32)
    assert encoder.batches == 3
    assert len(_files(private_cache)) == 4
    cached_features("toy", encoder, data, encoder_key=encoder.key)  # the original is still a hit
    assert encoder.batches == 3


def test_fingerprints_see_dtype_shape_and_values():
    x = torch.arange(6.0)
    assert fingerprint(x) == fingerprint(x.clone())
    assert fingerprint(x) != fingerprint(x.double()) != fingerprint(x.reshape(2, 3))
    assert fingerprint(x.numpy()) != fingerprint(x.numpy()[::-1].copy())
    layer = nn.Linear(3, 2)
    key = module_fingerprint(layer)
    with torch.no_grad():
        layer.bias[0] += 1e-6
    assert module_fingerprint(layer) != key


def test_a_corrupt_file_is_named_and_refresh_recomputes(private_cache):
    data = torch.randn(5, 6)
    encoder = CountingEncoder()
    good = cached_features("toy", encoder, data, encoder_key=encoder.key)
    (path,) = _files(private_cache)
    path.write_bytes(path.read_bytes()[:40])  # cut short, as by a full disk
    with pytest.raises(FeatureCacheError, match="refresh=True") as error:
        cached_features("toy", encoder, data, encoder_key=encoder.key)
    assert str(path) in str(error.value)
    again = cached_features("toy", encoder, data, encoder_key=encoder.key, refresh=True)
    assert torch.equal(again, good) and encoder.batches == 2
    assert torch.equal(cached_features("toy", encoder, data, encoder_key=encoder.key), good)


def test_a_file_under_the_wrong_key_is_refused(private_cache):
    data, encoder = torch.randn(5, 6), CountingEncoder()
    cached_features("toy", encoder, data, encoder_key=encoder.key)
    (path,) = _files(private_cache)
    other = torch.randn(5, 6)
    other_path = features.feature_path("toy", fingerprint({
        "name": "toy", "encoder": encoder.key, "data": fingerprint(other), "dtype": str(torch.float16),
        "version": features.FORMAT_VERSION}))
    other_path.write_bytes(path.read_bytes())  # a file copied over another key's name
    with pytest.raises(FeatureCacheError, match="different data"):
        cached_features("toy", encoder, other, encoder_key=encoder.key)


def test_a_failing_encoder_leaves_no_file(private_cache):
    def broken(batch):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cached_features("toy", broken, torch.randn(4, 6), encoder_key="broken")
    assert _files(private_cache) == []


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        cached_features("toy", CountingEncoder(), [[1.0] * 6], encoder_key="k")
    with pytest.raises(ValueError, match="batch_size"):
        cached_features("toy", CountingEncoder(), torch.randn(2, 6), encoder_key="k", batch_size=0)


class _Output(NamedTuple):
    tokens: torch.Tensor
    pooled: torch.Tensor


class TinyGridEncoder(nn.Module):
    """Stands in for EfficientNet-Lite0: (B, 3, 224, 224) → a 7×7 grid of 5-d tokens."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=32, stride=32)  # 224 / 32 = 7

    def forward(self, images):
        grid = self.conv(images)  # (B, 5, 7, 7)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, 49, 5)
        return _Output(tokens, tokens.mean(1))


def test_image_features_keep_leading_dims_and_pool_the_grid():
    from minipeft.datasets.world import make_clips, make_scenes

    encoder = TinyGridEncoder().eval()
    scenes = make_scenes(6, seed=0)
    grid = features.image_features(scenes.images, encoder=encoder)
    assert grid.shape == (6, 49, 5)
    pooled = features.image_features(scenes.images, encoder=encoder, grid=1)
    assert pooled.shape == (6, 1, 5)
    assert torch.allclose(pooled[:, 0], grid.mean(1), atol=2e-3)  # float16 storage
    clips = make_clips(2, seed=0, speech=False)
    frames = features.image_features(clips.frames, encoder=encoder, grid=2)
    assert frames.shape == (2, 8, 4, 5)
    alone = features.image_features(clips.frames[1, 3:4], encoder=encoder, grid=2)  # one frame by itself
    assert torch.allclose(frames[1, 3], alone[0], atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        features.image_features(scenes.images, encoder=encoder, grid=8)


class ImageCountingEncoder(TinyGridEncoder):
    """The tiny encoder, counting the images it is shown."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, images):
        self.seen += len(images)
        return super().forward(images)


def test_repeated_frames_are_encoded_once_and_every_frame_gets_its_own_features():
    from minipeft.datasets.world import make_clips

    clips = make_clips(3, seed=4, speech=False)
    flat = clips.frames.reshape(-1, *clips.frames.shape[2:])  # (24, S, S, 3)
    distinct = len(np.unique(flat.reshape(len(flat), -1), axis=0))
    assert distinct < len(flat)  # frames repeat between events, so there is something to save
    encoder = ImageCountingEncoder().eval()
    frames = features.image_features(clips.frames, encoder=encoder, grid=1, refresh=True)  # (3, 8, 1, 5)
    assert encoder.seen == distinct
    for clip in range(3):
        for t in (0, 5, 7):
            alone = features.image_features(clips.frames[clip, t:t + 1], encoder=encoder, grid=1)
            assert torch.allclose(frames[clip, t], alone[0], atol=1e-6), (clip, t)


def test_a_smaller_resize_gives_a_smaller_grid_and_a_grid_too_large_is_refused():
    from minipeft.datasets.world import make_scenes

    scenes = make_scenes(2, seed=0)
    encoder = TinyGridEncoder().eval()
    grid = features.image_features(scenes.images, encoder=encoder, size=128, grid=4)  # 128 / 32 = 4 per side
    assert grid.shape == (2, 16, 5)
    with pytest.raises(ValueError, match="4×4 grid"):
        features.image_features(scenes.images, encoder=encoder, size=128, grid=5)
    with pytest.raises(ValueError, match="size"):
        features.image_features(scenes.images, encoder=encoder, size=8)


@pytest.mark.slow
def test_real_efficientnet_features_match_the_encoder():
    from minipeft.datasets.world import make_scenes
    from minipeft.models import load_efficientnet_lite0, preprocess_images

    encoder, _ = load_efficientnet_lite0()
    scenes = make_scenes(3, seed=0)
    cached = features.image_features(scenes.images, encoder=encoder)
    with torch.no_grad():
        direct = encoder(preprocess_images(scenes.tensors())).tokens  # (3, 49, 1280)
    assert cached.shape == (3, 49, 1280)
    assert torch.allclose(cached, direct, rtol=2e-3, atol=2e-3)  # float16 storage
