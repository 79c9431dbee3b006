"""The book's own tools, kept out of the library's mechanics (``minipeft.core``): what a chapter records
(:mod:`~minipeft.book.results`), how chapters are executed (:mod:`~minipeft.book.notebooks`), how a chapter shows the
library's real source and times its cells (:mod:`~minipeft.book.display`), and where the book's files are
(:mod:`~minipeft.book.paths`)."""

from .display import Stopwatch, show_source
from .paths import book_root

__all__ = ["Stopwatch", "book_root", "show_source"]
