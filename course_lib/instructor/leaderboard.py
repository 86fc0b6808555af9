"""The capstone leaderboard: students ranked by their adapter's hidden-test score, with the baseline and reference.

Built from what `course grade` kept under GRADING_DIR/capstone/ (one JSON per student, baseline.json and, when the
instructor gave one, reference.json): an HTML page that loads and runs nothing, and a CSV a spreadsheet reads.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path

from course_lib.capstone import rules
from course_lib.instructor.batch import _text  # the gradebook CSV's guard against spreadsheet formulas

COLUMNS = ["rank", "entry", "kind", "score", "intent_f1", "priority_f1", "points", "max_points", "note"]
STYLE = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
         "td.num{text-align:right;font-variant-numeric:tabular-nums}tr.fixed{background:#eef3fb;font-style:italic}"
         ".bar{display:inline-block;height:.7em;background:#4a7bd0;vertical-align:middle;margin-right:.4em}")


@dataclass(frozen=True)
class Row:
    """One line of the leaderboard: a student, or the baseline or reference that frame them."""

    entry: str
    kind: str  # student, baseline, reference
    score: float | None
    intent_f1: float | None
    priority_f1: float | None
    points: float | None
    max_points: float | None
    note: str


def read_rows(grading_dir: Path, anonymize: bool = False) -> list[Row]:
    """Every scored entry, best first; unscored students last (by name); baseline and reference in their places."""
    folder = Path(grading_dir) / "capstone"
    if not (folder / "baseline.json").is_file():
        raise FileNotFoundError(f"no capstone results in {folder}: run `course grade` on the capstone notebook first")
    rows = []
    for role in ("baseline", "reference"):
        path = folder / f"{role}.json"
        if path.is_file():
            kept = json.loads(path.read_text(encoding="utf-8"))
            what = "the base model prompted, no adapter" if role == "baseline" else "the instructor's adapter"
            rows.append(Row(role, role, kept["score"], kept.get("intent_f1"), kept.get("priority_f1"), None, None,
                            what))
    for path in sorted((folder / "students").glob("*.json")):
        kept = json.loads(path.read_text(encoding="utf-8"))
        metrics = kept.get("metrics") or {}
        entry = _anonymous(kept["student"]) if anonymize else (kept.get("name") or kept["student"])
        rows.append(Row(entry, "student", kept.get("score"), metrics.get("intent_f1"), metrics.get("priority_f1"),
                        kept.get("points"), kept.get("max_points"), "" if anonymize else kept.get("note", "")))
    return sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.kind != "student", r.entry))


def _anonymous(student: str) -> str:
    """A stable pseudonym: the same student gets the same one in every run, and it does not reveal the name."""
    return "student-" + hashlib.sha256(student.encode()).hexdigest()[:8]


def _ranks(rows: list[Row]) -> list[str]:
    """Competition ranks for scored students (ties share one); baseline, reference and unscored rows get none."""
    ranks, rank, previous, seen = [], 0, None, 0
    for row in rows:
        if row.kind != "student" or row.score is None:
            ranks.append("")
            continue
        seen += 1
        if row.score != previous:
            rank, previous = seen, row.score
        ranks.append(str(rank))
    return ranks


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_csv(rows: list[Row], path: Path) -> Path:
    """The leaderboard as CSV, in page order."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for rank, r in zip(_ranks(rows), rows):
            writer.writerow([rank, _text(r.entry), r.kind, _number(r.score), _number(r.intent_f1),
                             _number(r.priority_f1), "" if r.points is None else f"{r.points:g}",
                             "" if r.max_points is None else f"{r.max_points:g}", _text(r.note)])
    return Path(path)


def write_html(rows: list[Row], path: Path, title: str = "Capstone leaderboard") -> Path:
    """The leaderboard as one self-contained HTML page with a score bar per row."""
    e = html.escape
    body = []
    for rank, r in zip(_ranks(rows), rows):
        width = 0 if r.score is None else max(0.0, min(1.0, r.score)) * 12
        score = "not scored" if r.score is None else f"<span class=\"bar\" style=\"width:{width:.2f}em\"></span>" \
                                                      f"{r.score:.3f}"
        points = "" if r.points is None else f"{r.points:g} / {r.max_points:g}"
        body.append(f"<tr class=\"{'fixed' if r.kind != 'student' else ''}\"><td class=\"num\">{rank}</td>"
                    f"<td>{e(r.entry)}</td><td>{score}</td><td class=\"num\">{_number(r.intent_f1)}</td>"
                    f"<td class=\"num\">{_number(r.priority_f1)}</td><td class=\"num\">{points}</td>"
                    f"<td>{e(r.note)}</td></tr>\n")
    scored = [r for r in rows if r.kind == "student" and r.score is not None]
    students = sum(r.kind == "student" for r in rows)
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n<h1>{e(title)}</h1>\n"
            f"<p>{students} submissions, {len(scored)} scored on the hidden test split. Score: the mean of the "
            f"intent and priority macro-F1. Half the points for beating the prompting baseline by "
            f"{rules.BASELINE_MARGIN:g}, half for reaching {rules.TARGET_SCORE:g}.</p>\n"
            "<table><thead><tr><th>rank</th><th>entry</th><th>score</th><th>intent F1</th><th>priority F1</th>"
            f"<th>points</th><th>note</th></tr></thead><tbody>\n{''.join(body)}</tbody></table>\n</body></html>\n")
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def write_leaderboard(grading_dir: Path, output: Path | None = None, anonymize: bool = False) -> tuple[Path, Path]:
    """Write leaderboard.html and leaderboard.csv (into `output`, default the grading folder); their paths."""
    rows = read_rows(grading_dir, anonymize)
    output = Path(output or grading_dir)
    output.mkdir(parents=True, exist_ok=True)
    return write_html(rows, output / "leaderboard.html"), write_csv(rows, output / "leaderboard.csv")
