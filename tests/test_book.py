"""The site builds offline with warnings as errors, from the committed notebook outputs (no re-execution)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_builds_offline_without_warnings(tmp_path):
    builder = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(builder), "build", str(ROOT), "--config", str(ROOT / "book" / "_config.yml"),
         "--toc", str(ROOT / "book" / "_toc.yml"), "--path-output", str(tmp_path), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    assert (html / "book" / "intro.html").exists() and (html / "index.html").exists()
    for source in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        page = html / "notebooks" / f"{source.stem}.html"
        assert page.exists(), f"{page} was not built"


def test_readme_chapter_table_is_generated_from_results():
    from minipeft.core.results import README, chapter_table, readme_with_table

    text = README.read_text()
    assert readme_with_table(text, chapter_table()) == text, \
        "README's chapter table is stale: run `python -m minipeft.core.results --write-readme`"
