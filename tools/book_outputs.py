"""How the site shows a notebook's stored outputs: progress bars as the one line a terminal shows.

A Sphinx extension (listed in ``book/_config.yml`` under ``sphinx: local_extensions``) and the ``.ipynb`` reader that
myst-nb uses for the book (``nb_custom_formats``).

Why: ``tqdm`` redraws its bar by writing ``"\\r"`` followed by the new state, and each redraw is stored as its own
stream output in the notebook. Jupyter applies the carriage returns, so the notebook shows one line per bar; myst-nb
does not — its ``nb_merge_streams`` joins the pieces with newlines — and the site showed 20–30 stacked copies of every
bar. This reader joins a cell's stream outputs of the same name (stdout, stderr) in order, exactly as written, then
applies each ``"\\r"`` the way a terminal does: on every line, only what was written after the last carriage return
is left. Nothing else in the notebook changes, and the committed ``.ipynb`` files are not touched.
"""

from __future__ import annotations

import nbformat

NOTEBOOK_VERSION = 4


def apply_carriage_returns(text: str) -> str:
    """Return ``text`` as a terminal would leave it: each line keeps what follows its last ``"\\r"``.

    ``"a\\rb\\n"`` → ``"b\\n"``; a ``"\\r\\n"`` line ending is an ordinary newline, not an erased line.
    """
    text = text.replace("\r\n", "\n")  # Windows line endings are line endings, not redraws
    lines = []
    for line in text.split("\n"):
        # A bar that ends with "\r" (tqdm does this before it closes) keeps the text before that final "\r".
        pieces = [piece for piece in line.split("\r") if piece] or [""]
        lines.append(pieces[-1])
    return "\n".join(lines)


def merge_streams(outputs: list) -> list:
    """Join a cell's stream outputs of the same name into the first of them, then apply carriage returns.

    Same order and placement as myst-nb's ``nb_merge_streams`` (the merged stream sits where its first piece was),
    but the pieces are concatenated as written, so a redraw lands on the line it redraws.
    """
    merged = []
    first_of = {}  # stream name -> the output that collects every piece of that stream
    for output in outputs:
        if output.get("output_type") != "stream":
            merged.append(output)
            continue
        name = output.get("name", "stdout")
        if name in first_of:
            first_of[name]["text"] += output["text"]
        else:
            output["text"] = str(output["text"])
            first_of[name] = output
            merged.append(output)
    for output in first_of.values():
        output["text"] = apply_carriage_returns(output["text"])
    return merged


def read_ipynb(text: str) -> nbformat.NotebookNode:
    """myst-nb's ``.ipynb`` reader for the book: the standard reader, then :func:`merge_streams` on every cell."""
    notebook = nbformat.reads(text, as_version=NOTEBOOK_VERSION)
    for cell in notebook.cells:
        if cell.cell_type == "code" and cell.get("outputs"):
            cell.outputs = merge_streams(cell.outputs)
    return notebook


def setup(app):
    """Nothing to register: importing this module is what ``nb_custom_formats`` needs (the extension entry only puts
    ``tools/`` on the build's import path)."""
    return {"parallel_read_safe": True, "parallel_write_safe": True}
