"""Every notebooks/NN_slug.py is paired with an .ipynb whose cells are exactly the .py's (jupytext).

Equivalent to ``jupytext --to ipynb --update notebooks/*.py && git diff --exit-code`` (``jupytext --diff``
always exits 0 and cannot gate), but done on copies so the working tree is never modified.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.py"))


def cells(path: Path):
    notebook = json.loads(path.read_text())
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in notebook["cells"]]


def test_there_are_chapters():
    assert SOURCES, "no notebooks/NN_slug.py found"


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_ipynb_is_in_sync_with_py(source, tmp_path):
    notebook = source.with_suffix(".ipynb")
    assert notebook.exists(), f"{source.name} has no paired {notebook.name}: run `make notebooks NB={source.stem}`"
    shutil.copy(source, tmp_path / source.name)
    shutil.copy(notebook, tmp_path / notebook.name)
    subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--update",
                    str(tmp_path / source.name)], check=True, capture_output=True)
    assert cells(tmp_path / notebook.name) == cells(notebook), (
        f"{notebook.name} is out of sync with {source.name}: run `make notebooks NB={source.stem}` and commit both.")


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_notebook_is_executed_and_recorded(source):
    notebook = json.loads(source.with_suffix(".ipynb").read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), \
        f"{source.stem}.ipynb has unexecuted cells: run `make notebooks NB={source.stem}`"
    assert (NOTEBOOKS / "results" / f"{source.stem}.json").exists(), \
        f"{source.stem} did not record its results (minipeft.core.record) — its last code cell should."


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_committed_record_and_notebook_come_from_the_same_execution(source):
    """``record`` prints the run id it stores; the committed notebook must show the committed record's id."""
    record = json.loads((NOTEBOOKS / "results" / f"{source.stem}.json").read_text())
    assert "run_id" in record, f"{source.stem}'s record has no run_id: re-run `make notebooks NB={source.stem}`"
    notebook = json.loads(source.with_suffix(".ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in notebook["cells"] if c["cell_type"] == "code"
                      for o in c.get("outputs", []))
    assert f"results recorded: run {record['run_id']}" in printed, (
        f"notebooks/results/{source.stem}.json (run {record['run_id']}) was not written by the execution stored in "
        f"{source.stem}.ipynb: re-run `make notebooks NB={source.stem}` and commit both files together.")
