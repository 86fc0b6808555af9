"""Helpers shared by test files: the repository's paths and the solution notebooks' nbgrader metadata.

Import them as `from tests.helpers import ...` (conftest.py holds the shared fixtures; test modules never import
each other).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))


def slow_extra(what: str) -> pytest.MarkDecorator:
    """Skip a slow extra unless COURSE_SLOW_TESTS=1 (the README says which command runs each)."""
    return pytest.mark.skipif(os.environ.get("COURSE_SLOW_TESTS") != "1", reason=f"{what}: set COURSE_SLOW_TESTS=1")


def solution_cells(stem: str) -> list[dict]:
    """The cells of solutions/<stem>.ipynb, as stored."""
    return json.loads((REPO / "solutions" / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"]


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def cell_sources(stem: str) -> dict[str, str]:
    """grade_id -> source of every nbgrader cell of a solution notebook."""
    cells = solution_cells(stem)
    return {_nbgrader(c)["grade_id"]: "".join(c["source"]) for c in cells if _nbgrader(c).get("grade_id")}


def points(stem: str) -> dict[str, float]:
    """grade_id -> points of every graded (test) cell: full marks, as the notebook's nbgrader metadata gives them."""
    return {_nbgrader(c)["grade_id"]: _nbgrader(c)["points"] for c in solution_cells(stem) if _nbgrader(c).get("grade")}


def exercises(stem: str) -> dict[str, list[str]]:
    """Each exercise's graded cells: solution cell grade_id -> the graded cells after it, up to the next solution."""
    found: dict[str, list[str]] = {}
    current = None
    for cell in solution_cells(stem):
        meta = _nbgrader(cell)
        if meta.get("solution"):
            current = meta["grade_id"]
            found[current] = []
        elif meta.get("grade"):
            assert current is not None, f"{stem}: graded cell {meta['grade_id']} before any exercise"
            found[current].append(meta["grade_id"])
    return found


def notebook_imports(stem: str) -> dict:
    """A namespace holding what a solution notebook's own cells import (import statements only, nothing else runs)."""
    namespace: dict = {}
    for cell in solution_cells(stem):
        if cell["cell_type"] != "code" or _nbgrader(cell).get("solution") or _nbgrader(cell).get("grade"):
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:  # a cell with IPython magics
            continue
        imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(body=imports, type_ignores=[]), f"<{stem} imports>", "exec"), namespace)
    return namespace


def edited_solution(stem: str, edits: dict, folder: Path) -> Path:
    """A copy of a solution notebook with wrong answers: grade_id -> a function from the cell's source to the new."""
    nb = json.loads((REPO / "solutions" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    for grade_id, edit in edits.items():
        cells = [c for c in nb["cells"] if _nbgrader(c).get("grade_id") == grade_id]
        assert len(cells) == 1, f"{stem} has no single cell {grade_id}"
        source = "".join(cells[0]["source"])
        cells[0]["source"] = edit(source)
        assert cells[0]["source"] != source, f"{stem}/{grade_id}: the edit changed nothing"
    path = Path(folder) / f"{stem}.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def random_rows(lengths, vocab: int = 1000, seed: int = 0, learn_from: int = 0) -> list[dict]:
    """Tokenized rows of random ids (ids from 3 up), learning every token from position `learn_from` on."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * learn_from + ids[learn_from:]})
    return rows


def kill_tree(root: int) -> int:
    """SIGKILL `root` and every process below it, wherever its session; returns how many were signalled.

    For a command that ran past a test's timeout: `subprocess.run` kills only its child, and a child that starts its
    own session (`script`, `setsid`) leaves the rest running for the remainder of the suite."""
    try:
        top = psutil.Process(root)  # the whole tree first: a parent killed first would hand its children to init
        found = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    signalled = 0
    for process in found:
        try:
            process.kill()
            signalled += 1
        except psutil.NoSuchProcess:
            continue
    return signalled
