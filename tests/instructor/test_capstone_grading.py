"""The capstone graded for real: notebook 08 and the adapter handed in beside it, through `grade_folder`, the
sandbox and the hidden split. One class of three: the reference (notebook and the adapter notebook 08's recipe
trains, kept in fixtures/), an adapter trained for one step handed in alone, and a hostile notebook that hunts for the hidden split with a pickle
"adapter". Then the leaderboard from what the grader kept."""

import csv
import json
import os
import shutil
import stat

import nbformat
import pytest

from course_lib.capstone import rules, support
from course_lib.capstone.adapter_check import check_adapter
from course_lib.instructor import capstone
from course_lib.instructor.batch import grade_folder
from course_lib.instructor.grading import Course
from course_lib.instructor.jobs import JobError, run_job
from course_lib.instructor.leaderboard import write_leaderboard
from course_lib.instructor.sandbox import Limits
from tests.helpers import REPO

STEM = "08_capstone"
FIXTURE = REPO / "tests" / "instructor" / "fixtures" / "capstone_reference_adapter"
SOLUTION = REPO / "solutions" / f"{STEM}.ipynb"
STUDENT = REPO / "notebooks" / f"{STEM}.ipynb"
LIMITS = Limits(memory_bytes=6 * 2**30)
SECRET = "capstone-test-secret-0123456789"
pytestmark = [pytest.mark.grading, pytest.mark.xdist_group("capstone_class")]

# What the hostile notebook tries, in a cell of its own after the setup: every place the hidden split or the
# secret could be, and the grader's own folders. It prints what it finds, so the test can look for leaks.
SNOOP = """
import glob, os, pathlib
found = []
for pattern in [{secret!r}, {grading!r} + "/**", "/tmp/cjob-*/**", "/tmp/**/job.json", os.path.expanduser("~/.config/course/*"),
                "/root/.config/course/*"]:
    for path in glob.glob(pattern, recursive=True):
        try:
            found.append((path, pathlib.Path(path).read_text()[:200]))
        except Exception as error:
            found.append((path, type(error).__name__))
try:
    found.append(("secret", open({secret!r}).read()))
except Exception as error:
    found.append(("secret", type(error).__name__))
print("SNOOPED", found)
"""


def _train_adapter(folder, steps):
    """A real LoRA adapter on the default model, trained `steps` steps on a slice of the public training split."""
    from course_lib.core.models import load_causal_lm
    from course_lib.training.finetune import LoraSettings, finetune_lora

    model, tokenizer = load_causal_lm()
    train = support.public_splits(n_train=64, n_val=0)["train"]
    result = finetune_lora(model, tokenizer, [support.to_messages(t) for t in train],
                           LoraSettings(steps=steps, batch_size=4, warmup_steps=0, r=8, max_length=128), progress=False)
    result.model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def graded(tmp_path_factory, course):
    base = tmp_path_factory.mktemp("capstone")
    secret_file = base / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    out, subs = base / "grading", base / "export"
    reference = FIXTURE  # notebook 08's recipe, trained once (make_capstone_fixture.py): minutes CI cannot spend
    ref = subs / "reference_student"
    ref.mkdir(parents=True)
    shutil.copy(SOLUTION, ref / f"{STEM}.ipynb")
    shutil.copytree(reference, ref / rules.ADAPTER_FOLDER)
    one = subs / "one_step"
    one.mkdir()
    _train_adapter(one / rules.ADAPTER_FOLDER, steps=1)
    hostile = subs / "hostile"
    (hostile / rules.ADAPTER_FOLDER).mkdir(parents=True)
    notebook = nbformat.read(STUDENT, as_version=4)
    setup = next(i for i, c in enumerate(notebook.cells) if "course_lib.start" in "".join(c.source))
    notebook.cells.insert(setup + 1, nbformat.v4.new_code_cell(SNOOP.format(secret=str(secret_file), grading=str(out))))
    for i, cell in enumerate(notebook.cells):
        cell["id"] = f"h{i}"
    nbformat.write(notebook, hostile / f"{STEM}.ipynb")
    shutil.copy(reference / "adapter_config.json", hostile / rules.ADAPTER_FOLDER)
    (hostile / rules.ADAPTER_FOLDER / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    # the reference solution's reports, as the grading round trips of this run have them (one run of it, not two)
    Course([SOLUTION], root=out / "nbgrader", limits=LIMITS).seed_reference(STEM, course.reference_reports(STEM))
    result = grade_folder(subs, [SOLUTION], out, limits=LIMITS, capstone_secret=secret_file,
                          capstone_reference=reference)
    return result, out, reference


def _cells(result, student):
    [grade] = [g for g in result.grades if g.student == student]
    return grade, {c.name: c.score for c in grade.cells}


def test_the_reference_gets_full_marks_with_its_adapter_scored_on_the_hidden_split(graded):
    result, out, _ = graded
    grade, cells = _cells(result, "reference_student")
    assert grade.score == grade.max_score == 10, (cells, grade.note)
    kept = json.loads((out / "capstone" / "students" / "reference_student.json").read_text())
    baseline = json.loads((out / "capstone" / "baseline.json").read_text())
    assert kept["score"] >= rules.TARGET_SCORE and kept["score"] >= baseline["score"] + rules.BASELINE_MARGIN
    assert kept["metrics"]["n"] == capstone.HIDDEN_ROWS
    assert "hidden-test score" in grade.note and "6/6" in grade.note
    # the same bytes as the instructor's reference adapter: its score on this split is reused, not measured again
    reference = json.loads((out / "capstone" / "reference.json").read_text())
    assert kept["seconds"] == 0 and kept["score"] == reference["score"] and capstone.REUSED in grade.note


def test_an_adapter_trained_for_one_step_scores_below_the_threshold(graded):
    result, out, _ = graded
    grade, cells = _cells(result, "one_step")
    assert cells[capstone.ARTIFACT_CELL] == 0 and grade.score == 0, (cells, grade.note)
    kept = json.loads((out / "capstone" / "students" / "one_step.json").read_text())
    assert kept["score"] is not None and kept["score"] < rules.TARGET_SCORE and kept["seconds"] > 0
    assert "no 08_capstone.ipynb" in grade.note


def test_a_pickle_adapter_is_refused_and_the_notebook_is_graded_normally(graded):
    result, _, _ = graded
    grade, cells = _cells(result, "hostile")
    assert cells[capstone.ARTIFACT_CELL] == 0
    assert "adapter refused" in grade.note and "pickle" in grade.note, grade.note
    # the released notebook is blank: its exercises score zero, and the grader still ran it to the end
    assert grade.score == 0 and "could not run" not in grade.note


def test_a_notebook_hunting_for_the_hidden_split_finds_nothing(graded):
    result, out, _ = graded
    executed = (out / "nbgrader" / "autograded" / "hostile" / STEM / f"{STEM}.ipynb").read_text()
    assert "SNOOPED" in executed  # the cell ran
    tickets = support.hidden_test(SECRET, n=capstone.HIDDEN_ROWS)
    assert SECRET not in executed
    assert not any(t.text in executed for t in tickets)
    assert "FileNotFoundError" in executed or "PermissionError" in executed


def test_the_leaderboard_ranks_the_class_between_baseline_and_reference(graded):
    _, out, _ = graded
    # kept where a CI run's artifacts are collected, for a person to open
    page, table = write_leaderboard(out, REPO / "build" / "test-artifacts" / "capstone")
    with table.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kinds = [r["kind"] for r in rows]
    assert set(kinds) == {"student", "baseline", "reference"} and kinds.count("student") == 3
    scored = [r for r in rows if r["score"]]
    assert [float(r["score"]) for r in scored] == sorted((float(r["score"]) for r in scored), reverse=True)
    assert rows[-1]["entry"] == "hostile" and rows[-1]["score"] == ""  # refused: not scored, listed last
    assert "Capstone leaderboard" in page.read_text(encoding="utf-8")


def test_a_second_run_reuses_every_score_without_running_the_evaluation_again(graded, monkeypatch):
    _, out, reference = graded
    grader = capstone.CapstoneGrader(out, SECRET, reference, LIMITS)
    monkeypatch.setattr(capstone, "run_job", lambda *a, **k: pytest.fail("evaluated again"))
    again = grader.grade("one_step", "one_step", out / "intake" / "one_step" / f"{STEM}.{rules.ADAPTER_FOLDER}", 6.0)
    assert again.score is not None and again.points == 0


def test_another_student_handing_in_the_same_adapter_bytes_gets_the_same_score_unevaluated(graded, monkeypatch,
                                                                                            tmp_path):
    _, out, reference = graded
    shutil.copytree(out / "capstone", tmp_path / "capstone")  # the leaderboard test reads the class as graded
    grader = capstone.CapstoneGrader(tmp_path, SECRET, reference, LIMITS)
    monkeypatch.setattr(capstone, "run_job", lambda *a, **k: pytest.fail("evaluated again"))
    copy = grader.grade("copier", "copier", out / "intake" / "one_step" / f"{STEM}.{rules.ADAPTER_FOLDER}", 6.0)
    first = json.loads((out / "capstone" / "students" / "one_step.json").read_text())
    assert copy.score == first["score"] and copy.metrics == first["metrics"] and capstone.REUSED in copy.note
    assert json.loads((tmp_path / "capstone" / "students" / "copier.json").read_text())["score"] == first["score"]


def test_the_secret_is_made_for_its_owner_alone_and_a_guessable_one_is_refused(tmp_path):
    path = tmp_path / "deep" / "secret"
    made = capstone.read_secret(path)
    assert len(made) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert capstone.read_secret(path) == made
    (tmp_path / "short").write_text("1234")
    with pytest.raises(ValueError, match="at least 16"):
        capstone.read_secret(tmp_path / "short")
    with pytest.raises(FileNotFoundError):
        capstone.read_secret(tmp_path / "missing", create=False)
    exposed = REPO / "course_lib" / "capstone" / "secret-for-this-test"  # course_lib is readable in every kernel
    exposed.write_text("0123456789abcdef0123")
    try:
        with pytest.raises(ValueError, match="can read"):
            capstone.read_secret(exposed)
    finally:
        exposed.unlink()


def test_a_job_is_refused_unless_it_is_a_course_lib_module_outside_the_instructor_package():
    for module in ("os", "course_lib.instructor.cli", "course_lib.capstone.evaluate; rm -rf /"):
        with pytest.raises(JobError):
            run_job(module, {}, timeout=60)


def test_check_adapter_accepts_what_the_notebook_saves(graded):
    _, _, reference = graded
    assert check_adapter(reference) == []
