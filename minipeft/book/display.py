"""Small helpers for notebooks: show the library's real source, and time a chapter.

:func:`show_source` is how a chapter shows the code it teaches: the real source, never a copy that could drift. The
library's docstrings carry the papers' equations in Sphinx/reStructuredText markup — :math:`...` roles inline and
``$$...$$`` display blocks in ``r\"\"\"`` strings — which a Markdown code block would print raw. So the source is cut
at its docstrings: the code goes into Python code blocks, each docstring between them is rendered as Markdown with
``$...$`` math (what Jupyter's MathJax and the book's MyST ``dollarmath`` both typeset), in the order of the file.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import time

# Google-style docstring sections, and which of them hold one entry per line ("name: what it is").
_SECTIONS = ("Args", "Arguments", "Parameters", "Attributes", "Raises", "Returns", "Return", "Yields", "Example",
             "Examples", "Note", "Notes", "Shape", "Shapes", "Warning", "See also")
_ENTRY_SECTIONS = ("Args", "Arguments", "Parameters", "Attributes", "Raises")
_SECTION_LINE = re.compile(rf"^({'|'.join(_SECTIONS)})::?\s*$")
_ENTRY_NAME = re.compile(r"^([\w.*]+(?:\s*,\s*[\w.*]+)*)(\s*\([^)]*\))?:\s")
_TABLE_BORDER = re.compile(r"^=+( +=+)+\s*$")


def _inline(text: str) -> str:
    """reST inline markup → Markdown: ``:math:`x` `` → ``$x$``, ````code```` → ```code```, ``:class:`~a.B` `` → ```B```."""
    def math(match: re.Match) -> str:
        return "$" + " ".join(match.group(1).split()) + "$"  # one line: a role may wrap across lines

    def reference(match: re.Match) -> str:
        target = match.group(2).strip()
        if target.startswith("~"):  # Sphinx's "~": show only the last component
            target = target[1:].rsplit(".", 1)[-1]
        return f"`{target.lstrip('.')}`" + ("s" if match.group(3) else "")  # reST's ":class:`X` s" is a plural

    text = re.sub(r":math:`([^`]*)`", math, text)
    text = re.sub(r":(class|func|meth|mod|attr|data|obj|exc):`([^`]*)`( s\b)?", reference, text)
    return re.sub(r"``(.+?)``", lambda m: f"`{m.group(1)}`", text, flags=re.S)


def _display_math(lines: list[str], start: int) -> tuple[str, int]:
    """The ``$$...$$`` block that opens at ``lines[start]``, joined onto one line; returns it and the next index.

    One line, because a multi-line block inside a Markdown quote would carry the quote's ``>`` into the LaTeX.
    """
    parts, index = [], start
    while index < len(lines):
        parts.append(lines[index].strip())
        joined = " ".join(parts)
        index += 1
        if len(joined) > 2 and joined.endswith("$$"):
            break
    body = " ".join(parts)[2:]
    body = body[:-2] if body.endswith("$$") else body  # an unclosed block: keep what there is
    return f"$${body.strip()}$$", index


def _simple_table(lines: list[str], start: int) -> tuple[list[str], int]:
    """The reST *simple table* whose top border is ``lines[start]``, as a Markdown pipe table; and the next index.

    The columns are the runs of ``=`` in the border; the rows above the second border are the header (the first row
    when there is only one group of rows).
    """
    spans = [match.start() for match in re.finditer("=+", lines[start])]

    def cells(line: str) -> list[str]:
        ends = spans[1:] + [len(line)]
        return [line[begin:end].strip().replace("|", "\\|") for begin, end in zip(spans, ends)]

    groups: list[list[list[str]]] = [[]]
    index = start + 1
    while index < len(lines) and lines[index].strip():
        if _TABLE_BORDER.match(lines[index]):
            index += 1
            if index < len(lines) and lines[index].strip():
                groups.append([])  # the border under the header
            continue
        groups[-1].append(cells(lines[index]))
        index += 1
    rows = [row for group in groups for row in group]
    if not rows:
        return [], index
    header_rows = groups[0] if len(groups) > 1 and groups[0] else rows[:1]
    body = rows[len(header_rows):]
    header = [" ".join(part for part in column if part) for column in zip(*header_rows)]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return table + ["| " + " | ".join(row) + " |" for row in body], index


def docstring_to_markdown(doc: str) -> str:
    """Turn one docstring (the library's reST-flavoured, Google-style one) into Markdown that renders its math.

    - ``:math:`...` `` becomes ``$...$``; a ``$$...$$`` block becomes its own paragraph on one line;
    - ````code```` becomes ```code```, ``:class:`` / ``:func:`` / ``:meth:`` references become code;
    - ``Args:`` / ``Returns:`` … become bold headings; the entries of ``Args`` / ``Attributes`` / ``Raises`` a list;
    - a block of ``>>>`` lines (after ``Example::``) becomes a Python code block;
    - a reST simple table (rows between ``===  ===`` borders) becomes a Markdown pipe table.

    The input is the docstring's value (as ``ast.get_docstring`` or ``inspect.getdoc`` give it: one backslash per
    LaTeX command), not its source text.
    """
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    section, base = None, None  # the Google-style section we are in, and the indentation of its entries
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        depth = len(line) - len(line.lstrip())
        header = _SECTION_LINE.match(stripped)
        if header and depth == 0:
            section, base = header.group(1), None
            out += ["", f"**{section}**", ""]
        elif not stripped:
            if index + 1 < len(lines) and not lines[index + 1].startswith(" "):
                section = None  # a blank line, then unindented text: the section is over
            out.append("")
        elif stripped.startswith(">>>"):  # a doctest: code, verbatim, up to the next blank line
            block = []
            while index < len(lines) and lines[index].strip():
                block.append(lines[index])
                index += 1
            out += ["", "```python", *textwrap.dedent("\n".join(block)).splitlines(), "```", ""]
            continue
        elif stripped.startswith("$$"):
            math, index = _display_math(lines, index)
            out += ["", math, ""]
            continue
        elif _TABLE_BORDER.match(line):
            table, index = _simple_table(lines, index)
            out += ["", *table, ""]
            continue
        elif section is not None and depth > 0:
            # Inside a section: dedented (4+ spaces would make a Markdown code block). In an entry section each line
            # at the entries' indentation opens a list item ("- `name`: ..."), a deeper line continues it.
            base = depth if base is None else base
            if section in _ENTRY_SECTIONS and depth <= base:
                name = _ENTRY_NAME.match(stripped)
                if name:
                    stripped = f"`{name.group(1)}`{name.group(2) or ''}: " + stripped[name.end():]
                out.append(f"- {stripped}")
            elif out and out[-1]:
                out[-1] += " " + stripped  # continue the entry / paragraph on one line
            else:
                out.append(stripped)
        else:
            # Prose: keep the line (Markdown joins lines into paragraphs); indentation of 4+ would make code.
            out.append(line.rstrip() if depth < 4 else "  " + stripped)
        index += 1
    # Inline markup last, on the whole text outside code blocks: a role may wrap across a line break.
    chunks = re.split(r"(```python\n.*?\n```)", "\n".join(out), flags=re.S)
    text = "".join(chunk if chunk.startswith("```") else _inline(chunk) for chunk in chunks)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _docstring_spans(source: str) -> list[tuple[int, int, str]]:
    """``(first line, last line, value)`` (0-based, inclusive) of every docstring in ``source`` that has its lines to
    itself (not ``def f(): "..."`` on one line), in order."""
    dedented = textwrap.dedent(source)
    lines = dedented.splitlines()
    spans = []
    for node in ast.walk(ast.parse(dedented)):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is None:
                continue
            expression = node.body[0]
            first, last = expression.lineno - 1, expression.end_lineno - 1
            # ast's column offsets count UTF-8 bytes.
            alone = (not lines[first].encode()[:expression.col_offset].strip()
                     and not lines[last].encode()[expression.end_col_offset:].strip())
            if alone:
                spans.append((first, last, docstring))
    return sorted(spans)


def _fence(code: str) -> str:
    """``code`` in a Python code block whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}python\n{code}\n{fence}"


def source_to_markdown(source: str, location: str = "", render_docstrings: bool = True) -> str:
    """The Markdown that :func:`show_source` displays for ``source`` (a file path in ``location`` heads it).

    With ``render_docstrings``, the code is split at its docstrings: code in ```` ```python ```` blocks, each
    docstring rendered by :func:`docstring_to_markdown` as a quote between them. Without (or if the source does not
    parse on its own), one code block with the source verbatim.
    """
    head = f"*`{location}`*\n\n" if location else ""
    source = source.rstrip("\n") + "\n"
    try:
        spans = _docstring_spans(source) if render_docstrings else []
    except SyntaxError:  # e.g. a lambda's source line: show it as it is
        spans = []
    if not spans:
        return head + _fence(source.rstrip("\n"))
    lines = source.splitlines()
    pieces, cursor = [], 0

    def code(chunk: list[str]) -> None:
        text = "\n".join(chunk).strip("\n")
        if text.strip():
            pieces.append(_fence(text))

    for first, last, docstring in spans:
        code(lines[cursor:first])
        rendered = docstring_to_markdown(docstring)
        pieces.append("\n".join(f"> {line}".rstrip() for line in rendered.splitlines()))
        cursor = last + 1
    code(lines[cursor:])
    return head + "\n\n".join(pieces)


def show_source(obj, render_docstrings: bool = True) -> "object":
    """Display the real source of a library function/class in a notebook (not a copy that could drift).

    Returns an IPython ``Markdown`` object: the code as highlighted Python, its docstrings rendered between the code
    blocks with their math typeset (see :func:`source_to_markdown`; ``render_docstrings=False`` shows the source as
    one verbatim code block). Outside IPython, the source text.
    """
    source = inspect.getsource(obj)
    location = f"{inspect.getsourcefile(obj).split('minipeft/', 1)[-1]}"
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - only outside notebooks
        return source
    return Markdown(source_to_markdown(source, f"minipeft/{location}", render_docstrings))


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        return False
