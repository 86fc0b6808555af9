"""From raw rows to tokenized, leakage-free splits with `datasets`, every drop accounted for.

Raw sources are read row by row (course_lib.data.sources) and validated *before* they become a
`datasets.Dataset`: Arrow needs one type per column, so a single bad row (a number where text belongs,
content given as a list) makes `load_dataset`/`Dataset.from_list` fail with an error that names no row.
Validation maps every row to a library format and drops or names the bad ones; everything after it
(deduplication, splitting, tokenization, packing) is a batched `map`/`filter` on datasets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from datasets import DatasetDict

from course_lib.core import tasks
from course_lib.data.formats import task_row
from course_lib.data.sources import FileFormatError, UnreadableRow, load_rows
from course_lib.data.splits import (SplitTooSmallError, assert_no_leakage, batch_rows, conflicts, deduplicate_dataset,
                                    split_dataset)
from course_lib.data.tokenize import SOURCE_ROW, tokenize_dataset
from course_lib.data.validate import DropSummary, as_dataset, to_dataset, validate_rows

__all__ = ["FileFormatError", "Prepared", "as_dataset", "prepare", "read_jsonl", "read_rows", "task_rows", "to_dataset",
           "write_jsonl"]


def read_jsonl(path: str | Path) -> list:
    """Every row of a JSONL file the library wrote; a line that is not JSON raises FileFormatError naming it."""
    rows = load_rows(path, file_format="jsonl")
    for row, origin in zip(rows, rows.origins):
        if isinstance(row, UnreadableRow):
            raise FileFormatError(f"{origin}: {row.reason}")
    return list(rows)


def read_rows(path: str | Path, file_format: str = "auto", encoding: str | None = None) -> list:
    """Rows of a JSONL, JSON, CSV, TSV or Parquet file (course_lib.data.sources.load_rows), unvalidated."""
    return load_rows(path, file_format=file_format, encoding=encoding)


def write_jsonl(rows, path: str | Path) -> Path:
    """Write rows (a list, DataFrame or Dataset) as JSONL (UTF-8, one object a line): the whole file, or nothing.

    A row that JSON cannot hold (NaN, half an emoji) raises ValueError naming the row, before the file changes.
    """
    path = Path(path)
    lines = []
    for index, row in enumerate(load_rows(rows) if not isinstance(rows, list) else rows):
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        except (ValueError, UnicodeEncodeError) as error:
            raise ValueError(f"row {index} cannot be written as JSON ({error}); validate the rows first") from None
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(b"".join(line + b"\n" for line in lines))
    os.replace(partial, path)
    return path


def task_rows(n: int, seed: int = 0, fmt: str = "chat", eos_token: str | None = None) -> list[dict]:
    """`n` rows of the course task (course_lib.core.tasks) in the given format."""

    return [task_row(example, fmt, eos_token) for example in tasks.make_examples(n, seed=seed)]


@dataclass
class Prepared:
    """The outcome of `prepare`: tokenized splits and the report of every stage."""

    splits: object  # datasets.DatasetDict
    validation: DropSummary
    dedup: list = field(default_factory=list)  # DedupReport per mode
    leakage_proof: dict = field(default_factory=dict)
    tokenization: dict = field(default_factory=dict)  # split -> TokenizeReport
    conflicts: list = field(default_factory=list)  # groups of input rows: one prompt, different answers

    def __str__(self) -> str:
        lines = [str(self.validation), *map(str, self.dedup)]
        if self.conflicts:
            shown = "; ".join(" & ".join(map(str, rows)) for rows in self.conflicts[:5])
            more = f"; ... ({len(self.conflicts) - 5} more)" if len(self.conflicts) > 5 else ""
            lines.append(f"conflicts: {len(self.conflicts)} prompts have different answers (rows {shown}{more}); "
                         "kept in one split each, but check which answer is right")
        lines.append(f"split: {self.leakage_proof.get('rows')} (shared prompts: {self.leakage_proof.get('overlaps')})")
        lines += [f"{name}: {report}" for name, report in self.tokenization.items()]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def deduplicated(good: Sequence[dict], summary: DropSummary, modes: Sequence[str]) -> tuple:
    """Validated rows as a Dataset named by input row, deduplicated by each mode: (dataset, DedupReports, conflicts).

    Conflicts are groups of input rows that ask one prompt with different answers.
    """
    dataset = to_dataset(good).add_column(SOURCE_ROW, summary.kept_rows)
    reports = []
    for mode in modes:
        dataset, report = deduplicate_dataset(dataset, mode)
        reports.append(report)
    names = dataset[SOURCE_ROW]
    clashes = [[names[i] for i in group] for group in conflicts(batch_rows(dataset.to_dict())).values()]
    return dataset, reports, clashes


def prepare(rows, tokenizer, max_length: int = 256, truncation: bool = True, fmt: str | None = None,
            dedup: Sequence[str] = ("exact", "normalized"), fractions: Mapping[str, float] | None = None,
            seed: int = 0, on_error: str = "drop") -> Prepared:
    """Validate, deduplicate, split without leakage and tokenize rows; returns Prepared with all reports.

    `rows` is anything validate_rows reads: a list of rows, a file path, a DataFrame, a Dataset or DatasetDict.
    """
    good, summary = validate_rows(rows, on_error=on_error, fmt=fmt, tokenizer=tokenizer,
                                  max_length=max_length, truncation=truncation)
    if not good:
        raise ValueError(f"no valid rows left:\n{summary}")
    dataset, reports, clashes = deduplicated(good, summary, dedup)
    try:
        splits = split_dataset(dataset, fractions, seed)
    except SplitTooSmallError as error:
        removed = summary.total - len(dataset)
        raise SplitTooSmallError(f"{error} ({summary.total} rows given; validation and deduplication removed "
                                 f"{removed}: see validate_rows / check_data)" if removed else str(error)) from None
    proof = assert_no_leakage({name: batch_rows(ds.to_dict()) if len(ds) else [] for name, ds in splits.items()})
    tokenized, token_reports = {}, {}
    for name, ds in splits.items():
        tokenized[name], token_reports[name] = tokenize_dataset(ds, tokenizer, max_length, truncation)
    return Prepared(DatasetDict(tokenized), summary, reports, proof, token_reports, clashes)
