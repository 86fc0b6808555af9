"""The class report: one HTML page that shows a graded class at a glance, from what `course grade` wrote.

It reads GRADING_DIR/results.json (every grade with its cells' failure messages, status and seconds) and shows:
the score distribution per notebook and per exercise, the most frequent failure messages of each exercise, the
submissions a person should look at (and why), the grading time per notebook, and a table of students. The page
loads and runs nothing: the plots are inline SVG drawn by matplotlib from numbers and the course's own names, and
every text from a submission is escaped.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from course_lib.instructor.batch import RESULTS
from course_lib.instructor.feedback import message

STYLE = ("body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;width:100%;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:.25em .5em;"
         "text-align:left;vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}"
         "svg{max-width:100%;height:auto}.small{color:#555;font-size:.9em}")
TOP_MESSAGES = 3  # failure messages shown per exercise
MISSING = re.compile(r"^no \S+\.ipynb in the submission$")  # a notebook not handed in: counted, not flagged


@dataclass(frozen=True)
class Flag:
    """A submission a person should look at."""

    student: str
    name: str
    notebook: str
    score: float
    max_score: float
    reason: str


def read_results(grading_dir: Path) -> list[dict]:
    """The grades `course grade` kept in GRADING_DIR/results.json."""
    path = Path(grading_dir) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS} in {grading_dir}: run `course grade` with --output {grading_dir} first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("grades"), list):
        raise ValueError(f"{path} is not a results file of `course grade`")
    return data["grades"]


def flags(grades: list[dict]) -> list[Flag]:
    """Submissions that need a person: the grader failed, or the grade carries a note (restored or edited test
    cells, a dead kernel, a limit hit, a refused adapter, an unreadable file...); a missing notebook alone is not one."""
    found = []
    for g in grades:
        parts = [part for part in (g.get("note") or "").split("; ") if part and not MISSING.match(part)]
        if g.get("status") == "failed" and not parts:
            parts = ["the grader failed on this notebook"]
        if parts:
            found.append(Flag(g["student"], g.get("name", g["student"]), g["notebook"], g["score"], g["max_score"],
                              "; ".join(parts)))
    return found


def failure_messages(grades: list[dict]) -> dict[tuple[str, str], Counter]:
    """(notebook, exercise) -> how often each one-line failure message occurred (missing notebooks left out)."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for g in grades:
        if MISSING.match(g.get("note") or ""):
            continue
        for cell in g["cells"]:
            if cell["score"] < cell["max_score"]:
                counts[(g["notebook"], cell["name"])][_short(cell)] += 1
    return counts


def _short(cell: dict) -> str:
    return message(SimpleNamespace(**cell)) or "failed"


def _svg(figure) -> str:
    """A matplotlib figure as inline SVG markup (no XML prolog), then closed."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _plots(grades: list[dict], notebooks: list[str]) -> dict[str, str]:
    """The report's three figures as inline SVG: totals per notebook, pass rate per exercise, seconds per notebook."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_notebook = {nb: [g for g in grades if g["notebook"] == nb] for nb in notebooks}
    handed_in = {nb: [g for g in rows if not MISSING.match(g.get("note") or "")] for nb, rows in by_notebook.items()}
    figures = {}
    columns = min(3, len(notebooks))
    rows = -(-len(notebooks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.3 * rows), squeeze=False)
    for ax, nb in zip(axes.flat, notebooks):
        shares = [100 * g["score"] / g["max_score"] if g["max_score"] else 0.0 for g in handed_in[nb]]
        ax.hist(shares, bins=[0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100.01], color="#4a7bd0", edgecolor="white")
        ax.set_title(f"{nb} ({len(shares)} handed in)", fontsize=9)
        ax.set_xlabel("score, % of points", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(notebooks):]:
        ax.axis("off")
    figure.tight_layout()
    figures["totals"] = _svg(figure)

    labels, rates = [], []
    for nb in notebooks:
        cells: dict[str, list[float]] = defaultdict(list)
        for g in handed_in[nb]:
            for cell in g["cells"]:
                cells[cell["name"]].append(cell["score"] >= cell["max_score"])
        for name, passed in cells.items():
            labels.append(f"{nb} / {name}")
            rates.append(100 * sum(passed) / len(passed))
    if labels:
        figure, ax = plt.subplots(figsize=(8, 0.22 * len(labels) + 0.8))
        ax.barh(range(len(labels)), rates, color=["#c0504d" if r < 50 else "#4a7bd0" for r in rates])
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("students with full points on the exercise, % of those who handed the notebook in", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        figures["exercises"] = _svg(figure)

    timed = {nb: [g["seconds"] for g in handed_in[nb] if g.get("seconds")] for nb in notebooks}
    timed = {nb: s for nb, s in timed.items() if s}
    if timed:
        figure, ax = plt.subplots(figsize=(8, 0.35 * len(timed) + 0.9))
        ax.boxplot(list(timed.values()), vert=False, widths=0.6)
        ax.set_yticks(range(1, len(timed) + 1), list(timed), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds to grade one submission (this run; earlier runs' where reused)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        figures["seconds"] = _svg(figure)
    return figures


def report_page(grades: list[dict], title: str = "Class report") -> str:
    """The whole report as one HTML page."""
    e = html.escape
    notebooks = list(dict.fromkeys(g["notebook"] for g in grades))
    students = list(dict.fromkeys(g["student"] for g in grades))
    names = {g["student"]: g.get("name", g["student"]) for g in grades}
    figures = _plots(grades, notebooks) if grades else {}
    part = [f"<h1>{e(title)}</h1>\n<p>{len(students)} students, {len(notebooks)} notebook(s), {len(grades)} graded "
            "notebooks.</p>\n"]

    part.append("<h2>Notebooks</h2>\n<table><thead><tr><th>notebook</th><th>handed in</th><th>mean</th>"
                "<th>median</th><th>full marks</th><th>flagged</th><th>grading seconds (median, max)</th></tr>"
                "</thead><tbody>\n")
    flagged = flags(grades)
    for nb in notebooks:
        rows = [g for g in grades if g["notebook"] == nb and not MISSING.match(g.get("note") or "")]
        top = max((g["max_score"] for g in grades if g["notebook"] == nb), default=0)
        totals = sorted(g["score"] for g in rows)
        seconds = sorted(g["seconds"] for g in rows if g.get("seconds"))
        mean = f"{sum(totals) / len(totals):.1f} / {top:g}" if totals else ""
        median = f"{totals[len(totals) // 2]:g}" if totals else ""
        timing = f"{seconds[len(seconds) // 2]:.0f}, {seconds[-1]:.0f}" if seconds else ""
        part.append(f"<tr><td>{e(nb)}</td><td class=\"num\">{len(rows)} / {len(students)}</td><td class=\"num\">"
                    f"{mean}</td><td class=\"num\">{median}</td><td class=\"num\">"
                    f"{sum(g['score'] >= g['max_score'] for g in rows)}</td><td class=\"num\">"
                    f"{sum(f.notebook == nb for f in flagged)}</td><td class=\"num\">{timing}</td></tr>\n")
    part.append("</tbody></table>\n")
    if "totals" in figures:
        part.append(f"<h2>Score distribution per notebook</h2>\n{figures['totals']}\n")
    if "exercises" in figures:
        part.append(f"<h2>Exercises</h2>\n<p class=\"small\">Red: fewer than half got full points.</p>\n"
                    f"{figures['exercises']}\n")

    part.append("<h2>Most frequent failure messages</h2>\n<table><thead><tr><th>notebook</th><th>exercise</th>"
                "<th>failed</th><th>messages (count)</th></tr></thead><tbody>\n")
    for (nb, exercise), counts in sorted(failure_messages(grades).items(), key=lambda kv: -sum(kv[1].values())):
        shown = "<br>".join(f"{count}× {e(text)}" for text, count in counts.most_common(TOP_MESSAGES))
        more = len(counts) - TOP_MESSAGES
        shown += f"<br><span class=\"small\">and {more} other message(s)</span>" if more > 0 else ""
        part.append(f"<tr><td>{e(nb)}</td><td>{e(exercise)}</td><td class=\"num\">{sum(counts.values())}</td>"
                    f"<td>{shown}</td></tr>\n")
    part.append("</tbody></table>\n")

    part.append(f"<h2>Flagged for a look by hand ({len(flagged)})</h2>\n<table><thead><tr><th>student</th>"
                "<th>notebook</th><th>score</th><th>why</th></tr></thead><tbody>\n")
    for f in flagged:
        who = f.student if f.name == f.student else f"{f.name} ({f.student})"
        part.append(f"<tr><td>{e(who)}</td><td>{e(f.notebook)}</td><td class=\"num\">{f.score:g} / {f.max_score:g}"
                    f"</td><td>{e(f.reason)}</td></tr>\n")
    part.append("</tbody></table>\n")
    if "seconds" in figures:
        part.append(f"<h2>Grading time</h2>\n{figures['seconds']}\n")

    part.append("<h2>Students</h2>\n<table><thead><tr><th>student</th>" + "".join(f"<th>{e(nb)}</th>"
                for nb in notebooks) + "<th>total</th></tr></thead><tbody>\n")
    cell = {(g["student"], g["notebook"]): g for g in grades}
    top_total = sum(max((g["max_score"] for g in grades if g["notebook"] == nb), default=0) for nb in notebooks)
    for student in sorted(students, key=lambda s: names[s].casefold()):
        who = student if names[student] == student else f"{names[student]} ({student})"
        scores = [cell.get((student, nb)) for nb in notebooks]
        total = sum(g["score"] for g in scores if g)
        part.append(f"<tr><td>{e(who)}</td>" + "".join(
            f"<td class=\"num\">{'' if g is None else format(g['score'], 'g')}</td>" for g in scores)
            + f"<td class=\"num\">{total:g} / {top_total:g}</td></tr>\n")
    part.append("</tbody></table>\n")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n{''.join(part)}</body></html>\n")


def write_report(grading_dir: Path, output: Path | None = None) -> Path:
    """Write report.html (into `output`, default the grading folder); its path."""
    grades = read_results(grading_dir)
    output = Path(output or grading_dir)
    output.mkdir(parents=True, exist_ok=True)
    target = output / "report.html"
    target.write_text(report_page(grades), encoding="utf-8")
    return target
