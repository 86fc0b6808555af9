"""nbgrader, driven from Python: release student notebooks and autograde submissions."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import nbformat
from traitlets.config import Config

from course_lib.instructor.execute import KERNEL_NAME, SafeExecute, install_kernelspec
from course_lib.instructor.sandbox import Limits

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
    note: str = ""  # what happened, for the feedback: a dead kernel, a restored test cell, an unreadable file

    @property
    def score(self) -> float:
        return sum(c.score for c in self.cells)

    @property
    def max_score(self) -> float:
        return sum(c.max_score for c in self.cells)

    def by_cell(self) -> dict[str, float]:
        """Scores keyed by the grade cell's id."""
        return {c.name: c.score for c in self.cells}


def _api(root: Path, timeout: int = CELL_TIMEOUT_S, sandbox: bool = True):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.converters import Autograde

    config = Config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.course_id = "course"
    if not sandbox:  # nbgrader as it ships: only for measuring what the sandbox costs
        config.Execute.timeout = timeout
        return NbGraderAPI(config=config)
    config.Autograde.autograde_preprocessors = [
        SafeExecute if p.__name__ == "Execute" else p for p in Autograde.class_traits()["autograde_preprocessors"].default()
    ]
    config.SafeExecute.kernel_name = KERNEL_NAME
    config.SafeExecute.timeout = timeout
    config.SafeExecute.allow_errors = True  # a failing exercise must not stop the later ones from being graded
    config.OverwriteCells.add_missing_cells = True  # a deleted test cell comes back and fails, not vanishes
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

    def __init__(self, solutions: list[Path], root: Path | None = None, timeout: int = CELL_TIMEOUT_S,
                 limits: Limits | None = None, sandbox: bool = True):
        self.root = Path(root or tempfile.mkdtemp(prefix="course-nbgrader-"))
        self.api = _api(self.root, timeout, sandbox)
        install_kernelspec(self.root / "jupyter", limits or Limits())
        self.stems = []
        changed = []
        for path in solutions:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"solution notebook not found: {path}")
            source = self.root / "source" / path.stem / path.name
            # a course folder is reused when grading resumes: regenerate only what changed
            if not (source.exists() and source.read_bytes() == path.read_bytes()
                    and self.student_notebook(path.stem).exists()):
                source.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, source)
                changed.append(path.stem)
            self.stems.append(path.stem)
        with _tools_env():
            for stem in changed:
                _check(self.api.generate_assignment(stem), f"generate_assignment {stem}")

    def student_notebook(self, stem: str) -> Path:
        """The released (student) version of a notebook."""
        return self.root / "release" / stem / f"{stem}.ipynb"

    def autograde(self, stem: str, student: str, notebook: Path | None, profile: str = "grade") -> NotebookGrade:
        """Autograde one student's notebook in the sandbox; whatever the submission does, return a grade and a note."""
        target = self.root / "submitted" / student / stem
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(self.autograded_notebook(stem, student).parent, ignore_errors=True)
        if notebook is None or not Path(notebook).is_file():
            return self._zero(stem, student, f"no {stem}.ipynb in the submission")
        problem = _unreadable(Path(notebook))
        if problem:
            return self._zero(stem, student, f"{Path(notebook).name} is not a valid notebook: {problem}")
        target.mkdir(parents=True)
        shutil.copy(notebook, target / f"{stem}.ipynb")
        jupyter_path = os.pathsep.join(filter(None, [str(self.root / "jupyter"), os.environ.get("JUPYTER_PATH")]))
        with _tools_env(COURSE_PROFILE=profile, JUPYTER_PATH=jupyter_path):
            result = self.api.autograde(stem, student, force=True)
        if not result.get("success"):
            last = (result.get("error") or result.get("log") or "unknown error").strip().splitlines()[-1]
            return self._zero(stem, student, f"the grader could not run this notebook: {last[:200]}")
        notes = _tampering(Path(notebook), self.student_notebook(stem)) + _incidents(self.autograded_notebook(stem, student))
        notes += _machinery(Path(notebook), self.student_notebook(stem))
        return self._read(stem, student, "; ".join(notes))

    def feedback(self, stem: str, student: str) -> bool:
        """Write nbgrader's HTML feedback for an autograded notebook; False when nbgrader could not."""
        with _tools_env():
            return bool(self.api.generate_feedback(stem, student, force=True).get("success"))

    def autograded_notebook(self, stem: str, student: str) -> Path:
        """The executed copy nbgrader graded."""
        return self.root / "autograded" / student / stem / f"{stem}.ipynb"

    def _read(self, stem: str, student: str, note: str) -> NotebookGrade:
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "course") as gradebook:
            submitted = gradebook.find_submission_notebook(stem, stem, student)
            cells = tuple(CellGrade(g.name, float(g.score or 0.0), float(g.max_score)) for g in submitted.grades)
        return NotebookGrade(notebook=stem, student=student, cells=cells, note=note)

    def _zero(self, stem: str, student: str, note: str) -> NotebookGrade:
        """Record zero for every exercise of a notebook that could not be graded, as nbgrader does for a missing one."""
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "course") as gradebook:
            gradebook.update_or_create_student(student)
            submission = gradebook.update_or_create_submission(stem, student)
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    grade.auto_score = 0
                    grade.manual_score = None
                    grade.needs_manual_grade = False
            gradebook.db.commit()
        return self._read(stem, student, note)

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


def _unreadable(path: Path) -> str:
    """Why a file is not a notebook nbgrader can grade, or an empty string."""

    try:
        nbformat.validate(nbformat.read(path, as_version=4))
    except Exception as error:  # JSON errors, schema errors, wrong encodings: all mean "not a notebook"
        return str(error).strip().splitlines()[0][:200] or type(error).__name__
    return ""


def _tampering(submitted: Path, released: Path) -> list[str]:
    """Test cells the student deleted or edited (nbgrader restores them from the instructor's copy)."""
    original = {c.metadata["nbgrader"]["grade_id"]: c.source for c in _graded_tests(released)}
    mine = {c.metadata["nbgrader"]["grade_id"]: c.source for c in _graded_tests(submitted)}
    notes = [f"test cell {name} was missing and was restored" for name in original if name not in mine]
    notes += [f"test cell {name} was edited and was restored" for name in original if name in mine
              and mine[name] != original[name]]
    return notes


# Code that reaches into the kernel, the interpreter or the grader can fake a pass from inside the kernel;
# no in-process check can rule that out, so such a submission is flagged for a person to read.
_MACHINERY = re.compile(r"get_ipython|IPython|run_cell|showtraceback|builtins|sys\.modules|ctypes|gc\.get_objects"
                        r"|sys\.settrace|__code__|nbgrader")


def _machinery(submitted: Path, released: Path) -> list[str]:
    """A note when the learner's own code (cells that differ from the release) touches the grader's machinery."""

    given = {c.source for c in nbformat.read(released, as_version=4).cells}
    cells = nbformat.read(submitted, as_version=4).cells
    mine = [c.source for c in cells if c.cell_type == "code" and c.source not in given
            and not c.get("metadata", {}).get("nbgrader", {}).get("grade")]
    hits = sorted({m.group(0) for source in mine for m in _MACHINERY.finditer(source)})
    return [f"code uses {', '.join(hits)}: check this grade by hand"] if hits else []


def _graded_tests(path: Path) -> list:

    cells = nbformat.read(path, as_version=4).cells
    return [c for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c.cell_type == "code"]


_INCIDENTS = {
    "DeadKernelError": "the kernel died",
    "NotRun": "later cells were not run",
    "CellTimeoutError": "a cell ran past the time limit",
    "MemoryError": "a cell ran out of memory",
    "PermissionError": "a cell tried to touch files outside its folder",
    "SystemExit": "a cell called sys.exit()",
}


def _incidents(autograded: Path) -> list[str]:
    """Plain-language notes on what went wrong while the submission ran."""

    if not autograded.exists():
        return []
    seen: list[str] = []
    for cell in nbformat.read(autograded, as_version=4).cells:
        for output in cell.get("outputs", []):
            name = output.get("ename") if output.get("output_type") == "error" else None
            if name is None and "output cut at" in str(output.get("text", "")):
                name = "output"
            note = _INCIDENTS.get(name) if name != "output" else "output was cut (too large)"
            if note and note not in seen:
                seen.append(note)
    return seen


def leaked_markers(notebook: Path) -> list[str]:
    """Solution or hidden-test markers left in a released notebook (should be none)."""
    text = Path(notebook).read_text(encoding="utf-8")
    markers = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
    return [m for m in markers if m in text]


def notebook_json(path: Path) -> dict:
    """A notebook's JSON, for comparing a committed release with a fresh one."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
