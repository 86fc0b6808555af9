"""The README's exercise table, made from the solution notebooks' metadata and the mistakes the round trips grade.

`python -m tests.notebooks.exercise_table` prints it; `--write` puts it into README.md between its markers. A test
fails when the README's copy is stale, so the table never claims a mistake that is not graded.
"""

from __future__ import annotations

import sys

from tests.helpers import REPO, SOLUTIONS, exercises, points
from tests.notebooks.mistakes import all_mistakes, teaches

START, END = "<!-- exercise table: start -->", "<!-- exercise table: end -->"


def table() -> str:
    """Markdown: notebook, exercise, points, what it teaches, the wrong answers its round trips grade."""
    mistakes, taught = all_mistakes(), teaches()
    lines = ["| notebook | exercise | points | teaches | wrong answers graded (library = calls the answer instead) |",
             "| --- | --- | --- | --- | --- |"]
    total = count = 0
    for notebook in SOLUTIONS:
        full = points(notebook.stem)
        for exercise, cells in exercises(notebook.stem).items():
            worth = sum(full[c] for c in cells)
            total, count = total + worth, count + 1
            wrong = "; ".join(f"{m.kind}: {m.why}" for m in mistakes.values()
                              if (m.stem, m.exercise) == (notebook.stem, exercise))
            what = taught.get((notebook.stem, exercise), "")
            lines.append(f"| {notebook.stem[:2]} | `{exercise}` | {worth:g} | {_cell(what)} | {_cell(wrong)} |")
    lines.append(f"\n{count} exercises, {total:g} points.")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def block() -> str:
    return f"{START}\n{table()}\n{END}"


def readme_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    if START not in text or END not in text:
        return ""
    return text[text.index(START): text.index(END) + len(END)]


def write() -> None:
    path = REPO / "README.md"
    text = path.read_text(encoding="utf-8")
    old = readme_block()
    if not old:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    path.write_text(text.replace(old, block()), encoding="utf-8")


if __name__ == "__main__":
    write() if "--write" in sys.argv else print(table())
