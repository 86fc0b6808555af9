"""Hostile submissions: each gets a grade and a note, never a crashed grader, and honest students in the
same batch are graded correctly. They run against a two-exercise assignment without a model, so the
grader itself is what takes the time."""

import json
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib.instructor.batch import grade_folder
from course_lib.instructor.sandbox import Limits, landlock_abi
from tests.instructor.tiny_assignment import FULL, STEM, TINY, graded_cell, solution, wrong_is_even

LIMITS = Limits(memory_bytes=4 * 2**30)  # the memory bomb stops at 4 GiB, not the default 8
pytestmark = pytest.mark.grading


def _insert_after(nb, grade_id, source):
    index = nb.cells.index(graded_cell(nb, grade_id))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


def _write(folder: Path, student: str, nb_or_text, name=f"{STEM}.ipynb") -> Path:
    path = folder / student / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb_or_text, str):
        path.write_text(nb_or_text)
    else:
        for i, cell in enumerate(nb_or_text.cells):
            cell["id"] = f"c{i}"
        nbformat.write(nb_or_text, path)
    return path


def _hostile_batch(folder: Path, secret: Path, outside: Path) -> dict[str, tuple[dict, str]]:
    """Every hostile case: student -> (expected scores, a word the note must contain)."""
    cases = {}

    def case(student, nb, expected, note_word):
        _write(folder, student, nb)
        cases[student] = (expected, note_word)

    case("honest_first", solution(), FULL, "")
    case("infinite_loop", _insert_after(solution(), "test_add", "while True:\n    pass"),
         FULL, "time limit")
    case("swallows_interrupts", _insert_after(solution(), "test_add",
         "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except BaseException:\n        pass"),
         {"test_add": 1.0, "test_is_even": 0.0}, "time limit")
    case("sys_exit", _insert_after(solution(), "test_add", "import sys\nsys.exit(3)"), FULL, "sys.exit")
    case("kernel_dies", _insert_after(solution(), "test_add", "import os\nos._exit(0)"),
         {"test_add": 1.0, "test_is_even": 0.0}, "kernel died")
    case("memory_bomb", _insert_after(solution(), "test_add",
         "hog = []\nwhile True:\n    hog.append(bytearray(256 * 2**20))"), FULL, "memory")
    case("huge_output", _insert_after(solution(), "test_add", "for _ in range(200):\n    print('x' * 100_000)"),
         FULL, "output was cut")
    nb = wrong_is_even(solution())
    nb.cells.remove(graded_cell(nb, "test_is_even"))
    case("deleted_test_cell", nb, {"test_add": 1.0, "test_is_even": 0.0}, "missing and was restored")
    nb = wrong_is_even(solution())
    graded_cell(nb, "test_is_even").source = "print('all tests pass')"
    case("edited_test_cell", nb, {"test_add": 1.0, "test_is_even": 0.0}, "edited and was restored")
    nb = _insert_after(wrong_is_even(solution()), "is_even",
                       "get_ipython().showtraceback = lambda *a, **k: None\n"
                       "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})")
    case("hides_failures", nb, {"test_add": 1.0, "test_is_even": 0.0}, "check this grade by hand")
    nb = _insert_after(solution(), "test_add", "from course_lib.core import tasks\ntasks.FIELDS = ()\nimport course_lib.instructor\n"
                       "course_lib.instructor.grading = None")
    graded_cell(nb, "add").source = graded_cell(nb, "add").source.replace("return a + b", "return 3")
    case("patches_course_lib", nb, {"test_add": 0.0, "test_is_even": 2.0}, "")
    # Rewriting IPython's cell runner fakes a pass from inside the kernel: no grade can be trusted then,
    # so the test asserts the flag, and the expected scores are what the forgery achieves.
    nb = _insert_after(wrong_is_even(solution()), "is_even", (
        "ip = get_ipython()\nfor name in ('run_cell', 'run_cell_async'):\n    orig = getattr(ip, name)\n"
        "    def fake(raw_cell, *a, _orig=orig, **k):\n        return _orig('pass' if 'assert' in raw_cell else raw_cell, *a, **k)\n"
        "    setattr(ip, name, fake)"))
    case("rewrites_ipython", nb, FULL, "check this grade by hand")
    case("reads_hidden_tests", _insert_after(solution(), "test_add", f"print(open({str(secret)!r}).read())"),
         FULL, "outside its folder")
    case("writes_outside", _insert_after(solution(), "test_add",
         f"open({str(outside)!r}, 'w').write('pwned')"), FULL, "outside its folder")
    case("not_json", "{ this is not a notebook", {"test_add": 0.0, "test_is_even": 0.0}, "not a valid notebook")
    _write(folder, "misnamed", solution(), name="tiny_assignment (1).ipynb")
    cases["misnamed"] = ({"test_add": 0.0, "test_is_even": 0.0}, "no tiny_assignment.ipynb")
    (folder / "empty").mkdir()
    cases["empty"] = ({"test_add": 0.0, "test_is_even": 0.0}, "no tiny_assignment.ipynb")
    old = solution()  # an older release: other visible tests, no nbgrader checksums, an extra scratch cell
    graded_cell(old, "test_is_even").source = "assert is_even(2)"
    old.cells.append(nbformat.v4.new_code_cell("print('my notes')"))
    case("older_release", old, FULL, "edited and was restored")
    with zipfile.ZipFile(folder / "zipped.zip", "w") as zipped:
        zipped.writestr(f"export/{STEM}.ipynb", nbformat.writes(solution()))
    cases["zipped"] = (FULL, "")
    case("honest_last", solution(), FULL, "")
    return cases


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside-the-sandbox.txt"
    secret = root / "out" / "nbgrader" / "source" / STEM / f"{STEM}.ipynb"  # the instructor's copy
    cases = _hostile_batch(root / "submissions", secret, outside)
    result = grade_folder(root / "submissions", [TINY], root / "out", timeout=15, limits=LIMITS)
    return cases, result, root, outside


def test_every_hostile_submission_gets_its_grade_and_a_note(batch):
    cases, result, _, _ = batch
    graded = {g.student: g for g in result.grades}
    assert sorted(graded) == sorted(cases)
    for student, (expected, note_word) in cases.items():
        assert graded[student].by_cell() == expected, (student, graded[student].note)
        if note_word:
            assert note_word in graded[student].note, (student, graded[student].note)
        else:
            assert graded[student].note == "", (student, graded[student].note)


@pytest.mark.skipif(not landlock_abi(), reason="filesystem isolation needs Linux Landlock")
def test_the_sandbox_keeps_files_outside_unread_and_unwritten(batch):
    _, result, root, outside = batch
    assert not outside.exists()
    autograded = nbformat.read(root / "out" / "nbgrader" / "autograded" / "reads_hidden_tests" / STEM / f"{STEM}.ipynb",
                               as_version=4)
    printed = json.dumps([c.get("outputs", []) for c in autograded.cells])
    assert "PermissionError" in printed and "HIDDEN TESTS" not in printed


def test_outputs_csv_gradebook_and_feedback(batch):
    cases, result, _, _ = batch
    rows = result.csv.read_text().splitlines()
    assert rows[0] == "student,notebook,exercise,score,max_score,note"
    assert len(rows) == 1 + 2 * len(cases)
    assert result.gradebook.exists()
    feedback = (result.feedback / "edited_test_cell" / f"{STEM}.html").read_text()
    assert "AssertionError" in feedback and "edited and was restored" in feedback
    assert "not a valid notebook" in (result.feedback / "not_json" / f"{STEM}.html").read_text()


def test_regrading_reuses_finished_work_and_gives_the_same_grades(batch):
    cases, first, root, _ = batch
    again = grade_folder(root / "submissions", [TINY], root / "out", timeout=15, limits=LIMITS)
    assert again.reused == len(cases)
    assert [(g.student, g.by_cell()) for g in again.grades] == [(g.student, g.by_cell()) for g in first.grades]
