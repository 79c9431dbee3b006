"""Where the book's files are: found, not assumed.

The book tools (results records, the notebook runner) work on a checkout of the repository — ``notebooks/``,
``README.md``, ``book/``. They find it in this order:

1. the environment variable ``MINIPEFT_BOOK_ROOT``;
2. the current directory or one of its parents that holds ``book/_toc.yml`` and ``notebooks/`` (a notebook runs with
   its own folder as the current directory, so this finds the checkout it belongs to);
3. the folder above the installed ``minipeft`` package, if it is such a checkout (an editable install).

``None`` when there is none (``pip install minipeft`` outside a checkout): the library works; only the book tools,
which need the book's files, then ask for ``MINIPEFT_BOOK_ROOT``.
"""

from __future__ import annotations

import os
from pathlib import Path


def _is_checkout(folder: Path) -> bool:
    return (folder / "book" / "_toc.yml").is_file() and (folder / "notebooks").is_dir()


def book_root(required: bool = True) -> Path | None:
    """The repository checkout the book tools work on (see the module docstring)."""
    configured = os.environ.get("MINIPEFT_BOOK_ROOT")
    if configured:
        folder = Path(configured).expanduser().resolve()
        if not _is_checkout(folder):
            raise FileNotFoundError(f"MINIPEFT_BOOK_ROOT={configured} has no book/_toc.yml and notebooks/; point it at "
                                    "a checkout of the book's repository.")
        return folder
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_checkout(folder):
            return folder
    installed = Path(__file__).resolve().parents[2]
    if _is_checkout(installed):
        return installed
    if required:
        raise FileNotFoundError("cannot find the book's repository (a folder with book/_toc.yml and notebooks/): run "
                                "from inside a checkout or set MINIPEFT_BOOK_ROOT.")
    return None
