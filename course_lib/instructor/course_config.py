"""Which exercises count, and for how many points: a course config read by `course release` and `course grade`.

An instructor edits one TOML file instead of nbgrader metadata. Every exercise counts at its notebook's points
unless the file says otherwise:

    [notebooks.04_trainer_configuration]
    decay_parameter_names = false   # practice: released with its visible tests, never graded
    make_trainer = 6                # counts, worth 6 points instead of 4

An exercise is named by its answer cell's grade id (the function name in the README's exercise table). The
release and the grader apply the same file, so what learners see ("Exercise 2 (practice, not graded)", the
points in the headings and the notebook's opening line) is what the gradebook counts.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

DEFAULT_NAME = "course.toml"  # beside the solution notebooks
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS\n.*?^[ \t]*### END HIDDEN TESTS[ \t]*\n?", re.M | re.S)
HEADING_POINTS = re.compile(r"^(## Exercise [^\n]*?)\((\d+(?:\.\d+)?) points?\)", re.M)
OPENING = re.compile(r"\*\*Exercises:\*\* \d+ graded( functions)? \(\d+(?:\.\d+)? points?\)"
                     r"(, and \d+ for practice)?")


class ConfigError(ValueError):
    """A course config that names an unknown notebook or exercise, or gives a value that is not allowed."""


@dataclass(frozen=True)
class CourseConfig:
    """Per notebook: exercise -> False (practice) or its points. Exercises not named keep their notebook's points."""

    exercises: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    source: str = "(defaults: every exercise counts)"

    def setting(self, stem: str, exercise: str) -> float | bool:
        """True (counts as written), False (practice) or the points it is worth."""
        return self.exercises.get(stem, {}).get(exercise, True)


def default_path(solutions: Path) -> Path:
    """Where `course release` and `course grade` look for the config when none is given."""
    return Path(solutions) / DEFAULT_NAME


def load(path: Path | None, solutions: list[Path]) -> CourseConfig:
    """Read and check a config against the solution notebooks; no file means every exercise counts."""
    if path is None or not Path(path).exists():
        if path is not None and Path(path).name != DEFAULT_NAME:
            raise ConfigError(f"course config not found: {path}")
        return CourseConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    if unknown := set(data) - {"notebooks"}:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; expected only [notebooks.NAME]")
    known = {Path(p).stem: exercise_cells(nbformat.read(p, as_version=4)) for p in solutions}
    settings: dict[str, dict[str, float | bool]] = {}
    for stem, table in data.get("notebooks", {}).items():
        if stem not in known:
            raise ConfigError(f"{path}: [notebooks.{stem}] names no solution notebook; known: {', '.join(sorted(known))}")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: notebooks.{stem} must be a table of exercise = false or points")
        for exercise, value in table.items():
            if exercise not in known[stem]:
                raise ConfigError(f"{path}: notebooks.{stem}.{exercise} is not an exercise of {stem}; "
                                  f"its exercises: {', '.join(known[stem])}")
            if value is True or value is False:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{path}: notebooks.{stem}.{exercise} = {value!r}; give false (practice), "
                                  f"true (as written) or a number of points above 0")
        settings[stem] = dict(table)
    return CourseConfig(settings, str(path))


def exercise_cells(notebook) -> dict[str, list[int]]:
    """Each exercise (its answer cell's grade id) -> the indices of the graded test cells that follow it."""
    found: dict[str, list[int]] = {}
    current = None
    for index, cell in enumerate(notebook.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            current = meta["grade_id"]
            found[current] = []
        elif meta.get("grade") and current is not None:
            found[current].append(index)
    return found


def apply(notebook, stem: str, config: CourseConfig):
    """A copy of a solution notebook with the config's practice exercises ungraded and its points set."""
    notebook = copy.deepcopy(notebook)
    exercises = exercise_cells(notebook)
    practice = 0
    for exercise, tests in exercises.items():
        setting = config.setting(stem, exercise)
        if setting is True or not tests:
            continue
        if setting is False:
            practice += 1
            for index in tests:
                _make_practice(notebook.cells[index])
        else:
            written = sum(float(notebook.cells[i].metadata["nbgrader"]["points"]) for i in tests)
            for index in tests:  # several test cells keep their shares of the exercise
                meta = notebook.cells[index].metadata["nbgrader"]
                meta["points"] = _number(float(meta["points"]) * setting / written)
        _retitle(notebook, exercise, setting)
    if practice or any(config.setting(stem, e) is not True for e in exercises):
        _reopen(notebook, practice)
    return notebook


def _make_practice(cell) -> None:
    """A graded test cell becomes a locked, ungraded one: its visible tests stay, its hidden tests go."""
    meta = cell.metadata["nbgrader"]
    meta["grade"] = False
    meta.pop("points", None)
    cell.source = HIDDEN.sub("", cell.source)


def _retitle(notebook, exercise: str, setting: float | bool) -> None:
    """Rewrite '(N points)' in the heading of the exercise: the last '## Exercise' heading above its answer cell."""
    answer = next(i for i, c in enumerate(notebook.cells)
                  if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == exercise)
    for cell in reversed(notebook.cells[:answer]):
        if cell.cell_type == "markdown" and HEADING_POINTS.search(cell.source):
            label = "(practice, not graded)" if setting is False else f"({_plural(setting)})"
            last = list(HEADING_POINTS.finditer(cell.source))[-1]
            cell.source = cell.source[:last.start()] + last.group(1) + label + cell.source[last.end():]
            return


def _reopen(notebook, practice: int) -> None:
    """The notebook's opening '**Exercises:** N graded (P points)' line, counted again from the graded cells."""
    graded = [c for c in notebook.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
    counted = sum(1 for tests in exercise_cells(notebook).values() if tests)
    total = sum(float(c.metadata["nbgrader"]["points"]) for c in graded)
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and (found := OPENING.search(cell.source)):
            words = " functions" if found.group(1) else ""
            extra = f", and {practice} for practice" if practice else ""
            line = f"**Exercises:** {counted} graded{words} ({_plural(total)}){extra}"
            cell.source = cell.source[:found.start()] + line + cell.source[found.end():]
            return


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def _plural(points: float) -> str:
    value = _number(points)
    return f"{value} point" if value == 1 else f"{value} points"


def configured_solutions(solutions: list[Path], config: CourseConfig, folder: Path) -> list[Path]:
    """The solution notebooks with the config applied, written into `folder` (the originals when nothing changes)."""
    written = []
    for path in solutions:
        path = Path(path)
        if path.stem not in config.exercises:
            written.append(path)
            continue
        target = Path(folder) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(apply(nbformat.read(path, as_version=4), path.stem, config), target)
        written.append(target)
    return written
