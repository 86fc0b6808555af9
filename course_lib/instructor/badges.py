"""Check or insert each notebook's "Open in Colab" badge and Colab setup lines, generated from colab.REPO_SLUG.

    python -m course_lib.instructor.badges solutions/*.ipynb           # report notebooks whose badge or setup is missing/stale
    python -m course_lib.instructor.badges --write solutions/*.ipynb   # insert or refresh them (then run `course release`)

The badge goes first in the first Markdown cell and links to the *student* notebook (notebooks/NAME.ipynb), so
the copy that `course release` makes carries a link to itself. The setup lines (`colab.bootstrap_code`) go first
in the setup cell, the code cell that calls `course_lib.start(`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

from course_lib.core.colab import BOOTSTRAP_MARK, badge_markdown, bootstrap_code

BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\n*")
SETUP_CALL = "course_lib.start("


def student_path(notebook: str | Path) -> str:
    """The repository path of the student notebook that a solution (or student) notebook is released as."""
    return f"notebooks/{Path(notebook).name}"


def _first_markdown(nb) -> nbformat.NotebookNode | None:
    return next((c for c in nb.cells if c.cell_type == "markdown"), None)


def _setup_cell(nb) -> nbformat.NotebookNode | None:
    return next((c for c in nb.cells if c.cell_type == "code" and SETUP_CALL in c.source), None)


def _strip_bootstrap(source: str) -> str:
    """The setup cell's source without any generated setup lines (current or stale)."""
    lines = source.split("\n")
    if not lines or not lines[0].startswith(BOOTSTRAP_MARK):
        return source
    end = next((i for i, line in enumerate(lines) if line.rstrip().endswith("check=True)")), None)
    if end is None:
        raise ValueError("the setup cell starts with the Colab setup lines but they do not end in 'check=True)': "
                         "fix the cell by hand")
    return "\n".join(lines[end + 1:]).lstrip("\n")


def problems(path: str | Path) -> list[str]:
    """What is missing or stale in one notebook: its badge, its setup lines; empty when both are current."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    found = []
    first = _first_markdown(nb)
    badge = badge_markdown(student_path(path))
    if first is None:
        found.append(f"{path.name}: has no Markdown cell for the Open in Colab badge")
    elif not first.source.startswith(badge):
        stale = BADGE.search(first.source)
        found.append(f"{path.name}: the first Markdown cell " + ("has a stale badge" if stale else "has no badge")
                     + f" (expected {badge})")
    setup = _setup_cell(nb)
    if setup is None:
        found.append(f"{path.name}: has no setup cell (a code cell calling {SETUP_CALL}...)")
    elif not setup.source.startswith(bootstrap_code() + "\n"):
        found.append(f"{path.name}: the setup cell does not start with the current Colab setup lines")
    return found


def apply(path: str | Path) -> bool:
    """Insert or refresh the badge and the setup lines in one notebook; True when the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    first = _first_markdown(nb)
    if first is None:
        raise ValueError(f"{path}: no Markdown cell to put the Open in Colab badge in")
    first.source = badge_markdown(student_path(path)) + "\n\n" + BADGE.sub("", first.source, count=1).lstrip("\n")
    setup = _setup_cell(nb)
    if setup is None:
        raise ValueError(f"{path}: no setup cell (a code cell calling {SETUP_CALL}...) for the Colab setup lines")
    setup.source = bootstrap_code() + "\n\n" + _strip_bootstrap(setup.source)
    if nbformat.writes(nb) == before:
        return False
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    """Check (default) or --write the badges and setup lines of the given notebooks."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.instructor.badges", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--write", action="store_true", help="insert or refresh them instead of reporting")
    args = parser.parse_args(argv)
    if args.write:
        for path in args.notebooks:
            print(f"{'updated' if apply(path) else 'already current'}: {path}")
        return 0
    found = [problem for path in args.notebooks for problem in problems(path)]
    print("\n".join(found) if found else f"{len(args.notebooks)} notebook(s) carry the current badge and setup lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
