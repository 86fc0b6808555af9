"""The course config: which exercises count and for how many points, applied the same way by release and grade."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.instructor import course_config
from course_lib.instructor.course_config import ConfigError, CourseConfig, apply, exercise_cells, load
from course_lib.instructor.grading import release
from tests.helpers import SOLUTIONS
from tests.instructor.tiny_assignment import STEM, TINY, graded_cell

NB04 = next(p for p in SOLUTIONS if p.stem.startswith("04_"))


def _points(nb, indices) -> float:
    return sum(float(nb.cells[i].metadata["nbgrader"]["points"]) for i in indices)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem[:2])
def test_what_a_notebook_says_it_is_worth_is_what_its_metadata_grades(path):
    """The opening line and every exercise heading agree with the points nbgrader will give."""
    nb = nbformat.read(path, as_version=4)
    cells = exercise_cells(nb)
    total = sum(_points(nb, tests) for tests in cells.values())
    opening = next(course_config.OPENING.search(c.source) for c in nb.cells
                   if c.cell_type == "markdown" and course_config.OPENING.search(c.source))
    assert re.findall(r"\d+(?:\.\d+)?", opening.group(0)) == [str(len(cells)), f"{total:g}"], opening.group(0)
    for exercise, tests in cells.items():
        answer = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == exercise)
        heading = next(c.source for c in reversed(nb.cells[:answer])
                       if c.cell_type == "markdown" and course_config.HEADING_POINTS.search(c.source))
        said = float(list(course_config.HEADING_POINTS.finditer(heading))[-1].group(2))
        assert said == _points(nb, tests), (exercise, said, _points(nb, tests))


def test_apply_makes_practice_exercises_ungraded_and_sets_points():
    nb = nbformat.read(NB04, as_version=4)
    config = CourseConfig({NB04.stem: {"decay_parameter_names": False, "make_trainer": 6, "plan_run": True}})
    out = apply(nb, NB04.stem, config)
    before, after = exercise_cells(nb), exercise_cells(out)
    assert after["decay_parameter_names"] == [] and before["decay_parameter_names"]
    for index in before["decay_parameter_names"]:
        cell = out.cells[index]
        assert cell.metadata["nbgrader"]["grade"] is False and "points" not in cell.metadata["nbgrader"]
        assert cell.metadata["nbgrader"]["locked"] is True
        assert "HIDDEN TESTS" not in cell.source and "own_work" not in cell.source
        assert cell.source.strip(), "the visible tests stay for practice"
    assert _points(out, after["make_trainer"]) == 6
    assert _points(out, after["plan_run"]) == _points(nb, before["plan_run"])
    text = "\n".join(c.source for c in out.cells if c.cell_type == "markdown")
    assert "(practice, not graded)" in text and "(6 points)" in text
    total = sum(_points(out, t) for t in after.values())
    assert f"**Exercises:** 4 graded ({total:g} points), and 1 for practice" in text
    assert nb.cells[before["decay_parameter_names"][0]].metadata["nbgrader"]["grade"] is True, "the input is untouched"


@pytest.mark.parametrize("text, says", [
    ("[notebooks.99_nothing]\nx = false\n", "names no solution notebook"),
    ("[notebooks.{stem}]\nnot_an_exercise = false\n", "is not an exercise of"),
    ("[notebooks.{stem}]\nmake_trainer = 0\n", "a number of points above 0"),
    ("[notebooks.{stem}]\nmake_trainer = \"six\"\n", "a number of points above 0"),
    ("[notebooks.{stem}]\nmake_trainer = -2\n", "a number of points above 0"),
    ("[grading]\nx = 1\n", "unknown table"),
    ("[notebooks.{stem}\n", "not valid TOML"),
])
def test_a_bad_config_is_refused_naming_the_file_and_key(tmp_path, text, says):
    path = tmp_path / "mine.toml"
    path.write_text(text.format(stem=NB04.stem), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(says)) as error:
        load(path, SOLUTIONS)
    assert str(path) in str(error.value)


def test_no_config_counts_everything_but_a_named_missing_file_is_an_error(tmp_path):
    assert load(tmp_path / course_config.DEFAULT_NAME, SOLUTIONS) == CourseConfig()
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "typo.toml", SOLUTIONS)


def test_the_shipped_config_loads_and_counts_every_exercise():
    config = load(course_config.default_path(SOLUTIONS[0].parent), SOLUTIONS)
    assert config.exercises == {}


@pytest.mark.grading
def test_release_and_grade_both_follow_the_config(tmp_path):
    """One exercise made practice, the other re-weighted: the release and the gradebook agree."""
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / TINY.name).write_bytes(TINY.read_bytes())
    config = tmp_path / "term.toml"
    config.write_text(f"[notebooks.{STEM}]\nis_even = false\nadd = 3\n", encoding="utf-8")
    (released,) = release(solutions, tmp_path / "notebooks", load(config, [solutions / TINY.name]))
    student = nbformat.read(released, as_version=4)
    assert graded_cell(student, "test_is_even").metadata["nbgrader"]["grade"] is False
    assert graded_cell(student, "test_add").metadata["nbgrader"]["points"] == 3
    reference = nbformat.read(TINY, as_version=4)
    for cell in student.cells:  # an honest student: the reference answers in the released notebook
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = "\n".join(line for line in graded_cell(reference, cell.metadata["nbgrader"]["grade_id"])
                                    .source.splitlines() if "### " not in line)
    (tmp_path / "submissions" / "honest").mkdir(parents=True)
    nbformat.write(student, tmp_path / "submissions" / "honest" / f"{STEM}.ipynb")
    course = Path(sys.executable).parent / "course"
    done = subprocess.run([str(course), "grade", "submissions", "--output", "grading", "--solutions", "solutions",
                           "--config", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with (tmp_path / "grading" / "grades.csv").open(newline="", encoding="utf-8") as handle:
        rows = [(r["exercise"], float(r["score"]), float(r["max_score"])) for r in csv.DictReader(handle)]
    assert rows == [("test_add", 3.0, 3.0)]


def test_the_commands_refuse_a_bad_config_before_doing_anything(tmp_path, capsys):
    from course_lib.instructor import cli

    (tmp_path / "bad.toml").write_text(f"[notebooks.{NB04.stem}]\nnot_an_exercise = 2\n", encoding="utf-8")
    for command in (["grade", str(tmp_path), "--output", str(tmp_path / "out")], ["release"], ["check-release"]):
        assert cli.main(command + ["--config", str(tmp_path / "bad.toml"), "--notebooks", str(tmp_path / "nb")]
                        if command[0] != "grade" else command + ["--config", str(tmp_path / "bad.toml")]) == 2
        assert "not_an_exercise" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not (tmp_path / "nb").exists()
