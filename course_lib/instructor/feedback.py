"""Per-student feedback pages built only from the grade, so no test source and no student content can reach them.

nbgrader's own feedback renders the executed notebook: every test cell's source (hidden tests included) and the
student's outputs and markdown as live HTML. This page holds the grade's numbers, one-line failure messages and
the note, all escaped text.
"""

from __future__ import annotations

import html
from pathlib import Path

from course_lib.instructor.grading import NotebookGrade

MAX_MESSAGE = 300
STYLE = ("body{font-family:system-ui,sans-serif;max-width:48em;margin:2em auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
         ".failed{color:#a00}.passed{color:#060}")


def message(cell: object) -> str:
    """Why a graded cell failed, as one line (empty when it passed or no reason is known)."""
    if getattr(cell, "score", 0) >= getattr(cell, "max_score", 0):
        return ""
    lines = [line.strip() for line in str(getattr(cell, "message", "") or "").splitlines() if line.strip()]
    return lines[0][:MAX_MESSAGE] if lines else "failed"


def feedback_page(grade: NotebookGrade, name: str = "") -> str:
    """A complete HTML page: title, total, one row per graded cell, and the note."""
    e = html.escape
    who = f"{name} ({grade.student})" if name and name != grade.student else grade.student
    rows = "".join(
        f"<tr class=\"{'passed' if c.score >= c.max_score else 'failed'}\"><td>{e(c.name)}</td>"
        f"<td>{c.score:g} / {c.max_score:g}</td><td>{e(message(c))}</td></tr>\n" for c in grade.cells)
    note = f"<p><b>Note:</b> {e(grade.note)}</p>\n" if grade.note else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            # nothing on the page may load or run anything, whatever slipped into a note
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
            f"<title>{e(grade.notebook)}: feedback for {e(who)}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>{e(grade.notebook)}</h1>\n<p>Feedback for {e(who)}</p>\n"
            f"<p><b>Total: {grade.score:g} / {grade.max_score:g}</b></p>\n"
            "<table><thead><tr><th>exercise</th><th>score</th><th>why it failed</th></tr></thead><tbody>\n"
            f"{rows}</tbody></table>\n{note}</body></html>\n")


def write_feedback(grade: NotebookGrade, folder: Path, name: str = "") -> Path:
    """Write `folder`/<notebook>.html for one grade (replacing an earlier page whole)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{grade.notebook}.html"
    scratch = target.with_name(target.name + ".tmp")
    scratch.write_text(feedback_page(grade, name), encoding="utf-8")
    scratch.replace(target)
    return target
