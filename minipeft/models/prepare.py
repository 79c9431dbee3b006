"""``python -m minipeft.models.prepare``: make every offline backbone ready (convert SmolLM2's GGUF once)."""

from __future__ import annotations

import time

from .smollm2 import smollm2_local_path


def main() -> int:
    started = time.perf_counter()
    path = smollm2_local_path()
    print(f"SmolLM2-135M-Instruct ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
