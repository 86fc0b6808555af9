"""From raw rows to tokenized, leakage-free splits with `datasets`, every drop accounted for.

Raw files are read row by row *before* they become a `datasets.Dataset`: Arrow needs one type per
column, so a single bad row (a number where text belongs, content given as a list) makes
`load_dataset`/`Dataset.from_list` fail with an error that names no row, or become a `Json` column
that hides the problem. Validation runs first, on plain Python rows; everything after it
(deduplication, splitting, tokenization, packing) is a batched `map`/`filter` on datasets.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from datasets import Dataset, DatasetDict, Features, Value, load_dataset

from course_lib.core import tasks
from course_lib.data.formats import task_row
from course_lib.data.splits import assert_no_leakage, batch_rows, deduplicate_dataset, split_dataset
from course_lib.data.tokenize import SOURCE_ROW, tokenize_dataset
from course_lib.data.validate import DropSummary, validate_rows


class FileFormatError(ValueError):
    """A data file that cannot be read as rows (the message names the file and line)."""


def read_jsonl(path: str | Path) -> list:
    """One row per non-blank line of a JSONL file; invalid JSON raises FileFormatError naming the line."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise FileFormatError(f"{path.name}, line {number}: not valid JSON ({error.msg})") from error
    return rows


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV file with a header, read by `datasets` with every column as text.

    Empty cells become None (reported as missing by validation). A 'messages' column holds JSON;
    a cell that does not parse stays a string, so validation reports it as the wrong type.
    """


    path = Path(path)
    with path.open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise FileFormatError(f"{path.name}: no header row")
    features = Features({name: Value("string") for name in header})  # no type guessing: "007" stays "007"
    rows = load_dataset("csv", data_files=str(path), split="train", features=features, keep_in_memory=True).to_list()
    for row in rows:
        if isinstance(row.get("messages"), str):
            try:
                row["messages"] = json.loads(row["messages"])
            except json.JSONDecodeError:
                pass
    return rows


def read_rows(path: str | Path) -> list:
    """Rows of a .jsonl or .csv file."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    if suffix == ".csv":
        return read_csv(path)
    raise FileFormatError(f"{Path(path).name}: expected a .jsonl or .csv file")


def write_jsonl(rows: Sequence, path: str | Path) -> Path:
    """Write rows as JSONL (UTF-8, one object a line)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def to_dataset(rows: Sequence[Mapping]) -> Dataset:
    """A `datasets.Dataset` of validated rows, with every field any row has.

    `Dataset.from_list` takes its columns from the first row only and silently drops fields the
    first row lacks, so the columns are the union of all rows' fields (absent ones become None).
    """

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    for name in columns:  # Arrow holds one type per column: name the field and row instead of a bare ArrowTypeError
        seen: dict[str, int] = {}
        for index, row in enumerate(rows):
            if row.get(name) is not None:
                seen.setdefault(type(row[name]).__name__, index)
        if len(seen) > 1:
            shown = ", ".join(f"{kind} (row {index})" for kind, index in seen.items())
            raise ValueError(f"field {name!r} holds values of several types: {shown}; make them one type or drop it")
    return Dataset.from_list([{name: row.get(name) for name in columns} for row in rows])


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

    def __str__(self) -> str:
        lines = [str(self.validation), *map(str, self.dedup)]
        lines.append(f"split: {self.leakage_proof.get('rows')} (shared prompts: {self.leakage_proof.get('overlaps')})")
        lines += [f"{name}: {report}" for name, report in self.tokenization.items()]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def prepare(rows: Sequence, tokenizer, max_length: int = 256, truncation: bool = True, fmt: str | None = None,
            dedup: Sequence[str] = ("exact", "normalized"), fractions: Mapping[str, float] | None = None,
            seed: int = 0, on_error: str = "drop") -> Prepared:
    """Validate, deduplicate, split without leakage and tokenize rows; returns Prepared with all reports."""

    good, summary = validate_rows(rows, on_error=on_error, fmt=fmt, tokenizer=tokenizer,
                                  max_length=max_length, truncation=truncation)
    if not good:
        raise ValueError(f"no valid rows left:\n{summary}")
    bad = set(summary.rows())
    sources = [i for i in range(summary.total) if i not in bad]
    dataset = to_dataset(good).add_column(SOURCE_ROW, sources)
    reports = []
    for mode in dedup:
        dataset, report = deduplicate_dataset(dataset, mode)
        reports.append(report)
    splits = split_dataset(dataset, fractions, seed)
    proof = assert_no_leakage({name: batch_rows(ds.to_dict()) if len(ds) else [] for name, ds in splits.items()})
    tokenized, token_reports = {}, {}
    for name, ds in splits.items():
        tokenized[name], token_reports[name] = tokenize_dataset(ds, tokenizer, max_length, truncation)
    return Prepared(DatasetDict(tokenized), summary, reports, proof, token_reports)
