"""Gradebook imports for Canvas and Moodle: one column of points per notebook, one row per student.

- Canvas ("Import" in the Gradebook): the columns `Student`, `ID`, `SIS User ID`, `SIS Login ID`, `Section`, then
  one per assignment, and a second row `Points Possible` with each assignment's points. Canvas finds the student
  by `ID` (or the SIS ids), so give the roster: the CSV that Canvas's Gradebook "Export" writes.
- Moodle (Grade administration > Import > CSV file): a header row and one row per student; on import the
  instructor maps a column to the user ("Identify user by", here `ID number` or `Email address`) and each
  notebook column to a grade item. Give the roster (Moodle's Export > Plain text file) to carry its ids and emails.

Without a roster the files name each student by the id and name `course grade` gave them; with one, a student is
matched by an id column equal to theirs, else by the full name (ignoring case and accents), and students the roster
lacks are listed (and left out, since the LMS could not place them).
"""

from __future__ import annotations

import csv
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from course_lib.instructor.batch import _text  # the gradebook CSV's guard against spreadsheet formulas

CANVAS_IDENTITY = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_IDENTITY = ["First name", "Last name", "ID number", "Email address"]
ID_COLUMNS = ("ID", "SIS User ID", "SIS Login ID", "ID number", "Username", "Email address")


@dataclass(frozen=True)
class Export:
    """What an LMS export wrote and who it could not place."""

    path: Path
    rows: int
    unmatched: list[str]  # student ids the roster lacks


def totals(grades: list[dict]) -> tuple[list[str], dict[str, float], dict[str, str], dict[tuple[str, str], float]]:
    """Notebooks in order, their points, student names, and each (student, notebook)'s points."""
    notebooks = list(dict.fromkeys(g["notebook"] for g in grades))
    points = {nb: max(g["max_score"] for g in grades if g["notebook"] == nb) for nb in notebooks}
    names = {g["student"]: g.get("name", g["student"]) for g in grades}
    scores = {(g["student"], g["notebook"]): g["score"] for g in grades}
    return notebooks, points, names, scores


def _fold(text: str) -> str:
    """A name compared ignoring case, accents and spacing."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(plain.casefold().replace(",", " ").split())


def read_roster(path: Path) -> list[dict[str, str]]:
    """The rows of an LMS gradebook export (Canvas's or Moodle's CSV), BOM and all."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not any(column in rows[0] for column in ID_COLUMNS + ("Student", "First name")):
        raise ValueError(f"{path}: not a Canvas or Moodle gradebook export (no Student, ID, ID number or Email "
                         "address column)")
    return [row for row in rows if (row.get("Student") or "").strip() not in ("Points Possible", "Student, Test")]


def _match(student: str, name: str, roster: list[dict[str, str]]) -> dict[str, str] | None:
    """The roster row of a student: an id column equal to their id, else one whose full name is theirs."""
    for row in roster:
        if any((row.get(column) or "").strip() == student for column in ID_COLUMNS):
            return row
    wanted = _fold(name)
    for row in roster:
        full = row.get("Student") or f"{row.get('First name', '')} {row.get('Last name', '')}"
        # Canvas writes "Last, First": either order matches
        if wanted and (_fold(full) == wanted or sorted(_fold(full).split()) == sorted(wanted.split())):
            return row
    return None


def _write(grades: list[dict], path: Path, identity: list[str], own: Callable[[str, str], list[str]],
           roster: list[dict[str, str]] | None, points_row: bool) -> Export:
    """One row per student: identity columns (from the roster when given, else `own(student, name)`), then points."""
    notebooks, points, names, scores = totals(grades)
    unmatched, count = [], 0
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(identity + notebooks)
        if points_row:
            writer.writerow(["Points Possible"] + [""] * (len(identity) - 1) + [f"{points[nb]:g}" for nb in notebooks])
        for student, name in names.items():
            values = own(student, name)
            if roster is not None:
                row = _match(student, name, roster)
                if row is None:
                    unmatched.append(student)
                    continue
                values = [row.get(column, "") for column in identity]
            writer.writerow([_text(value) for value in values]
                            + [f"{scores[(student, nb)]:g}" if (student, nb) in scores else "" for nb in notebooks])
            count += 1
    return Export(Path(path), count, unmatched)


def write_canvas(grades: list[dict], path: Path, roster: list[dict[str, str]] | None = None) -> Export:
    """A Canvas gradebook import: identity columns, one column per notebook, the `Points Possible` row."""
    return _write(grades, path, CANVAS_IDENTITY, lambda student, name: [name, "", student, "", ""], roster, True)


def write_moodle(grades: list[dict], path: Path, roster: list[dict[str, str]] | None = None) -> Export:
    """A Moodle grade import: name, ID number and email columns, one column per notebook."""
    def own(student: str, name: str) -> list[str]:
        first, _, last = name.partition(" ")
        return [first, last, student, ""]

    return _write(grades, path, MOODLE_IDENTITY, own, roster, False)
