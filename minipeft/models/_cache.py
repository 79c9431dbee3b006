"""Where converted model weights and cached features live: ``$MINIPEFT_CACHE`` or ``~/.cache/minipeft``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """The cache folder (created on demand). Override it with the ``MINIPEFT_CACHE`` environment variable."""
    path = Path(os.environ.get("MINIPEFT_CACHE") or Path.home() / ".cache" / "minipeft")
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_directory_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create the folder ``target`` by calling ``build(temporary_folder)`` and renaming the result.

    Two processes may race (e.g. two test workers); whoever renames first wins and the other's copy is deleted,
    so a reader never sees a half-written folder.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent))
    try:
        build(temporary)
        try:
            os.rename(temporary, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return target
