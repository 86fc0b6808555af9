"""nbgrader, driven from Python: release student notebooks and autograde submissions."""

from __future__ import annotations

import contextlib
import hashlib
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

from course_lib.instructor import course_config, intake, verdict
from course_lib.instructor.execute import KERNEL_NAME, SafeExecute, install_kernelspec
from course_lib.instructor.sandbox import Limits, layers

CELL_TIMEOUT_S = 120


@dataclass(frozen=True)
class CellGrade:
    """The score of one graded test cell."""

    name: str
    score: float
    max_score: float
    message: str = ""  # why it failed: the error it raised, or the check whose report differs from the reference's


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


def _api(root: Path, timeout: int = CELL_TIMEOUT_S, sandbox: bool = True, limits: Limits | None = None):
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
    config.SafeExecute.notebook_timeout = (limits or Limits()).notebook_seconds
    config.SafeExecute.max_notebook_output_bytes = (limits or Limits()).output_bytes
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
                 limits: Limits | None = None, sandbox: bool = True, references: Path | None = None):
        # absolute: nbgrader resolves a relative root against folders it changes into
        self.root = Path(root or tempfile.mkdtemp(prefix="course-nbgrader-")).resolve()
        self.sandbox = sandbox
        self.references = Path(references or self.root / "reference")  # may be shared by courses of one source
        if sandbox and (why := layers()["namespaces"]):
            raise RuntimeError(f"cannot grade untrusted notebooks here: the sandbox needs Linux namespaces ({why})")
        self.api = _api(self.root, timeout, sandbox, limits)
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
        target.mkdir(parents=True)
        repaired, repairs = intake.repair_notebook(Path(notebook), self.student_notebook(stem), target)
        if repaired is None:
            return self._zero(stem, student, "; ".join(repairs))
        repaired.rename(target / f"{stem}.ipynb")
        with self._kernel_env(profile):
            result = self.api.autograde(stem, student, force=True)
        if not result.get("success"):
            return self._zero(stem, student, f"the grader could not run this notebook: {_cause(result)}")
        if self.sandbox:
            self._judge(stem, student, self.reference_reports(stem, profile))
        notes = repairs + _tampering(target / f"{stem}.ipynb", self.student_notebook(stem))
        notes += _incidents(self.autograded_notebook(stem, student))
        return self._read(stem, student, "; ".join(notes))

    def _kernel_env(self, profile: str) -> contextlib.AbstractContextManager[None]:
        jupyter_path = os.pathsep.join(filter(None, [str(self.root / "jupyter"), os.environ.get("JUPYTER_PATH")]))
        return _tools_env(COURSE_PROFILE=profile, JUPYTER_PATH=jupyter_path)

    def reference_reports(self, stem: str, profile: str = "grade") -> dict[str, list[dict]]:
        """What the reference solution's graded cells report, by grade id: run once in the sandbox, then cached."""
        cached = self._cached_reference(stem, profile)
        if cached is not None:
            return cached
        notebook = nbformat.read(self.root / "source" / stem / f"{stem}.ipynb", as_version=4)
        with tempfile.TemporaryDirectory(prefix="course-reference-") as folder, self._kernel_env(profile):
            SafeExecute(config=self.api.config).preprocess(notebook, {"metadata": {"path": folder}})
        found, failing = {}, []
        for cell in _graded_tests_of(notebook):
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            found[grade_id] = verdict.reports(cell)
            if verdict.first_error(cell):
                failing.append(f"{grade_id} ({verdict.first_error(cell)})")
        if failing:
            raise RuntimeError(f"the reference solution of {stem} fails its own tests: {'; '.join(failing)}")
        self.seed_reference(stem, found, profile)
        return found

    def seed_reference(self, stem: str, reports: dict[str, list[dict]], profile: str = "grade") -> None:
        """Cache reference reports computed elsewhere (by another process or machine, from the same source)."""
        cache = self._reference_path(stem, profile)
        if cache.exists():
            return
        cache.parent.mkdir(parents=True, exist_ok=True)
        scratch = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        scratch.write_text(json.dumps(reports), encoding="utf-8")
        scratch.replace(cache)  # atomic: courses sharing the folder never read half a file

    def _reference_path(self, stem: str, profile: str) -> Path:
        source = (self.root / "source" / stem / f"{stem}.ipynb").read_bytes()
        return self.references / f"{stem}-{hashlib.sha256(source + profile.encode()).hexdigest()[:16]}.json"

    def _cached_reference(self, stem: str, profile: str = "grade") -> dict[str, list[dict]] | None:
        cache = self._reference_path(stem, profile)
        return json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else None

    def _judge(self, stem: str, student: str, expected: dict[str, list[dict]]) -> None:
        """Score every graded cell here, in the grader: it passes when it raised nothing and its reports match."""
        from nbgrader.api import Gradebook

        messages = self._messages(stem, student, expected)
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "course") as gradebook:
            for grade in gradebook.find_submission_notebook(stem, stem, student).grades:
                if grade.name in messages:
                    grade.auto_score = 0 if messages[grade.name] else grade.max_score
                    grade.manual_score = None
                    grade.needs_manual_grade = False
            gradebook.db.commit()

    def set_score(self, stem: str, student: str, grade_id: str, score: float) -> None:
        """Put a score the grader decided outside the notebook (the capstone's adapter) on one graded cell."""
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "course") as gradebook:
            found = [g for g in gradebook.find_submission_notebook(stem, stem, student).grades if g.name == grade_id]
            if not found:
                raise KeyError(f"{stem} has no graded cell {grade_id}")
            found[0].auto_score = min(max(score, 0.0), found[0].max_score)
            found[0].manual_score = None
            found[0].needs_manual_grade = False
            gradebook.db.commit()

    def record(self, grade: NotebookGrade, autograded: bytes | None = None) -> None:
        """Write a grade reached in another course folder (a worker's) into this gradebook, with its executed notebook."""
        self._write_scores(grade.notebook, grade.student, {c.name: c.score for c in grade.cells})
        target = self.autograded_notebook(grade.notebook, grade.student)
        shutil.rmtree(target.parent, ignore_errors=True)
        if autograded is not None:
            target.parent.mkdir(parents=True)
            target.write_bytes(autograded)

    def graded_cells(self, stem: str) -> list[tuple[str, float]]:
        """The graded cells of the released notebook: (grade id, points)."""
        released = nbformat.read(self.student_notebook(stem), as_version=4)
        return [(c.metadata["nbgrader"]["grade_id"], float(c.metadata["nbgrader"]["points"]))
                for c in released.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade")]

    def _messages(self, stem: str, student: str, expected: dict[str, list[dict]] | None = None) -> dict[str, str]:
        """Why each graded cell of an autograded notebook failed ('' where it passed)."""
        path = self.autograded_notebook(stem, student)
        if not path.exists():
            return {}
        if expected is None:
            expected = self._cached_reference(stem) or {}
        return {c.metadata["nbgrader"]["grade_id"]: verdict.judge(c, expected.get(c.metadata["nbgrader"]["grade_id"], []))
                for c in _graded_tests_of(nbformat.read(path, as_version=4))}

    def autograded_notebook(self, stem: str, student: str) -> Path:
        """The executed copy nbgrader graded."""
        return self.root / "autograded" / student / stem / f"{stem}.ipynb"

    def _read(self, stem: str, student: str, note: str) -> NotebookGrade:
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "course") as gradebook:
            submitted = gradebook.find_submission_notebook(stem, stem, student)
            scores = [(g.name, float(g.score or 0.0), float(g.max_score)) for g in submitted.grades]
        messages = self._messages(stem, student)
        cells = tuple(CellGrade(name, score, top, messages.get(name, "") if score < top else "")
                      for name, score, top in scores)
        return NotebookGrade(notebook=stem, student=student, cells=cells, note=note)

    def _zero(self, stem: str, student: str, note: str) -> NotebookGrade:
        """Record zero for every exercise of a notebook that could not be graded, as nbgrader does for a missing one."""
        self._write_scores(stem, student, {})
        return self._read(stem, student, note)

    def _write_scores(self, stem: str, student: str, scores: dict[str, float]) -> None:
        """Set every graded cell of a student's submission (made if missing) to its score in `scores` (else 0)."""
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "course") as gradebook:
            gradebook.update_or_create_student(student)
            submission = gradebook.update_or_create_submission(stem, student)
            for notebook in submission.notebooks:
                for cell in notebook.grades:
                    cell.auto_score = min(max(scores.get(cell.name, 0.0), 0.0), cell.max_score)
                    cell.manual_score = None
                    cell.needs_manual_grade = False
            gradebook.db.commit()

    def cleanup(self) -> None:
        """Delete the course folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def release(solutions_dir: Path, notebooks_dir: Path, config: course_config.CourseConfig | None = None) -> list[Path]:
    """Generate every student notebook from its solution with nbgrader (solutions and hidden tests removed)."""
    solutions = sorted(Path(solutions_dir).glob("*.ipynb"))
    if not solutions:
        raise FileNotFoundError(f"no notebooks in {solutions_dir}")
    configured = Path(tempfile.mkdtemp(prefix="course-configured-"))
    course = Course(course_config.configured_solutions(solutions, config or course_config.CourseConfig(), configured))
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
        shutil.rmtree(configured, ignore_errors=True)


def _tampering(submitted: Path, released: Path) -> list[str]:
    """Test cells the student deleted or edited (nbgrader restores them from the instructor's copy)."""
    original = {c.metadata["nbgrader"]["grade_id"]: c.source for c in _graded_tests(released)}
    mine = {c.metadata["nbgrader"]["grade_id"]: c.source for c in _graded_tests(submitted)}
    notes = [f"test cell {name} was missing and was restored" for name in original if name not in mine]
    notes += [f"test cell {name} was edited and was restored" for name in original if name in mine
              and mine[name] != original[name]]
    return notes


def _graded_tests(path: Path) -> list:
    return _graded_tests_of(nbformat.read(path, as_version=4))


def _graded_tests_of(notebook) -> list:
    return [c for c in notebook.cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c.cell_type == "code"]


def _cause(result: dict) -> str:
    """The exception nbgrader's log names as the cause, not its 'see the above traceback'."""
    lines = [line.strip() for line in f"{result.get('log') or ''}\n{result.get('error') or ''}".splitlines()]
    raised = [line for line in lines if _RAISED.match(line) and "NbGraderException" not in line]
    cause = raised[-1] if raised else next((line for line in reversed(lines) if line), "unknown error")
    return cause[:300]


# a traceback's last line: "module.SomeError: message"
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Timeout)\b(:|$)")


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
