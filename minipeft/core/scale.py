"""The scale knob and the device choice (DESIGN.md §4).

Every chapter starts with ``SCALE = minipeft.scale()``. Two values exist:

* ``"ci"``   — runs on 2 CPU cores in at most 3 minutes and still teaches (curves bend, comparisons hold);
* ``"full"`` — the real-size run for a GPU: more data, more steps, larger ranks and sweeps.

The environment variable ``MINIPEFT_SCALE`` chooses; without it the default is ``"full"`` when a CUDA GPU is
present and ``"ci"`` otherwise.
"""

from __future__ import annotations

import os

import torch

SCALES = ("ci", "full")


def scale() -> str:
    """Return ``"ci"`` or ``"full"`` from ``MINIPEFT_SCALE`` (default: ``"full"`` with CUDA, else ``"ci"``)."""
    value = os.environ.get("MINIPEFT_SCALE", "").strip().lower()
    if not value:
        return "full" if torch.cuda.is_available() else "ci"
    if value not in SCALES:
        raise ValueError(
            f"MINIPEFT_SCALE={os.environ['MINIPEFT_SCALE']!r} is not a scale; "
            f"set it to one of {', '.join(SCALES)} (or unset it to choose automatically)."
        )
    return value


def pick(ci, full, *, scale_name: str | None = None):
    """Return ``ci`` or ``full`` according to the current scale (a tiny helper for chapter configs)."""
    return full if (scale_name or scale()) == "full" else ci


def default_device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def hardware_summary() -> str:
    """One line naming the hardware a measurement ran on (used in the results records)."""
    device = default_device()
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"{device.type}: {torch.get_num_threads()} torch thread(s), {os.cpu_count()} logical core(s)"


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86: AVX512-BF16 or AMX; Arm: the BF16 extension)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:  # not Linux: be conservative
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16", " bf16"))


def amp_dtype(device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype worth using on ``device``, or ``None`` where mixed precision would not pay.

    * CUDA: bf16 where the GPU supports it (Ampere and newer), else ``None`` (fp16 needs a loss scaler, which the
      loop does not do);
    * CPU: bf16 when the processor has native bf16 instructions (measured on this project's CPU with one core: a
      bf16 matmul runs about 4× the fp32 rate, and a SmolLM2 LoRA step at 4×128 takes 1.44 s instead of 3.15 s);
      elsewhere bf16 on a CPU is emulated and slower than fp32, so ``None``;
    * anything else (MPS): ``None``.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return None
