"""A whole class in one export, every shape at once, and a grader that raises or is killed: the batch finishes,
every entry gets rows, honest students get full marks, and nothing outside the submissions leaks into the output.
They grade the tiny two-exercise assignment for real (no model), so each graded notebook costs a kernel run."""

import csv
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib.instructor.batch import grade_folder
from course_lib.instructor.sandbox import Limits
from tests.helpers import REPO
from tests.instructor.tiny_assignment import FULL, STEM, TINY, solution, wrong_is_even

LIMITS = Limits(memory_bytes=4 * 2**30)
ZERO = {"test_add": 0.0, "test_is_even": 0.0}
HOSTILE_HTML = "<script>alert(1)</script><img src=x onerror=alert(2)>"
# one worker grades the class once: under xdist a module fixture is built again on every worker that runs the module
pytestmark = [pytest.mark.grading, pytest.mark.xdist_group("graded_class")]


def _write(path: Path, nb) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i}"
    nbformat.write(nb, path)
    return path


def _source_with_markup():
    """The instructor's own notebook (hidden tests inside) handed in, with markup in its markdown and outputs."""
    nb = nbformat.read(TINY, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(f"My notes {HOSTILE_HTML}"))
    shown = nbformat.v4.new_code_cell(f"from IPython.display import HTML, display\ndisplay(HTML({HOSTILE_HTML!r}))")
    shown.outputs = [nbformat.v4.new_output("display_data", data={"text/html": HOSTILE_HTML})]
    nb.cells.append(shown)
    return nb


def _class(subs: Path) -> dict[str, tuple[dict, str]]:
    """Every shape of entry: the name the CSV shows -> (expected scores, a phrase its note must contain)."""
    _write(subs / "!honest_first" / f"{STEM}.ipynb", solution())  # entries are taken in name order: "!" first
    _write(subs / "李明" / f"{STEM}.ipynb", solution())
    _write(subs / "José Díaz" / f"{STEM}.ipynb", _source_with_markup())
    _write(subs / "Jose_Diaz" / f"{STEM}.ipynb", wrong_is_even(solution()))
    with zipfile.ZipFile(subs / "Upper.ZIP", "w") as zipped:
        zipped.writestr(f"export/{STEM}.ipynb", nbformat.writes(solution()))
    _write(subs / f"{STEM} - Bare Student.ipynb", solution())
    _write(subs / ".hidden_student" / f"{STEM}.ipynb", solution())
    with zipfile.ZipFile(subs / "dirzip.zip", "w") as zipped:
        zipped.writestr(f"{STEM}.ipynb/", "")
        zipped.writestr(f"{STEM}.ipynb/readme.txt", "a folder named like the notebook")
        zipped.writestr(f"work/{STEM}.ipynb", nbformat.writes(solution()))
    (subs / "links" / "deeper").mkdir(parents=True)
    (subs / "links" / f"{STEM}.ipynb").symlink_to("/etc/passwd")
    (subs / "links" / "deeper" / f"{STEM}.ipynb").symlink_to("/dev/zero")
    (subs / "links" / "etc").symlink_to("/etc")
    (subs / "broken.zip").write_bytes(b"PK\x03\x04 not a zip after all")
    (subs / "=HYPERLINK(1)").mkdir()
    (subs / "notes.pdf").write_bytes(b"%PDF-1.4")
    (subs / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (subs / "__MACOSX").mkdir()
    _write(subs / "학생 honest_last" / f"{STEM}.ipynb", solution())  # Hangul: after every other name here
    return {
        "!honest_first": (FULL, ""), "李明": (FULL, "no Latin letters"),
        "José Díaz": (FULL, "name collision"), "Jose_Diaz": ({"test_add": 1.0, "test_is_even": 0.0}, "name collision"),
        "Upper": (FULL, ""), "Bare Student": (FULL, "not in a folder"), ".hidden_student": (FULL, ""),
        "dirzip": (FULL, f"ignored: {STEM}.ipynb is a folder"), "links": (ZERO, "symbolic link"),
        "broken": (ZERO, "could not be unpacked"), "=HYPERLINK(1)": (ZERO, f"no {STEM}.ipynb"),
        "notes.pdf": (ZERO, "not a submission"), "학생 honest_last": (FULL, ""),
    }


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    cases = _class(root / "subs")
    lines: list[str] = []
    result = grade_folder(root / "subs", [TINY], root / "out", progress=lines.append, timeout=15, limits=LIMITS)
    return cases, result, lines, root


def test_every_entry_of_the_class_gets_its_rows_and_the_honest_get_full_marks(graded_class):
    cases, result, lines, _ = graded_class
    with result.csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["student", "name", "notebook", "exercise", "score", "max_score", "note"]
    shown = {row["name"].removeprefix("'") for row in rows}
    assert shown == set(cases) and len(rows) == 2 * len(cases)
    assert len({row["student"] for row in rows}) == len(cases)  # no student's grade replaced another's
    assert "'=HYPERLINK(1)" in {row["name"] for row in rows}  # a spreadsheet shows it, does not run it
    by_name = {result.names[g.student]: g for g in result.grades}
    for name, (expected, phrase) in cases.items():
        grade = by_name[name]
        assert grade.by_cell() == expected, (name, grade.note)
        assert phrase in grade.note, (name, grade.note)
    assert [result.names[g.student] for g in (result.grades[0], result.grades[-1])] == ["!honest_first", "학생 honest_last"]
    assert by_name["!honest_first"].note == ""
    assert any(".DS_Store" in line and "__MACOSX" in line for line in lines)
    assert any("name collision" in line for line in lines)


def test_nothing_outside_the_submissions_reaches_the_csv_or_the_feedback(graded_class):
    _, result, _, _ = graded_class
    secret = Path("/etc/passwd").read_text().splitlines()[0]
    outputs = [result.csv, *result.feedback.rglob("*.html")]
    assert len(outputs) == 1 + 13
    for path in outputs:
        text = path.read_text(encoding="utf-8")
        assert secret not in text and "root:" not in text, path


def test_feedback_holds_no_test_source_and_no_student_markup(graded_class):
    _, result, _, root = graded_class
    student = next(s for s, name in result.names.items() if name == "José Díaz")
    autograded = (root / "out" / "nbgrader" / "autograded" / student / STEM / f"{STEM}.ipynb").read_text()
    assert "BEGIN HIDDEN" in autograded and "onerror" in autograded  # what nbgrader's own feedback would show
    for page in result.feedback.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "BEGIN HIDDEN" not in text and "assert add(-5, 5)" not in text and "report(" not in text, page
        assert "<script" not in text and "onerror" not in text and "<img" not in text, page
    page = (result.feedback / student / f"{STEM}.html").read_text(encoding="utf-8")
    assert "José Díaz" in page and "Total: 3 / 3" in page


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())["students"]
    except (OSError, ValueError, KeyError):
        return {}


def test_a_grader_that_raises_or_is_killed_costs_only_that_notebook(tmp_path):
    subs, out = tmp_path / "subs", tmp_path / "out"
    for student in ("a_first", "b_raises", "c_killed", "d_last"):
        _write(subs / student / f"{STEM}.ipynb", solution())
    # a file where Course.autograde makes b_raises's folder: a real OSError from inside the grader
    blocker = out / "nbgrader" / "submitted" / "b_raises"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    run = (f"from course_lib.instructor.batch import grade_folder\nfrom course_lib.instructor.sandbox import Limits\n"
           f"grade_folder({str(subs)!r}, [{str(TINY)!r}], {str(out)!r}, timeout=15, limits=Limits(memory_bytes=2**32))")
    grader = subprocess.Popen([sys.executable, "-c", run], cwd=REPO)
    deadline = time.monotonic() + 300
    while _state(out).get("c_killed", {}).get(STEM, {}).get("status") != "running":
        assert grader.poll() is None and time.monotonic() < deadline, "the grader never reached c_killed"
        time.sleep(0.05)
    grader.kill()  # SIGKILL: no handler runs, as when the machine runs out of memory
    grader.wait()
    with (out / "grades.csv").open(encoding="utf-8") as handle:
        left = {(row["student"], row["exercise"]): (row["score"], row["note"]) for row in csv.DictReader(handle)}
    assert {s for s, _ in left} == {"a_first", "b_raises"}  # the killed run left a usable CSV
    assert left[("a_first", "test_is_even")] == ("2", "")
    score, note = left[("b_raises", "test_add")]
    assert score == "0" and "the grader failed on this notebook: " in note and "Error: " in note, note
    assert "see the above traceback" not in note
    blocker.unlink()  # a failed notebook stays failed on a rerun: it is not run again
    (out / "feedback" / "d_last").write_text("in the way of d_last's feedback page")
    again = grade_folder(subs, [TINY], out, timeout=15, limits=LIMITS)
    graded = {g.student: g for g in again.grades}
    assert graded["a_first"].by_cell() == FULL and graded["d_last"].by_cell() == FULL
    assert "feedback could not be written: FileExistsError" in graded["d_last"].note  # the grade stands
    assert graded["b_raises"].by_cell() == ZERO and "the grader failed" in graded["b_raises"].note
    assert graded["c_killed"].by_cell() == ZERO and "stopped while grading" in graded["c_killed"].note
    assert again.reused == 3 and _state(out)["c_killed"][STEM]["status"] == "failed"
    assert "b_raises" in (out / "errors.log").read_text() and os.path.exists(again.feedback / "c_killed" / f"{STEM}.html")
