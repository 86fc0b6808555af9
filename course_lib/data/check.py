"""Check a learner's own data before training on it: what would be kept, what would be dropped and why.

`check_data` runs the steps of `pipeline.prepare` up to the split (read, validate, deduplicate, find
conflicting answers, count tokens, try the split) without stopping at the first problem, and returns a
DataCheck that prints as a table. `course data check FILE` is the same on the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from course_lib.data.pipeline import deduplicated
from course_lib.data.sources import load_rows
from course_lib.data.splits import (DEFAULT_FRACTIONS, DedupReport, SplitTooSmallError, batch_rows, check_split_sizes,
                                    prompt_key, split_groups)
from course_lib.data.tokenize import tokenize_row
from course_lib.data.validate import KINDS, DropSummary, default_tokenizer, validate_rows


@dataclass
class DataCheck:
    """What `prepare` would make of a source: the kept rows' token lengths and every row it would drop, by reason."""

    source: str
    validation: DropSummary
    dedup: list[DedupReport] = field(default_factory=list)
    conflicts: list[list[int]] = field(default_factory=list)  # input rows: one prompt, different answers
    lengths: list[int] = field(default_factory=list)  # tokens per usable row
    max_length: int = 256
    split_problem: str | None = None  # why the requested splits cannot be made, if they cannot
    origins: dict[int, str] = field(default_factory=dict)  # input row -> file line, where the source has lines

    @property
    def usable(self) -> int:
        """Rows left after validation and deduplication."""
        return len(self.lengths)

    def reasons(self) -> list[tuple[str, int, str, list[int]]]:
        """(reason, rows, what it means, the first rows) for every reason a row would be dropped."""
        out = [(kind, n, KINDS.get(kind, ""), self.validation.first_rows(kind)) for kind, n in
               self.validation.counts().items()]
        for report in self.dedup:
            if report.duplicates:
                out.append((f"duplicate ({report.mode})", len(report.duplicates), "repeats an earlier row (kept once)",
                            [row for row, _ in report.duplicates[:5]]))
        return out

    def histogram(self, bins: int = 8) -> list[tuple[int, int, int]]:
        """(low, high, rows) buckets of the usable rows' token lengths, from the shortest row to the longest."""
        if not self.lengths:
            return []
        low, top = min(self.lengths), max(self.lengths)
        width = max(1, math.ceil((top - low + 1) / bins))
        counts = [0] * math.ceil((top - low + 1) / width)
        for n in self.lengths:
            counts[(n - low) // width] += 1
        return [(low + i * width, low + (i + 1) * width - 1, c) for i, c in enumerate(counts)]

    def lines(self) -> list[str]:
        """The report as plain text lines."""
        v = self.validation
        lines = [f"{self.source}: {v.total} rows read, {self.usable} usable, "
                 f"{v.total - self.usable} would be dropped"]
        if v.schemas:
            lines.append("schemas: " + ", ".join(f"{name} ({n} rows)" for name, n in v.schemas.items()))
        for reason, n, meaning, rows in self.reasons():
            where = ", ".join(self._name(r) for r in rows) + (", ..." if n > len(rows) else "")
            lines.append(f"  dropped {n:>4} × {reason:<20} {meaning}; rows {where}")
        for error in _first_per_kind(v):
            lines.append(f"    e.g. {error}")
        if v.ignored:
            lines.append("fields no schema uses (left out of training): "
                         + ", ".join(f"{name!r} ({n} rows)" for name, n in v.ignored.items()))
        if self.conflicts:
            shown = "; ".join(" & ".join(self._name(r) for r in group) for group in self.conflicts[:5])
            lines.append(f"conflicts: {len(self.conflicts)} prompts have different answers (rows {shown}); both "
                         "are kept, in one split")
        if self.lengths:
            over = sum(n > self.max_length for n in self.lengths)
            lines.append(f"tokens per usable row: min {min(self.lengths)}, median {sorted(self.lengths)[len(self.lengths) // 2]}, "
                         f"max {max(self.lengths)}; {over} over max_length={self.max_length} (would be truncated)")
            peak = max(c for _, _, c in self.histogram())
            for low, high, count in self.histogram():
                lines.append(f"  {low:>6}-{high:<6} {'#' * math.ceil(30 * count / peak):<30} {count}")
        if self.split_problem:
            lines.append(f"split: {self.split_problem}")
        if not v.total:
            lines.append("the source holds no rows")
        elif not self.usable:
            lines.append("nothing usable is left: fix the rows named above")
        return lines

    def _name(self, row: int | None) -> str:
        origin = self.origins.get(row) if row is not None else None
        return f"{row} ({origin})" if origin else str(row)

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def _first_per_kind(summary: DropSummary) -> list:
    seen, out = set(), []
    for error in summary.drops:
        if error.kind not in seen:
            seen.add(error.kind)
            out.append(error)
    return out


def check_data(source, tokenizer=None, file_format: str = "auto", encoding: str | None = None, max_length: int = 256,
               fractions: Mapping[str, float] | None = None, dedup: Sequence[str] = ("exact", "normalized"),
               fmt: str | None = None) -> DataCheck:
    """Check any source `prepare` reads against a tokenizer (None: the course model's); nothing raises for a bad row."""
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    rows = load_rows(source, file_format=file_format, encoding=encoding)
    good, summary = validate_rows(rows, on_error="drop", fmt=fmt, tokenizer=tokenizer, max_length=max_length)
    origins = {i: o for i, o in enumerate(rows.origins) if o != f"row {i}"}
    result = DataCheck(rows.name, summary, max_length=max_length, origins=origins)
    if not good:
        return result
    dataset, result.dedup, result.conflicts = deduplicated(good, summary, dedup)
    kept = batch_rows(dataset.to_dict())
    result.lengths = [len(tokenize_row(row, tokenizer)["input_ids"]) for row in kept]
    keys = [prompt_key(row) for row in kept]
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    try:
        check_split_sizes(split_groups(keys, fractions), keys, fractions)
    except SplitTooSmallError as error:
        result.split_problem = str(error)
    return result
