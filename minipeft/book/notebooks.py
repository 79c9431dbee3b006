"""``make notebooks``: sync ``notebooks/*.py`` → ``.ipynb`` with jupytext and execute them, writing outputs.

Usage: ``python -m minipeft.book.notebooks [NAME ...]`` (default: every chapter). The scale is whatever
``MINIPEFT_SCALE`` says (``ci`` by default on a CPU), so the committed outputs are the ``ci`` run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .paths import book_root


def execute(source: Path, timeout_s: int = 1800) -> float:
    """Update ``source``'s paired notebook from the .py and execute it in place; return the seconds it took."""
    notebook = source.with_suffix(".ipynb")
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--update", str(source)], check=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "jupyter", "execute", "--inplace", f"--timeout={timeout_s}",
         "--kernel_name=python3", str(notebook)],
        check=True, cwd=source.parent,
    )
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    NOTEBOOKS = book_root() / "notebooks"
    wanted = argv or [p.stem for p in sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.py"))]
    for name in wanted:
        source = NOTEBOOKS / (Path(name).stem + ".py")
        if not source.exists():
            choices = ", ".join(p.stem for p in sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.py")))
            print(f"no notebook source {source}; choose from: {choices}", file=sys.stderr)
            return 2
        seconds = execute(source)
        print(f"{source.stem}: executed in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
