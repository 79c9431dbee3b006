"""Small helpers for notebooks: show the library's real source, and time a chapter."""

from __future__ import annotations

import inspect
import time


def show_source(obj) -> "object":
    """Display the real source of a library function/class in a notebook (not a copy that could drift).

    Returns an IPython ``Markdown`` object (so it renders as highlighted code); outside IPython, the source text.
    """
    source = inspect.getsource(obj)
    location = f"{inspect.getsourcefile(obj).split('minipeft/', 1)[-1]}"
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - only outside notebooks
        return source
    return Markdown(f"*`minipeft/{location}`*\n\n```python\n{source}```")


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        return False
