"""nbgrader round trips of every notebook: the reference solution gets full marks, the blank student notebook zero,
and each typical wrong answer loses exactly the points of its own exercise and no others.

The points are read from the solution notebooks' nbgrader metadata (`points` of each graded cell), and an exercise's
graded cells are those that follow its solution cell, so this file restates no mark; it only lists the mistakes.
"""

from __future__ import annotations

import json
import pytest

from tests.helpers import SOLUTIONS, cell_sources, edited_solution, exercises, points, slow_extra
from tests.notebooks.mistakes import KINDS, all_mistakes, teaches


MISTAKES = all_mistakes()


def rounds() -> dict[str, list[str]]:
    """Submissions that each carry several mistakes, so every mistake is graded once without one round trip each.

    A round holds mistakes of one kind in every other exercise of a notebook (the even ones, or the odd ones), so
    the exercises between them are right and must keep their marks: a mistake that spills into its neighbours fails.
    """
    found: dict[str, list[str]] = {}
    for notebook in SOLUTIONS:
        order = list(exercises(notebook.stem))
        for kind in KINDS:
            for parity in (0, 1):
                by_exercise: dict[str, list[str]] = {}
                for name, m in MISTAKES.items():
                    if (m.stem, m.kind) == (notebook.stem, kind) and m.exercise in order[parity::2]:
                        by_exercise.setdefault(m.exercise, []).append(name)
                for depth in range(max(map(len, by_exercise.values()), default=0)):
                    names = [group[depth] for group in by_exercise.values() if depth < len(group)]
                    found[f"{notebook.stem[:2]}-{kind}-{'even' if parity == 0 else 'odd'}-{depth}"] = names
    return found


ROUNDS = rounds()


def test_every_notebook_has_graded_exercises_with_points():
    """What the tests below read from the metadata is there: every exercise has graded cells, every cell points."""
    for notebook in SOLUTIONS:
        found = exercises(notebook.stem)
        assert found and all(found.values()), f"{notebook.stem}: an exercise without a graded cell: {found}"
        full = points(notebook.stem)
        assert sorted(full) == sorted(t for cells in found.values() for t in cells)
        assert all(p > 0 for p in full.values()), full


def test_every_mistake_names_an_exercise_of_its_notebook():
    for name, mistake in MISTAKES.items():
        assert mistake.exercise in exercises(mistake.stem), f"{name}: {mistake.stem} has no exercise {mistake.exercise}"
        assert mistake.kind in KINDS, f"{name}: kind {mistake.kind!r}"
        source = cell_sources(mistake.stem)[mistake.exercise]
        wrong = mistake.apply(source)
        assert wrong != source, f"{name} changes nothing"
        compile(wrong, name, "exec")  # a mistake that does not parse would lose its marks for the wrong reason


def test_every_exercise_has_a_library_call_and_a_typical_mistake_and_says_what_it_teaches():
    """The grading round trips below cover, for every exercise, the learner who delegates to the library and at
    least one learner who gets it wrong in a way people do."""
    taught = teaches()
    for notebook in SOLUTIONS:
        for exercise in exercises(notebook.stem):
            kinds = {m.kind for m in MISTAKES.values() if (m.stem, m.exercise) == (notebook.stem, exercise)}
            assert kinds == set(KINDS), f"{notebook.stem}/{exercise}: mistakes of kinds {sorted(kinds)} only"
            assert taught.get((notebook.stem, exercise)), f"{notebook.stem}/{exercise}: TEACHES has no line"


def test_every_mistake_is_in_one_round():
    graded = [name for names in ROUNDS.values() for name in names]
    assert sorted(graded) == sorted(MISTAKES)


@pytest.mark.grading
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_reference_solution_gets_full_marks(course, notebook):
    result = course.autograde(notebook.stem, "reference", notebook)
    assert result.cells, "a graded notebook needs graded cells"
    assert result.score == result.max_score, result.by_cell()
    assert result.by_cell() == points(notebook.stem)  # every graded cell, at the points its metadata gives
    # every cell, not only the graded ones, runs cleanly inside the sandbox (model cache, plots, training)
    executed = json.loads(course.autograded_notebook(notebook.stem, "reference").read_text())
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(executed["cells"])
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [], errors


@pytest.mark.grading
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_blank_student_notebook_gets_zero(course, notebook):
    result = course.autograde(notebook.stem, "blank", course.student_notebook(notebook.stem))
    assert result.max_score == sum(points(notebook.stem).values()) > 0
    assert result.score == 0, result.by_cell()
    # nothing blocks: with every exercise unsolved, only the graded test cells fail; the lesson runs to the end
    executed = json.loads(course.autograded_notebook(notebook.stem, "blank").read_text())
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(executed["cells"])
              if not c.get("metadata", {}).get("nbgrader", {}).get("grade")
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [], errors


# The first library and the first typical mistake of every exercise are graded on every run. The further typical
# mistakes of an exercise need one round each (a round can hold one mistake per exercise), which costs CI about as
# much as all the first ones together: they run with COURSE_SLOW_TESTS=1 (see the README).
EXTRA = slow_extra("a further mistake of an exercise already graded")


@pytest.mark.grading
@pytest.mark.parametrize("round_name", [pytest.param(name, marks=EXTRA) if not name.endswith("-0") else name
                                        for name in ROUNDS])
def test_typical_wrong_answers_lose_exactly_their_exercises_marks(course, tmp_path, round_name):
    """Every mistake of the round costs its own exercise's marks; every exercise without one keeps them."""
    names = ROUNDS[round_name]
    stem = MISTAKES[names[0]].stem
    edits = {MISTAKES[n].exercise: MISTAKES[n] for n in names}
    wrong = edited_solution(stem, {exercise: m.apply for exercise, m in edits.items()}, tmp_path)
    result = course.autograde(stem, round_name.replace("-", "_"), wrong)
    lost = [cell for exercise in edits for cell in exercises(stem)[exercise]]
    assert result.by_cell() == {**points(stem), **dict.fromkeys(lost, 0)}, (names, result.by_cell(),
                                                                            {c.name: c.message for c in result.cells})


def test_the_readme_exercise_table_is_the_graded_one():
    from tests.notebooks import exercise_table

    assert exercise_table.readme_block() == exercise_table.block(), \
        "README.md's exercise table is stale: run python -m tests.notebooks.exercise_table --write"
