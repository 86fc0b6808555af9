"""Grade a folder of submissions (an LMS export) into a gradebook, a CSV and per-student feedback.

Each entry of the folder is one student: a folder, or a .zip file, holding their notebooks anywhere inside.
Everything the run produces lives in one output folder, and the run can be repeated: a notebook whose file
has not changed since it was graded is not run again, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from course_lib.instructor.grading import CELL_TIMEOUT_S, Course, NotebookGrade
from course_lib.instructor.sandbox import Limits

MAX_UNZIPPED_BYTES = 200 * 2**20


@dataclass(frozen=True)
class BatchResult:
    """What `grade_folder` wrote and the grades it holds."""

    grades: list[NotebookGrade]
    csv: Path
    gradebook: Path
    feedback: Path
    reused: int  # notebooks not run again because they were graded before


def student_id(name: str) -> str:
    """A safe student id from a file or folder name (nbgrader uses it in paths)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    if not cleaned:
        raise ValueError(f"cannot make a student id from {name!r}")
    return cleaned


def unpack_zip(archive: Path, into: Path) -> Path:
    """Extract a student's .zip safely: no absolute paths, no `..`, no links, a size cap."""
    into.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
            raise ValueError(f"{archive.name}: unpacks to more than {MAX_UNZIPPED_BYTES // 2**20} MiB")
        for member in members:
            target = (into / member.filename).resolve()
            if not target.is_relative_to(into.resolve()) or (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise ValueError(f"{archive.name}: unsafe entry {member.filename!r}")
        zipped.extractall(into)
    return into


def find_notebook(folder: Path, stem: str) -> tuple[Path | None, str]:
    """The student's copy of notebook `stem` (the shallowest match), and a note when it is ambiguous or misnamed."""
    found = sorted((p for p in folder.rglob(f"{stem}.ipynb") if ".ipynb_checkpoints" not in p.parts),
                   key=lambda p: (len(p.parts), str(p)))
    if found:
        return found[0], (f"{len(found)} copies of {stem}.ipynb; graded {found[0].relative_to(folder)}"
                          if len(found) > 1 else "")
    others = sorted({p.name for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts})
    return None, (f"found {', '.join(others)} but no {stem}.ipynb" if others else "")


def _sha256(path: Path | None) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else "missing"


def grade_folder(submissions: Path, solutions: list[Path], out: Path,
                 progress: Callable[[str], None] = lambda line: None,
                 timeout: int = CELL_TIMEOUT_S, limits: Limits | None = None) -> BatchResult:
    """Grade every student's copy of every solution notebook; write gradebook, grades.csv and feedback/ under `out`."""
    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {submissions}")
    out.mkdir(parents=True, exist_ok=True)
    course = Course(solutions, root=out / "nbgrader", timeout=timeout, limits=limits)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    grades, reused = [], 0
    for entry in sorted(p for p in submissions.iterdir() if not p.name.startswith(".")):
        student = student_id(entry.stem if entry.suffix == ".zip" else entry.name)
        folder, problem = entry, ""
        if entry.suffix == ".zip":
            try:
                folder = unpack_zip(entry, out / "unpacked" / student)
            except (ValueError, zipfile.BadZipFile) as error:
                folder, problem = None, f"{entry.name} could not be unpacked: {error}"
        elif not entry.is_dir():
            progress(f"skipped {entry.name}: neither a folder nor a .zip")
            continue
        for stem in course.stems:
            notebook, note = find_notebook(folder, stem) if folder else (None, problem)
            key = _sha256(notebook)
            done = state.get(student, {}).get(stem)
            if done and done["sha256"] == key:
                grade = course._read(stem, student, done["note"])
                reused += 1
            else:
                grade = course.autograde(stem, student, notebook)
                note = "; ".join(filter(None, [note, grade.note]))
                grade = NotebookGrade(grade.notebook, grade.student, grade.cells, note)
                _write_feedback(course, grade, out / "feedback" / student)
                state.setdefault(student, {})[stem] = {"sha256": key, "note": grade.note}
                _atomic_write(state_path, json.dumps(state, indent=1))
            grades.append(grade)
            progress(f"{student} {stem}: {grade.score:g}/{grade.max_score:g}" + (f" ({grade.note})" if grade.note else ""))
    csv_path = _write_csv(grades, out / "grades.csv")
    return BatchResult(grades, csv_path, course.root / "gradebook.db", out / "feedback", reused)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_csv(grades: list[NotebookGrade], path: Path) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "notebook", "exercise", "score", "max_score", "note"])
        for grade in grades:
            for cell in grade.cells:
                writer.writerow([grade.student, grade.notebook, cell.name, f"{cell.score:g}", f"{cell.max_score:g}",
                                 grade.note])
    tmp.replace(path)
    return path


def _write_feedback(course: Course, grade: NotebookGrade, folder: Path) -> None:
    """nbgrader's HTML feedback (failed tests with their messages), with our note on top; a plain page otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{grade.notebook}.html"
    header = (f"<p><b>{html.escape(grade.notebook)}: {grade.score:g} / {grade.max_score:g}</b>"
              + (f" &mdash; {html.escape(grade.note)}" if grade.note else "") + "</p>")
    produced = course.root / "feedback" / grade.student / grade.notebook / f"{grade.notebook}.html"
    shutil.rmtree(produced.parent, ignore_errors=True)
    if course.autograded_notebook(grade.notebook, grade.student).exists() and course.feedback(grade.notebook, grade.student):
        body = produced.read_text(encoding="utf-8")
        body = body.replace("<body>", "<body>" + header, 1) if "<body>" in body else header + body
    else:
        rows = "".join(f"<li>{html.escape(c.name)}: {c.score:g} / {c.max_score:g}</li>" for c in grade.cells)
        body = f"<html><body>{header}<ul>{rows}</ul></body></html>"
    _atomic_write(target, body)
