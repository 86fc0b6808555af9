"""nbgrader, driven from Python: release student notebooks and autograde submissions."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CELL_TIMEOUT_S = 120


@dataclass(frozen=True)
class CellGrade:
    """The score of one graded test cell."""

    name: str
    score: float
    max_score: float


@dataclass(frozen=True)
class NotebookGrade:
    """The autograded result of one submitted notebook."""

    notebook: str
    student: str
    cells: tuple[CellGrade, ...]

    @property
    def score(self) -> float:
        return sum(c.score for c in self.cells)

    @property
    def max_score(self) -> float:
        return sum(c.max_score for c in self.cells)

    def by_cell(self) -> dict[str, float]:
        """Scores keyed by the grade cell's id."""
        return {c.name: c.score for c in self.cells}


def _api(root: Path, timeout: int = CELL_TIMEOUT_S):
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    config = Config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.course_id = "course"
    config.Execute.timeout = timeout
    config.Execute.allow_errors = True  # a failing exercise must not stop the later ones from being graded
    return NbGraderAPI(config=config)


def _check(result: dict, what: str) -> None:
    if not result.get("success"):
        raise RuntimeError(f"nbgrader {what} failed:\n{result.get('error') or ''}\n{result.get('log') or ''}")


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tools_env(**values: str) -> contextlib.AbstractContextManager[None]:
    """nbgrader runs `alembic` as a program: put this interpreter's scripts first on PATH, venv or not."""
    scripts = str(Path(sys.executable).parent)
    return _env(PATH=scripts + os.pathsep + os.environ.get("PATH", ""), **values)


class Course:
    """A throwaway nbgrader course folder holding some solution notebooks, one assignment each."""

    def __init__(self, solutions: list[Path], root: Path | None = None, timeout: int = CELL_TIMEOUT_S):
        self.root = Path(root or tempfile.mkdtemp(prefix="course-nbgrader-"))
        self.api = _api(self.root, timeout)
        self.stems = []
        for path in solutions:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"solution notebook not found: {path}")
            folder = self.root / "source" / path.stem
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
            self.stems.append(path.stem)
        with _tools_env():
            for stem in self.stems:
                _check(self.api.generate_assignment(stem), f"generate_assignment {stem}")

    def student_notebook(self, stem: str) -> Path:
        """The released (student) version of a notebook."""
        return self.root / "release" / stem / f"{stem}.ipynb"

    def autograde(self, stem: str, student: str, notebook: Path, profile: str = "grade") -> NotebookGrade:
        """Autograde one student's notebook and read the scores back from the gradebook."""
        from nbgrader.api import Gradebook

        target = self.root / "submitted" / student / stem
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copy(notebook, target / f"{stem}.ipynb")
        with _tools_env(COURSE_PROFILE=profile):
            _check(self.api.autograde(stem, student), f"autograde {stem} for {student}")
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "course") as gradebook:
            submitted = gradebook.find_submission_notebook(stem, stem, student)
            cells = tuple(
                CellGrade(g.name, float(g.score or 0.0), float(g.max_score)) for g in submitted.grades
            )
        return NotebookGrade(notebook=stem, student=student, cells=cells)

    def cleanup(self) -> None:
        """Delete the course folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def release(solutions_dir: Path, notebooks_dir: Path) -> list[Path]:
    """Generate every student notebook from its solution with nbgrader (solutions and hidden tests removed)."""
    solutions = sorted(Path(solutions_dir).glob("*.ipynb"))
    if not solutions:
        raise FileNotFoundError(f"no notebooks in {solutions_dir}")
    course = Course(solutions)
    try:
        Path(notebooks_dir).mkdir(parents=True, exist_ok=True)
        written = []
        for stem in course.stems:
            target = Path(notebooks_dir) / f"{stem}.ipynb"
            shutil.copy(course.student_notebook(stem), target)
            written.append(target)
        return written
    finally:
        course.cleanup()


def leaked_markers(notebook: Path) -> list[str]:
    """Solution or hidden-test markers left in a released notebook (should be none)."""
    text = Path(notebook).read_text(encoding="utf-8")
    markers = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
    return [m for m in markers if m in text]


def notebook_json(path: Path) -> dict:
    """A notebook's JSON, for comparing a committed release with a fresh one."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
