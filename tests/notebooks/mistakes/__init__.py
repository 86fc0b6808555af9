"""Typical wrong answers of every exercise, one module per notebook (nb00.py ... nb07.py).

Every exercise has at least one mistake of each kind:
- "library": the learner hands the job to a course_lib function or a library's ready-made answer (bitsandbytes'
  table, peft's helper...) instead of writing it; the hidden tests switch those off, so it must lose the marks;
- "typical": a wrong answer a learner really writes (a slip, a misunderstanding), which the tests must catch.

Each module also says what each exercise teaches (`TEACHES`, grade_id -> one line), for the README's table.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

KINDS = ("library", "typical")
SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?### END SOLUTION[ \t]*\n?", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Mistake:
    """A wrong answer put into the solution cell `exercise` (a grade_id) of notebook `stem`.

    With `old`, the text `old` becomes `new`; without it, `new` replaces the first BEGIN/END SOLUTION region, at
    the region's indentation (the first line of `new` may leave it out; later lines keep their own).
    """

    name: str
    stem: str
    exercise: str
    kind: str  # "library" or "typical"
    why: str  # one line for the README: what the learner did
    new: str
    old: str | None = None

    def apply(self, source: str) -> str:
        """The solution cell's source with this mistake in it."""
        if self.old is None:
            found = SOLUTION.search(source)
            assert found, f"{self.name}: {self.stem}/{self.exercise} has no solution region"
            indent = found.group(1)
            first, newline, rest = self.new.rstrip("\n").partition("\n")
            if not first.startswith(indent):
                first = indent + first.lstrip(" \t")
            return source[: found.start()] + first + newline + rest + "\n" + source[found.end():]
        assert self.old in source, f"{self.name}: {self.old!r} is not in {self.stem}/{self.exercise}"
        return source.replace(self.old, self.new)


MODULES = ("nb00", "nb01", "nb02", "nb03", "nb04", "nb05", "nb06", "nb07", "nb08")


def _load(attribute: str) -> list:
    found = []
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        found.append(getattr(module, attribute))
    return found


def all_mistakes() -> dict[str, Mistake]:
    """Every mistake of every notebook, by name."""
    mistakes = [m for group in _load("MISTAKES") for m in group]
    names = [m.name for m in mistakes]
    assert len(names) == len(set(names)), "two mistakes share a name"
    return {m.name: m for m in mistakes}


def teaches() -> dict[tuple[str, str], str]:
    """(stem, exercise grade_id) -> what the exercise teaches."""
    found = {}
    for name, table in zip(MODULES, _load("TEACHES")):
        stem = _load_stem(name)
        found.update({(stem, exercise): line for exercise, line in table.items()})
    return found


def _load_stem(module: str) -> str:
    return importlib.import_module(f"{__name__}.{module}").STEM
