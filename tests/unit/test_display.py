"""show_source: the real code in code blocks, its docstrings rendered as Markdown whose math typesets."""

import inspect
import textwrap

import pytest

from minipeft.book.display import docstring_to_markdown, show_source, source_to_markdown


def _fences(markdown: str) -> list[str]:
    """The bodies of the ```python blocks of ``markdown`` that are not inside a quote."""
    bodies, inside, current = [], False, []
    for line in markdown.splitlines():
        if line == "```python" and not inside:
            inside, current = True, []
        elif line == "```" and inside:
            inside = False
            bodies.append("\n".join(current))
        elif inside:
            current.append(line)
    return bodies


def test_math_role_becomes_dollar_math_with_single_backslashes():
    markdown = docstring_to_markdown(r"Scale :math:`\alpha / \sqrt{r}` and :math:`W_0`.")
    assert markdown == r"Scale $\alpha / \sqrt{r}$ and $W_0$."


def test_math_role_wrapped_across_lines_is_joined():
    markdown = docstring_to_markdown("The update :math:`\\frac{\\alpha}{r}\n    B A` is added.")
    assert "$\\frac{\\alpha}{r} B A$" in markdown
    assert ":math:" not in markdown


def test_code_and_references_become_code_spans():
    markdown = docstring_to_markdown("Wraps ``nn.Linear``; see :class:`~minipeft.core.Handle` and :func:`apply`.")
    assert markdown == "Wraps `nn.Linear`; see `Handle` and `apply`."
    assert docstring_to_markdown("two :class:`Stream` s and :func:`f`.") == "two `Stream`s and `f`."


def test_display_math_becomes_one_line_paragraph():
    doc = "Text before:\n\n$$h = W_0 x\n+ B A x,$$\n\nText after."
    lines = docstring_to_markdown(doc).splitlines()
    index = lines.index("$$h = W_0 x + B A x,$$")
    assert lines[index - 1] == "" and lines[index + 1] == ""
    assert lines[0] == "Text before:" and lines[-1] == "Text after."


def test_args_section_becomes_a_list_and_loses_its_indentation():
    doc = """Summary.

    Args:
        r: the rank of
            the update.
        alpha, dropout: see the config.

    Returns:
        the handle.
    """
    markdown = docstring_to_markdown(doc)
    assert "**Args**" in markdown and "**Returns**" in markdown
    assert "- `r`: the rank of the update." in markdown
    assert "- `alpha, dropout`: see the config." in markdown
    # Four leading spaces would make an indented Markdown code block.
    assert not any(line.startswith("    ") for line in markdown.splitlines())


def test_doctest_becomes_a_python_block():
    doc = "Example::\n\n    >>> 1 + 1\n    2\n"
    assert _fences(docstring_to_markdown(doc)) == [">>> 1 + 1\n2"]


SOURCE = textwrap.dedent('''\
    class Scale(nn.Module):
        r"""Multiply by :math:`\\lambda`."""

        def __init__(self):
            super().__init__()

        def forward(self, x):
            r"""Return :math:`\\lambda x`.

            Args:
                x: the input.
            """
            return self.weight * x  # lambda x
    ''')


def test_source_is_cut_at_its_docstrings_in_order():
    markdown = source_to_markdown(SOURCE, "minipeft/x.py")
    assert markdown.startswith("*`minipeft/x.py`*")
    code = "\n".join(_fences(markdown))
    # Every code line is shown, no docstring line is shown as code.
    for line in SOURCE.splitlines():
        if line.strip() and '"""' not in line and "Args" not in line and "x: the input" not in line:
            assert line in code
    assert '"""' not in code and ":math:" not in markdown
    quoted = [line for line in markdown.splitlines() if line.startswith(">")]
    assert quoted[0] == "> Multiply by $\\lambda$."
    assert "> Return $\\lambda x$." in quoted
    # The order of the file: class line, class docstring, __init__ ..., forward's docstring, forward's body.
    assert markdown.index("class Scale") < markdown.index("Multiply by") < markdown.index("def forward") \
        < markdown.index("Return $") < markdown.index("return self.weight")


def test_without_rendering_the_source_is_one_verbatim_block():
    assert _fences(source_to_markdown(SOURCE, render_docstrings=False)) == [SOURCE.rstrip("\n")]


def test_unparseable_source_falls_back_to_verbatim():
    source = "    lambda x: x)\n"
    assert _fences(source_to_markdown(source)) == [source.rstrip("\n")]


def test_library_source_parses_into_math_tokens():
    """A real method: MyST's dollarmath parser (what the book uses) finds math, and no raw role survives."""
    markdown_it = pytest.importorskip("markdown_it")
    dollarmath = pytest.importorskip("mdit_py_plugins.dollarmath")
    from minipeft.peft import lora

    source = inspect.getsource(lora.LoraLinear)
    markdown = source_to_markdown(source)
    parser = markdown_it.MarkdownIt("commonmark").use(dollarmath.dollarmath_plugin)
    tokens, stack = [], list(parser.parse(markdown))
    while stack:
        token = stack.pop()
        tokens.append(token)
        stack.extend(token.children or [])
    roles = source.count(":math:`")
    assert roles > 0
    assert sum(token.type == "math_inline" for token in tokens) >= roles
    assert not any(":math:" in token.content or "\\\\" in token.content for token in tokens if token.type == "text")
    assert "def forward(self, x: torch.Tensor) -> torch.Tensor:" in "\n".join(_fences(markdown))


def test_show_source_returns_the_markdown_in_a_notebook():
    pytest.importorskip("IPython")
    from minipeft.peft import lora

    shown = show_source(lora.LoraLinear)
    assert shown.data == source_to_markdown(inspect.getsource(lora.LoraLinear), "minipeft/peft/lora.py")


def test_simple_table_becomes_a_pipe_table():
    doc = """Variants:

    =====  ==================  =====
    name   F                   λ
    =====  ==================  =====
    one    a layer, adapter    0.1
    two    :math:`A(x)`        1
    =====  ==================  =====

    After.
    """
    lines = docstring_to_markdown(doc).splitlines()
    start = lines.index("| name | F | λ |")
    assert lines[start + 1] == "|---|---|---|"
    assert lines[start + 2] == "| one | a layer, adapter | 0.1 |"
    assert lines[start + 3] == "| two | $A(x)$ | 1 |"
    assert lines[start + 4] == "" and lines[-1] == "After."


def test_docstring_sharing_a_line_with_code_stays_in_the_code():
    source = 'def f(): "Return :math:`x` — one line."; return 1\n'
    assert _fences(source_to_markdown(source)) == [source.rstrip("\n")]


def test_backticks_in_the_code_get_a_longer_fence():
    source = 'def f():\n    """Doc."""\n    return "```"\n'
    markdown = source_to_markdown(source)
    assert "````python\n    return \"```\"\n````" in markdown
