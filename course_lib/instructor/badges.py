"""Check or insert each notebook's "Open in Colab" badge and Colab setup lines, generated from a repository address.

    python -m course_lib.instructor.badges solutions/*.ipynb           # report notebooks whose badge or setup is missing/stale
    python -m course_lib.instructor.badges --write solutions/*.ipynb   # insert or refresh them (then run `course release`)

The badge goes first in the first Markdown cell and links to the *student* notebook (notebooks/NAME.ipynb), so
the copy that `course release` makes carries a link to itself. The setup lines (`colab.bootstrap_code`) go first
in the setup cell, the code cell that calls `course_lib.start(`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import nbformat

from course_lib.core.colab import (
    BOOTSTRAP_MARK,
    PLACEHOLDER_SLUG,
    badge_markdown,
    bootstrap_code,
    check_slug,
    slug_from_remote,
    slug_of_colab_url,
)

BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)\n*")
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


def slug_of(path: str | Path) -> str | None:
    """The OWNER/NAME that a notebook's Colab badge points to, or None without a badge."""
    first = _first_markdown(nbformat.read(Path(path), as_version=4))
    badge = BADGE.search(first.source) if first is not None else None
    return slug_of_colab_url(badge[1]) if badge else None


def origin_slug(folder: Path) -> str | None:
    """OWNER/NAME of the git remote `origin` of the repository holding `folder`, when that remote is on GitHub."""
    try:
        found = subprocess.run(["git", "-C", str(folder), "remote", "get-url", "origin"], capture_output=True,
                               text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    return slug_from_remote(found.stdout) if found.returncode == 0 else None


def choose_slug(given: str | None, solutions: Path) -> tuple[str, str]:
    """The address to release with, and where it came from: --repo, the git remote origin, the notebooks' badges."""
    if given:
        return check_slug(given.strip()), "--repo"
    if found := origin_slug(solutions):
        return found, "the git remote origin"
    if found := carried_slug(solutions):
        return found, "the notebooks' badges"
    return PLACEHOLDER_SLUG, "the placeholder"


def carried_slug(folder: Path) -> str | None:
    """The one OWNER/NAME that the badges of the notebooks in `folder` point to; None if none or several."""
    carried = {slug_of(path) for path in sorted(Path(folder).glob("*.ipynb"))} - {None}
    return carried.pop() if len(carried) == 1 else None


def problems(path: str | Path, slug: str | None = None) -> list[str]:
    """What is missing or stale in one notebook: its badge, its setup lines; empty when both are current."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    found = []
    first = _first_markdown(nb)
    badge = badge_markdown(student_path(path), slug)
    if first is None:
        found.append(f"{path.name}: has no Markdown cell for the Open in Colab badge")
    elif not first.source.startswith(badge):
        stale = BADGE.search(first.source)
        found.append(f"{path.name}: the first Markdown cell " + ("has a stale badge" if stale else "has no badge")
                     + f" (expected {badge})")
    setup = _setup_cell(nb)
    if setup is None:
        found.append(f"{path.name}: has no setup cell (a code cell calling {SETUP_CALL}...)")
    elif not setup.source.startswith(bootstrap_code(slug) + "\n"):
        found.append(f"{path.name}: the setup cell does not start with the current Colab setup lines")
    return found


def apply(path: str | Path, slug: str | None = None) -> bool:
    """Insert or refresh the badge and the setup lines in one notebook; True when the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    first = _first_markdown(nb)
    if first is None:
        raise ValueError(f"{path}: no Markdown cell to put the Open in Colab badge in")
    first.source = badge_markdown(student_path(path), slug) + "\n\n" + BADGE.sub("", first.source, count=1).lstrip("\n")
    setup = _setup_cell(nb)
    if setup is None:
        raise ValueError(f"{path}: no setup cell (a code cell calling {SETUP_CALL}...) for the Colab setup lines")
    setup.source = bootstrap_code(slug) + "\n\n" + _strip_bootstrap(setup.source)
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
    parser.add_argument("--repo", metavar="OWNER/NAME", help="the address (default: as `course release` chooses it)")
    args = parser.parse_args(argv)
    slug, _ = choose_slug(args.repo, args.notebooks[0].parent)
    if args.write:
        for path in args.notebooks:
            print(f"{'updated' if apply(path, slug) else 'already current'}: {path}")
        return 0
    found = [problem for path in args.notebooks for problem in problems(path, slug)]
    print("\n".join(found) if found else f"{len(args.notebooks)} notebook(s) carry the current badge and setup lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
