"""One unit of grading work, self-contained so that it runs here, in a pool process or on a Dask worker elsewhere.

A `Unit` carries everything it needs as bytes (the configured solution notebook, the student's notebook, the
reference solution's check reports, the capstone adapter's files and hidden rows), so a worker needs the course
installed and nothing shared with the instructor's machine. `grade_unit` autogrades it in the sandbox, in a course
folder of the worker's own, and answers a `Graded`: the grade, the executed notebook, the seconds it took.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from course_lib.instructor import capstone, intake
from course_lib.instructor.grading import CellGrade, Course, NotebookGrade
from course_lib.instructor.sandbox import Limits

PROFILE = "grade"


@dataclass(frozen=True)
class ArtifactJob:
    """The capstone adapter handed in beside a notebook, and what scoring it needs."""

    files: dict[str, bytes] | None  # file name -> bytes of the adapter folder; None: no folder was handed in
    found_note: str  # why there is no folder (or what intake left out of it)
    max_points: float
    baseline: float  # the prompting baseline's hidden-split score, which the points are relative to
    tickets: list[dict]  # the hidden split's rows
    digest: str  # capstone.folder_sha256 of the folder
    measured: dict | None = None  # the metrics of an adapter of the same bytes already scored on this split


@dataclass(frozen=True)
class Unit:
    """One student's copy of one notebook, with everything its grading needs."""

    stem: str
    solution: bytes  # the configured solution notebook (the same bytes for every unit of this stem)
    student: str
    name: str
    notebook: bytes | None  # None: the student handed in no such notebook
    reference: dict[str, list[dict]]  # the reference solution's check reports, by grade id
    timeout: int
    limits: Limits
    threads: int = 0  # OMP_NUM_THREADS for the student's kernel (0: leave the environment's)
    artifact: ArtifactJob | None = None


@dataclass(frozen=True)
class Graded:
    """What grading a unit gave."""

    grade: NotebookGrade
    status: str  # graded, or failed: the grader itself raised
    autograded: bytes | None  # the executed notebook nbgrader graded
    seconds: float
    error: str = ""  # the grader's traceback when it raised
    artifact: capstone.ArtifactResult | None = None


_courses: dict[tuple[str, str], Course] = {}  # per process: one course folder per solution notebook, reused


def course_for(unit: Unit, work: Path | None = None) -> Course:
    """This process's course folder for the unit's notebook: made once, its reference reports seeded, then reused."""
    key = (unit.stem, hashlib.sha256(unit.solution).hexdigest()[:16])
    if key not in _courses:
        root = Path(work or tempfile.gettempdir()) / f"course-worker-{os.getpid()}-{key[1]}"
        solution = root / "solution" / f"{unit.stem}.ipynb"
        solution.parent.mkdir(parents=True, exist_ok=True)
        solution.write_bytes(unit.solution)
        _courses[key] = Course([solution], root=root / "nbgrader", timeout=unit.timeout, limits=unit.limits)
    course = _courses[key]
    if unit.reference:
        course.seed_reference(unit.stem, unit.reference, PROFILE)
    return course


def grade_unit(unit: Unit, work: str | None = None, course: Course | None = None) -> Graded:
    """Autograde one unit in the sandbox (and score its capstone adapter); the grader's own errors become a failed
    grade with the reason, never an exception."""
    started = time.perf_counter()
    course = course or course_for(unit, Path(work) if work else None)
    saved = os.environ.get("OMP_NUM_THREADS")
    if unit.threads:
        os.environ["OMP_NUM_THREADS"] = str(unit.threads)  # the sandbox passes it on to the kernel
    try:
        with tempfile.TemporaryDirectory(prefix="course-unit-") as scratch:
            notebook = None
            if unit.notebook is not None:
                notebook = Path(scratch) / f"{unit.stem}.ipynb"
                notebook.write_bytes(unit.notebook)
            status, error = "graded", ""
            try:
                grade = course.autograde(unit.stem, unit.student, notebook, PROFILE)
            except KeyboardInterrupt:
                raise
            except Exception as raised:  # the batch must finish: this notebook fails, the others are graded
                status, error = "failed", "".join(traceback.format_exception(raised))
                grade = failed_grade(course, unit.stem, unit.student,
                                     f"the grader failed on this notebook: {intake.describe(raised)}")
            executed = course.autograded_notebook(unit.stem, unit.student)
            autograded = executed.read_bytes() if executed.is_file() else None
            result = None
            if unit.artifact is not None:
                result = score_artifact(unit, Path(scratch) / "adapter")
                grade = with_artifact(grade, result)
    finally:
        if unit.threads:
            os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.update(OMP_NUM_THREADS=saved)
    return Graded(grade, status, autograded, round(time.perf_counter() - started, 2), error, result)


def score_artifact(unit: Unit, folder: Path) -> capstone.ArtifactResult:
    """Check and score the unit's capstone adapter on the hidden rows; any failure is zero with the reason."""
    job = unit.artifact
    try:
        adapter = None
        if job.files is not None:
            folder.mkdir(parents=True)
            for name, data in job.files.items():
                if Path(name).name != name or name in ("", ".", ".."):
                    raise ValueError(f"adapter file name {name!r} is not a plain file name")
                (folder / name).write_bytes(data)
            adapter = folder
        return capstone.score_adapter(unit.student, unit.name, adapter, job.max_points, job.found_note, job.baseline,
                                      job.tickets, unit.limits, job.digest, job.measured)
    except Exception as error:  # noqa: BLE001  (the batch must finish: this adapter gets zero, with the reason)
        return capstone.ArtifactResult(unit.student, unit.name, None, 0.0, job.max_points,
                                       f"the grader failed on the adapter: {intake.describe(error)}: "
                                       f"0/{job.max_points:g}", adapter_sha256=job.digest)


def with_artifact(grade: NotebookGrade, result: capstone.ArtifactResult) -> NotebookGrade:
    """The grade with the adapter's points on the artifact's cell and its note added."""
    cells = tuple(CellGrade(c.name, result.points, c.max_score, result.note) if c.name == capstone.ARTIFACT_CELL
                  else c for c in grade.cells)
    return NotebookGrade(grade.notebook, grade.student, cells, "; ".join(filter(None, [grade.note, result.note])))


def failed_grade(course: Course, stem: str, student: str, reason: str) -> NotebookGrade:
    """Zero on every graded cell, recorded in the gradebook when it can be, with `reason` as the note."""
    try:
        zero = course.autograde(stem, student, None)
        cells = tuple(CellGrade(c.name, 0.0, c.max_score) for c in zero.cells)
    except Exception:  # the gradebook itself is what broke: take the cells from the solution's graded cells
        cells = tuple(CellGrade(name, 0.0, points) for name, points in course.graded_cells(stem))
    return NotebookGrade(stem, student, cells, reason)


def reference_unit(stem: str, solution: bytes, timeout: int, limits: Limits, work: str | None = None
                   ) -> dict[str, list[dict]]:
    """Run the reference solution once in the sandbox and answer its check reports (a unit of its own)."""
    unit = Unit(stem, solution, "", "", None, {}, timeout, limits)
    key = (stem, hashlib.sha256(solution).hexdigest()[:16])
    if key not in _courses:
        course_for(unit, Path(work) if work else None)
    return _courses[key].reference_reports(stem, PROFILE)


def pack_folder(folder: Path | None) -> dict[str, bytes] | None:
    """The regular files directly inside `folder` (intake's copy of a handed-in folder), by name."""
    if folder is None:
        return None
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir()) if path.is_file()}
