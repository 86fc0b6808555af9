"""Reject bad rows with an error naming the row and the field; drop nothing silently.

`validate_row` raises a RowError for the first problem of one row. `validate_rows` (Python rows) and
`validate_dataset` (a `datasets.Dataset`, batched map + filter) either raise on the first bad row or
drop the bad rows and return a DropSummary that says which rows went and why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from course_lib.data.formats import FORMAT_FIELDS, ROLES
from course_lib.data.tokenize import tokenize_row

if TYPE_CHECKING:
    from datasets import Dataset

# Short names for the kinds of problem; a DropSummary counts rows by these.
KINDS = {
    "not_a_row": "the row is not a JSON object",
    "format": "the fields do not match one format",
    "missing": "a required field is missing or null",
    "empty": "a text field is empty",
    "type": "a field has the wrong type",
    "role": "a message has an unknown role",
    "order": "the turns are in an order the chat template cannot train on",
    "last_turn": "the chat does not end with an assistant turn",
    "content": "a message's content is not text",
    "unknown_key": "a message has a key other than role and content (it would be ignored)",
    "special_token": "the text contains a special token of the tokenizer",
    "too_long": "the row is longer than max_length and truncation is off",
}


class RowError(ValueError):
    """One bad row: `row` (its index), `field` (e.g. 'messages[2].role') and `kind` (a key of KINDS)."""

    def __init__(self, row: int | None, field: str | None, reason: str, kind: str = "type"):
        self.row, self.field, self.reason, self.kind = row, field, reason, kind
        where = "row ?" if row is None else f"row {row}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the attributes through pickling (datasets' multiprocessing, nbgrader)
        return (RowError, (self.row, self.field, self.reason, self.kind))


def validate_row(row, index: int | None = None, fmt: str | None = None, tokenizer=None,
                 max_length: int | None = None, truncation: bool = True) -> str:
    """Check one row and return its format; raise RowError naming the row and field of the first problem.

    `fmt` pins the format a dataset must have; without it the row's fields decide. With a tokenizer,
    text holding one of its special tokens is rejected (it would break the template and the mask),
    and with max_length and truncation off, rows longer than max_length are rejected.
    """
    if not isinstance(row, Mapping):
        raise RowError(index, None, f"expected a JSON object, got {type(row).__name__}", "not_a_row")
    found = _detect(row, index, fmt)
    if found == "completion":
        _text(row, "text", index)
    elif found == "instruction":
        _text(row, "instruction", index)
        _text(row, "output", index)
        if row.get("input") is not None and not isinstance(row["input"], str):
            raise RowError(index, "input", f"must be text (or absent), got {type(row['input']).__name__}", "type")
    else:
        _chat(row.get("messages"), index)
    if tokenizer is not None:
        _no_special_tokens(row, found, index, tokenizer)
        if max_length is not None and not truncation:
            _fits(row, found, index, tokenizer, max_length)
    return found


def _detect(row: Mapping, index: int | None, fmt: str | None) -> str:
    present = [name for name, fields in FORMAT_FIELDS.items() if any(row.get(f) is not None for f in fields)]
    if fmt is not None:
        if fmt not in FORMAT_FIELDS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMAT_FIELDS)}")
        others = [name for name in present if name != fmt]
        if others:
            extra = [f for f in FORMAT_FIELDS[others[0]] if row.get(f) is not None][0]
            raise RowError(index, extra, f"belongs to the {others[0]} format, but this dataset is {fmt}", "format")
        required = {"completion": "text", "instruction": "instruction", "chat": "messages"}[fmt]
        if row.get(required) is None:
            raise RowError(index, required, f"is missing (a {fmt} row needs it)", "missing")
        if fmt == "instruction" and row.get("output") is None:
            raise RowError(index, "output", "is missing (an instruction row needs it)", "missing")
        return fmt
    if len(present) > 1:
        raise RowError(index, None, f"mixes the fields of the {' and '.join(present)} formats", "format")
    if not present:
        raise RowError(index, None, "has none of the fields 'text', 'instruction'/'output' or 'messages'", "missing")
    if present[0] == "instruction":
        for name in ("instruction", "output"):
            if row.get(name) is None:
                raise RowError(index, name, "is missing (an instruction row needs it)", "missing")
    return present[0]


def _text(row: Mapping, name: str, index: int | None, where: str | None = None) -> str:
    value = row.get(name)
    where = where or name
    if value is None:
        raise RowError(index, where, "is missing", "missing")
    if not isinstance(value, str):
        kind = "content" if name == "content" else "type"
        raise RowError(index, where, f"must be text, got {type(value).__name__}", kind)
    if not value.strip():
        raise RowError(index, where, "is empty", "empty")
    return value


def _chat(messages, index: int | None) -> None:
    if not isinstance(messages, (list, tuple)):
        raise RowError(index, "messages", f"must be a list of messages, got {type(messages).__name__}", "type")
    if not messages:
        raise RowError(index, "messages", "is empty", "empty")
    seen_user = False
    for turn, message in enumerate(messages):
        where = f"messages[{turn}]"
        if not isinstance(message, Mapping):
            raise RowError(index, where, f"must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role is None:
            raise RowError(index, f"{where}.role", "is missing", "missing")
        if role not in ROLES:
            raise RowError(index, f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}", "role")
        if "content" not in message or message["content"] is None:
            raise RowError(index, f"{where}.content", "is missing", "missing")
        content = message["content"]
        if not isinstance(content, str):
            what = "a list of parts (images, audio, ...)" if isinstance(content, (list, tuple)) else type(content).__name__
            raise RowError(index, f"{where}.content", f"must be text, got {what}", "content")
        if not content.strip():
            raise RowError(index, f"{where}.content", "is empty", "empty")
        extra = sorted(k for k, v in message.items() if k not in ("role", "content") and v is not None)
        if extra:  # e.g. a per-turn "weight": 0 the tokenizer would silently train on anyway
            raise RowError(index, f"{where}.{extra[0]}", "is not used by the chat template or the loss mask; "
                           "remove it or turn it into content", "unknown_key")
        if role == "system" and turn != 0:
            raise RowError(index, f"{where}.role", "a system message may only be the first message", "order")
        if role == "assistant" and not seen_user:
            raise RowError(index, f"{where}.role", "an assistant turn needs a user turn before it", "order")
        seen_user = seen_user or role == "user"
    last = messages[-1].get("role")
    if last != "assistant":
        raise RowError(index, f"messages[{len(messages) - 1}].role",
                       f"the chat ends with a {last!r} turn; it must end with an assistant turn to train on", "last_turn")


def _texts(row: Mapping, fmt: str) -> list[tuple[str, str]]:
    if fmt == "chat":
        return [(f"messages[{i}].content", m["content"]) for i, m in enumerate(row["messages"])]
    return [(name, row[name]) for name in FORMAT_FIELDS[fmt] if isinstance(row.get(name), str)]


def _no_special_tokens(row: Mapping, fmt: str, index: int | None, tokenizer) -> None:
    specials = [t for t in tokenizer.all_special_tokens if t]
    for where, text in _texts(row, fmt):
        for token in specials:
            if token in text:
                raise RowError(index, where, f"contains the special token {token!r}, which would be read as "
                               "template structure, not text", "special_token")


def _fits(row: Mapping, fmt: str, index: int | None, tokenizer, max_length: int) -> None:

    n = len(tokenize_row(row, tokenizer)["input_ids"])
    if n > max_length:
        main = {"completion": "text", "instruction": "output", "chat": "messages"}[fmt]
        raise RowError(index, main, f"the row is {n} tokens, longer than max_length={max_length}, "
                       "and truncation is off", "too_long")


# ---------------------------------------------------------------------------------------------------- many rows


@dataclass
class DropSummary:
    """Every row a stage removed, with the reason: nothing leaves a dataset unaccounted for."""

    total: int = 0
    drops: list[RowError] = field(default_factory=list)
    stage: str = "validation"

    @property
    def kept(self) -> int:
        return self.total - len(self.drops)

    def counts(self) -> dict[str, int]:
        """Dropped rows per kind of problem."""
        return dict(Counter(error.kind for error in self.drops).most_common())

    def rows(self) -> list[int | None]:
        """The indices of the dropped rows."""
        return [error.row for error in self.drops]

    def __str__(self) -> str:
        lines = [f"{self.stage}: kept {self.kept} of {self.total} rows, dropped {len(self.drops)}"]
        for kind, n in self.counts().items():
            example = next(e for e in self.drops if e.kind == kind)
            lines.append(f"  {n:>4} × {kind:<13} {KINDS.get(kind, '')} (e.g. {example})")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):  # IPython shows the table, not the dataclass repr
        printer.text(str(self))


def validate_rows(rows: Iterable, on_error: str = "raise", fmt: str | None = None, tokenizer=None,
                  max_length: int | None = None, truncation: bool = True) -> tuple[list, DropSummary]:
    """Validate Python rows: on_error='raise' stops at the first bad row, 'drop' keeps the good ones.

    Returns (good rows, DropSummary). Rows are numbered by their position in `rows`.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', not {on_error!r}")
    good, summary = [], DropSummary()
    for index, row in enumerate(rows):
        summary.total += 1
        try:
            validate_row(row, index, fmt=fmt, tokenizer=tokenizer, max_length=max_length, truncation=truncation)
        except RowError as error:
            if on_error == "raise":
                raise
            summary.drops.append(error)
            continue
        good.append(row)
    return good, summary


def validate_dataset(dataset, on_error: str = "raise", fmt: str | None = None, tokenizer=None,
                     max_length: int | None = None, truncation: bool = True) -> tuple[Dataset, DropSummary]:
    """Validate a `datasets.Dataset` with a batched map, then drop bad rows with a batched filter.

    Returns (dataset of good rows, DropSummary); rows are named by their `source_row` column if there is
    one, else by their index in the dataset.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', not {on_error!r}")
    columns = dataset.column_names

    def check(batch: dict, indices: Sequence[int]) -> dict:
        errors = []
        for i, index in enumerate(indices):
            # Arrow gives every row every column, filling absent ones with None: compare like a JSON row would.
            row = {key: batch[key][i] for key in columns if batch[key][i] is not None and key != "source_row"}
            index = batch["source_row"][i] if "source_row" in columns else index
            if isinstance(row.get("messages"), list):
                row["messages"] = [_strip_none(m) for m in row["messages"]]
            try:
                validate_row(row, index, fmt=fmt, tokenizer=tokenizer, max_length=max_length, truncation=truncation)
                errors.append("")
            except RowError as error:
                if on_error == "raise":
                    raise
                errors.append(f"{error.kind}\t{error.field or ''}\t{error.reason}")
        return {"_error": errors}

    checked = dataset.map(check, batched=True, with_indices=True)
    summary = DropSummary(total=len(checked))
    names = checked["source_row"] if "source_row" in columns else range(len(checked))
    for index, text in zip(names, checked["_error"]):
        if text:
            kind, where, reason = text.split("\t", 2)
            summary.drops.append(RowError(index, where or None, reason, kind))
    kept = checked.filter(lambda batch: [not e for e in batch["_error"]], batched=True).remove_columns("_error")
    return kept, summary


def _strip_none(message):
    return {k: v for k, v in message.items() if v is not None} if isinstance(message, Mapping) else message
