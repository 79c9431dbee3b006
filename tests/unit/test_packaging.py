"""The install story stays consistent: pyproject, environment.yml, constraints, Makefile and .ci/run."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def environment_pip_names() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    names = set()
    for line in lines[start + 1:]:
        item = line.strip()
        if not item.startswith("- "):
            continue
        item = item[2:]
        if item.startswith("-e") or item.startswith("-"):
            continue
        names.add(_name(item))
    return names


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = pyproject()
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("lab", "book", "test"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    assert environment_pip_names() == wanted
    assert "python=3.11" in (ROOT / "environment.yml").read_text()
    assert "-e .[lab,book,test]" in (ROOT / "environment.yml").read_text()


def test_every_dependency_is_pinned_in_the_constraints():
    pins = {_name(line) for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    project = pyproject()
    needed = {_name(r) for r in project["dependencies"]}
    needed |= {_name(r) for extra in ("book", "test") for r in project["optional-dependencies"][extra]}
    assert needed <= pins, f"not pinned: {sorted(needed - pins)}"


def test_jupyterlab_is_only_in_the_authoring_extra():
    project = pyproject()
    assert not any(_name(r) == "jupyterlab" for r in project["dependencies"])
    assert [_name(r) for r in project["optional-dependencies"]["lab"]] == ["jupyterlab"]


def test_makefile_installs_torch_first_and_ci_runs_make_test():
    makefile = (ROOT / "Makefile").read_text()
    torch_line = makefile.index("pip install --quiet torch==2.13.0")
    assert torch_line < makefile.index("-e '.[book,test]'")
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
