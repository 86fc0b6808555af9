"""Grade a folder of submissions (an LMS export) into a gradebook, a CSV and per-student feedback.

Each entry of the folder is one student (see `intake` for how entries, ids and files are read). Everything the run
produces lives in one output folder, and the run can be repeated: a notebook whose file (and solution) has not
changed since it was graded is not run again, so an interrupted run continues where it stopped. The batch always
finishes: a notebook that makes the grader raise gets a failed row with the reason, and one that killed an earlier
run outright is recorded as failed instead of being run again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat

from course_lib.capstone import rules
from course_lib.instructor import capstone, intake
from course_lib.instructor.feedback import write_feedback
from course_lib.instructor.grading import CELL_TIMEOUT_S, CellGrade, Course, NotebookGrade
from course_lib.instructor.sandbox import Limits

STATE_VERSION = 2
COLUMNS = ["student", "name", "notebook", "exercise", "score", "max_score", "note"]


@dataclass(frozen=True)
class BatchResult:
    """What `grade_folder` wrote and the grades it holds."""

    grades: list[NotebookGrade]
    csv: Path
    gradebook: Path
    feedback: Path
    reused: int  # notebooks not run again because they were graded before
    names: dict[str, str]  # student id -> the name the export gave


def grade_folder(submissions: Path, solutions: list[Path], out: Path,
                 progress: Callable[[str], None] = lambda line: None,
                 timeout: int = CELL_TIMEOUT_S, limits: Limits | None = None,
                 capstone_secret: Path | None = None, capstone_reference: Path | None = None) -> BatchResult:
    """Grade every student's copy of every solution notebook; write gradebook, grades.csv and feedback/ under `out`.

    A capstone notebook's adapter is scored on the hidden split that `capstone_secret` (a file) seeds; the
    instructor's own adapter, `capstone_reference`, becomes the leaderboard's reference row."""
    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {submissions}")
    out.mkdir(parents=True, exist_ok=True)
    course = Course(solutions, root=out / "nbgrader", timeout=timeout, limits=limits)
    solution_keys = {Path(p).stem: _sha256(Path(p).read_bytes())[:16] for p in solutions}
    artifacts = {Path(p).stem: capstone.artifact_points(Path(p)) for p in solutions if capstone.is_capstone(Path(p))}
    grader = None
    if artifacts:
        progress("capstone: scoring the prompting baseline" + (" and the reference adapter" if capstone_reference else "")
                 + " on the hidden split")
        grader = capstone.CapstoneGrader(out, capstone.read_secret(capstone_secret), capstone_reference, limits)
    state_path, csv_path = out / "state.json", out / "grades.csv"
    state = _load_state(state_path, progress)
    students = intake.open_submissions(submissions, course.stems, out / "intake", progress, skip=(out,),
                                       artifacts={stem: rules.ADAPTER_FOLDER for stem in artifacts})
    grades: list[NotebookGrade] = []
    names = {s.student: s.name for s in students}
    reused = 0
    _write_csv(grades, names, csv_path)
    for submission in students:
        for stem in course.stems:
            grade, was_reused = _grade_one(course, submission, stem, solution_keys[stem], state, state_path, out)
            if stem in artifacts:
                grade = _grade_artifact(course, grader, submission, grade, artifacts[stem])
                _write_feedback(grade, out, submission.name)
            reused += was_reused
            grades.append(grade)
            label = submission.student if submission.name == submission.student else \
                f"{submission.student} ({submission.name})"
            progress(f"{label} {stem}: {grade.score:g}/{grade.max_score:g}" + (f" ({grade.note})" if grade.note else ""))
        _write_csv(grades, names, csv_path)  # after every student: a killed run leaves a usable CSV
    return BatchResult(grades, csv_path, course.root / "gradebook.db", out / "feedback", reused, names)


def _grade_one(course: Course, submission: intake.Submission, stem: str, solution_key: str, state: dict,
               state_path: Path, out: Path) -> tuple[NotebookGrade, bool]:
    """One notebook of one student: reused, graded, or failed with its reason; its state saved and feedback written."""
    student, notebook = submission.student, submission.notebooks.get(stem)
    intake_note = submission.notes.get(stem, "")
    key = (_sha256(notebook.read_bytes()) if notebook else "missing") + ":" + solution_key
    if stem in submission.artifacts:  # a new adapter alone is graded again too
        key += ":" + capstone.folder_sha256(submission.artifacts[stem])[:16]
    done = state["students"].get(student, {}).get(stem)
    grade, grader_note, status = None, "", "graded"
    if done and done.get("sha256") == key:
        if done.get("status") == "running":
            status, grader_note = "failed", ("the grader stopped while grading this notebook in an earlier run, so it "
                                             "was not run again (delete its entry in state.json to retry)")
        else:
            status, grader_note = done.get("status", "graded"), done.get("note", "")
        grade = _reuse(course, stem, student, status, grader_note)
    was_reused = grade is not None
    if grade is None:
        # marked before running: if this notebook kills the whole grader, the next run skips it
        _save(state, state_path, student, stem, {"sha256": key, "status": "running"})
        try:
            grade = course.autograde(stem, student, notebook)
            grader_note = grade.note
        except KeyboardInterrupt:
            _save(state, state_path, student, stem, None)
            raise
        except Exception as error:  # the batch must finish: this notebook fails, the others are graded
            status, grader_note = "failed", f"the grader failed on this notebook: {intake.describe(error)}"
            _log_error(out, student, stem, error)
            grade = _failed(course, stem, student, grader_note)
    note = "; ".join(filter(None, [intake_note, grader_note]))
    grade = NotebookGrade(grade.notebook, grade.student, grade.cells, note)
    if not was_reused or done.get("status") == "running":
        _save(state, state_path, student, stem, {"sha256": key, "status": status, "note": grader_note})
    return _write_feedback(grade, out, submission.name), was_reused


def _write_feedback(grade: NotebookGrade, out: Path, name: str) -> NotebookGrade:
    """Write the student's page for this notebook; a failure is logged and noted, and the grade stands."""
    try:
        write_feedback(grade, out / "feedback" / grade.student, name)
    except Exception as error:  # the grade stands; the instructor learns the page is missing
        _log_error(out, grade.student, grade.notebook, error)
        grade = NotebookGrade(grade.notebook, grade.student, grade.cells, "; ".join(
            filter(None, [grade.note, f"feedback could not be written: {intake.describe(error)}"])))
    return grade


def _grade_artifact(course: Course, grader: capstone.CapstoneGrader, submission: intake.Submission,
                    grade: NotebookGrade, max_points: float) -> NotebookGrade:
    """Score the adapter handed in with a capstone notebook and put its points on the artifact's cell."""
    try:
        result = grader.grade(submission.student, submission.name, submission.artifacts.get(grade.notebook),
                              max_points, submission.artifact_notes.get(grade.notebook, ""))
    except Exception as error:  # noqa: BLE001  (the batch must finish: this adapter gets zero, with the reason)
        result = capstone.ArtifactResult(submission.student, submission.name, None, 0.0, max_points,
                                         f"the grader failed on the adapter: {intake.describe(error)}: 0/{max_points:g}")
    try:
        course.set_score(grade.notebook, submission.student, capstone.ARTIFACT_CELL, result.points)
    except Exception as error:  # noqa: BLE001  (the CSV still gets the points; the gradebook's failure is noted)
        result.note += f" (the gradebook could not be updated: {intake.describe(error)})"
    cells = tuple(CellGrade(c.name, result.points, c.max_score, result.note) if c.name == capstone.ARTIFACT_CELL
                  else c for c in grade.cells)
    return NotebookGrade(grade.notebook, grade.student, cells, "; ".join(filter(None, [grade.note, result.note])))


def _reuse(course: Course, stem: str, student: str, status: str, note: str) -> NotebookGrade | None:
    """An earlier run's grade from the gradebook, or None when it cannot be read (then the notebook is graded again)."""
    if status == "failed":
        return _failed(course, stem, student, note)
    try:
        return course._read(stem, student, note)
    except Exception:  # a gradebook deleted or out of step with state.json: grade it again
        return None


def _failed(course: Course, stem: str, student: str, reason: str) -> NotebookGrade:
    """Zero on every graded cell, recorded in the gradebook when it can be, with `reason` as the note."""
    try:
        zero = course.autograde(stem, student, None)
        cells = tuple(CellGrade(c.name, 0.0, c.max_score) for c in zero.cells)
    except Exception:  # the gradebook itself is what broke: take the cells from the released notebook
        released = nbformat.read(course.student_notebook(stem), as_version=4)
        cells = tuple(CellGrade(c.metadata["nbgrader"]["grade_id"], 0.0, float(c.metadata["nbgrader"]["points"]))
                      for c in released.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade"))
    return NotebookGrade(stem, student, cells, reason)


def _load_state(path: Path, progress: Callable[[str], None]) -> dict:
    """What earlier runs finished; a missing, unreadable or older state file means starting afresh."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(state, dict) and state.get("version") == STATE_VERSION and isinstance(state.get("students"), dict):
            return state
        progress(f"{path.name} is from an older grader: grading everything again")
    except FileNotFoundError:
        pass
    except ValueError:
        progress(f"{path.name} could not be read: grading everything again")
    return {"version": STATE_VERSION, "students": {}}


def _save(state: dict, path: Path, student: str, stem: str, entry: dict | None) -> None:
    notebooks = state["students"].setdefault(student, {})
    if entry is None:
        notebooks.pop(stem, None)
    else:
        notebooks[stem] = entry
    _atomic_write(path, json.dumps(state, indent=1, ensure_ascii=False))


def _log_error(out: Path, student: str, stem: str, error: BaseException) -> None:
    """The whole traceback for the instructor, next to the CSV (the row holds one line)."""
    try:
        with (out / "errors.log").open("a", encoding="utf-8", errors="backslashreplace") as log:
            log.write(f"--- {student} {stem}\n{''.join(traceback.format_exception(error))}\n")
    except OSError:  # a full disk must not turn one failed notebook into a failed batch
        pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _text(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading = + - @ would otherwise make it a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _write_csv(grades: list[NotebookGrade], names: dict[str, str], path: Path) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for grade in grades:
            for cell in grade.cells:
                writer.writerow([grade.student, _text(names.get(grade.student, grade.student)), grade.notebook,
                                 cell.name, f"{cell.score:g}", f"{cell.max_score:g}", _text(grade.note)])
    tmp.replace(path)
    return path
