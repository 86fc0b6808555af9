"""Reject bad rows with an error naming the row and the field; drop nothing silently.

Validation is the one gate: a row that passes `validate_row` tokenizes, masks, packs and splits, because
validation maps the learner's schema to a library format (course_lib.data.schemas), checks every field, and
then tokenizes the row once with the tokenizer it will train with. `validate_rows` reads any source (a list,
a file, a DataFrame, a Dataset or DatasetDict) and either raises on the first bad row or drops the bad rows and
returns a DropSummary that says which rows went and why.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from datasets import Dataset

from course_lib.core.models import load_tokenizer
from course_lib.data.encode import IGNORE_INDEX, SOURCE_ROW, tokenize_row
from course_lib.data.formats import FORMAT_FIELDS, ROLES, strip_eos
from course_lib.data.schemas import SCHEMA_FIELDS, Canonical, SchemaError, canonical_row
from course_lib.data.sources import UnreadableRow, load_rows

# Short names for the kinds of problem; a DropSummary counts rows by these.
KINDS = {
    "not_a_row": "the row is not a JSON object",
    "unreadable": "the file holds a line or record that could not be parsed",
    "format": "the fields do not match one format",
    "missing": "a required field is missing or null",
    "empty": "a text field is empty",
    "type": "a field has the wrong type",
    "role": "a message has an unknown role",
    "order": "the turns are in an order the chat template cannot train on",
    "last_turn": "the chat does not end with an assistant turn",
    "content": "a message's content is not text",
    "unknown_key": "a message has a key other than role and content (it would be ignored)",
    "encoding": "the text is not valid Unicode (a lone surrogate)",
    "special_token": "the text contains a special token of the tokenizer",
    "tokenize": "the tokenizer or chat template fails on the row",
    "too_long": "the row is longer than max_length and truncation is off",
}
# What to do about each kind, where the reason itself does not already say it.
HINTS = {
    "not_a_row": 'make each row an object, e.g. {"text": "..."}',
    "unreadable": "fix that line; the other rows are read",
    "format": "use one schema per row (the pinned format, where one is given), or convert the row",
    "missing": "add it, or remove the row",
    "empty": "write the text, or remove the row",
    "type": "give it the type named, or remove the row",
    "role": "use system, user or assistant; in ShareGPT, system, human or gpt",
    "order": "put an optional system turn first and a user turn before each assistant turn",
    "last_turn": "end the chat with the assistant's reply, or remove the last turn",
    "content": "give the content as text",
    "tokenize": "simplify the row, or leave it out: this model's chat template cannot render it",
    "too_long": "shorten it or raise max_length",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_ANSWER_FIELDS = ("text", "output", "completion")  # plain text the library ends with one EOS itself


class RowError(ValueError):
    """One bad row: `row` (its index), `field` (e.g. 'messages[2].role'), `kind` (a key of KINDS), `origin` (file line).

    The message ends with what to do: `hint`, or by default the kind's entry in HINTS.
    """

    def __init__(self, row: int | None, field: str | None, reason: str, kind: str = "type", origin: str | None = None,
                 hint: str | None = None):
        self.row, self.field, self.reason, self.kind, self.origin = row, field, reason, kind, origin
        self.hint = HINTS.get(kind, "") if hint is None else hint
        where = "row ?" if row is None else f"row {row}"
        if origin:
            where += f" ({origin})"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}" + (f" (to fix: {self.hint})" if self.hint else ""))

    def __reduce__(self):  # keep the attributes through pickling (datasets' multiprocessing, nbgrader)
        return (RowError, (self.row, self.field, self.reason, self.kind, self.origin, self.hint))


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """The course model's tokenizer: what rows are checked against when no tokenizer is given."""
    return load_tokenizer()


def validate_row(row, index: int | None = None, fmt: str | None = None, tokenizer=None,
                 max_length: int | None = None, truncation: bool = True) -> str:
    """Check one row and return its format; raise RowError naming the row and field of the first problem.

    `fmt` pins the format a dataset must have; without it the row's fields decide. `tokenizer` is the one the
    rows will train with (None: the course model's): text holding one of its special or control tokens is
    rejected, the row must tokenize, and with max_length it must fit (truncation off) or keep an answer token
    after truncation (truncation on).
    """
    return clean_row(row, index, fmt, tokenizer, max_length, truncation).format


def clean_row(row, index: int | None = None, fmt: str | None = None, tokenizer=None, max_length: int | None = None,
              truncation: bool = True) -> Canonical:
    """`validate_row`, returning the row in its library format (Canonical.row) with the fields it left out."""
    if isinstance(row, UnreadableRow):
        raise RowError(index, None, row.reason, "unreadable")
    if not isinstance(row, Mapping):
        raise RowError(index, None, f"expected a JSON object, got {type(row).__name__}", "not_a_row")
    try:
        canonical = canonical_row(row)
    except SchemaError as error:
        if fmt is not None and error.kind == "missing" and error.field is None:
            _detect(row, index, fmt)  # names the field the pinned format needs
        raise RowError(index, error.field, error.reason, error.kind) from None
    try:
        found = _check(canonical.row, index, fmt)
        tokenizer = default_tokenizer() if tokenizer is None else tokenizer
        _no_special_tokens(canonical.row, found, index, tokenizer)
        _tokenizes(canonical.row, found, index, tokenizer, max_length, truncation)
    except RowError as error:  # name the learner's field, e.g. conversations[2].from rather than messages[2].role
        name = canonical.rename(error.field) if error.field else None
        raise RowError(index, name, error.reason, error.kind, hint=error.hint) from None
    canonical.format = found
    return canonical


def _check(row: Mapping, index: int | None, fmt: str | None) -> str:
    found = _detect(row, index, fmt)
    if found == "completion":
        _text(row, "text", index)
    elif found == "instruction":
        _text(row, "instruction", index)
        _text(row, "output", index)
        if row.get("input") is not None and not isinstance(row["input"], str):
            raise RowError(index, "input", f"must be text (or absent), got {type(row['input']).__name__}", "type")
    elif found == "prompt_completion":
        _text(row, "prompt", index)
        _text(row, "completion", index)
    else:
        _chat(row.get("messages"), index)
    for where, text in _texts(row, found):
        bad = _SURROGATE.search(text)
        if bad:
            raise RowError(index, where, f"holds a lone surrogate (U+{ord(bad.group()):04X}) at character {bad.start()}: "
                           "the text is not valid Unicode (often half of an emoji cut by an export); remove or fix "
                           "that character", "encoding")
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
        for required in {"completion": ("text",), "instruction": ("instruction", "output"), "chat": ("messages",),
                         "prompt_completion": ("prompt", "completion")}[fmt]:
            if row.get(required) is None:
                raise RowError(index, required, f"is missing (a {fmt} row needs it)", "missing")
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
        hint = ('write numbers as text, e.g. "4"; pandas guesses number columns, so read the file with dtype=str '
                "or pass the file itself") if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        raise RowError(index, where, f"must be text, got {type(value).__name__}", kind, hint=hint)
    if _blank_text(value):
        raise RowError(index, where, "is empty", "empty")
    return value


def _blank_text(text: str) -> bool:
    """Nothing but whitespace and invisible format characters (zero-width spaces, BOMs)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def _chat(messages, index: int | None) -> None:
    if not isinstance(messages, (list, tuple)):
        repr_note = (" (it looks like a Python repr, not JSON: write the column with json.dumps)"
                     if isinstance(messages, str) and messages.lstrip().startswith(("[{'", "[ {'")) else "")
        raise RowError(index, "messages", f"must be a list of messages, got {type(messages).__name__}{repr_note}",
                       "type")
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
        if _blank_text(content):
            raise RowError(index, f"{where}.content", "is empty", "empty")
        extra = sorted(str(k) for k, v in message.items() if k not in ("role", "content") and v is not None)
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


_CONTROL_CACHE: dict[tuple[int, int, int], tuple[str, ...]] = {}


def control_tokens(tokenizer) -> tuple[str, ...]:
    """Every special or added control token of a tokenizer (longest first): text holding one is not plain text."""
    # adding tokens changes the length, marking a known token special changes the special list
    key = (id(tokenizer), len(tokenizer), len(tokenizer.all_special_tokens))
    if key not in _CONTROL_CACHE:
        tokens = set(tokenizer.all_special_tokens)
        for added in tokenizer.added_tokens_decoder.values():
            # special ones, and markup-shaped ones (<think>, <<SYS>>, [INST], <|tool|>) a template may use unflagged
            if added.special or re.search(r"[<>\[\]|{}]", added.content):
                tokens.add(added.content)
        _CONTROL_CACHE[key] = tuple(sorted((t for t in tokens if t), key=len, reverse=True))
    return _CONTROL_CACHE[key]


def _no_special_tokens(row: Mapping, fmt: str, index: int | None, tokenizer) -> None:
    specials = control_tokens(tokenizer)
    for where, text in _texts(row, fmt):
        if where in _ANSWER_FIELDS:  # one EOS at the end of plain text is kept (exactly one), not refused
            text = strip_eos(text, tokenizer.eos_token)
            if _blank_text(text):
                raise RowError(index, where, "holds nothing but the EOS token", "empty")
        for token in specials:
            if token in text:
                raise RowError(index, where, f"contains the special token {token!r}, which would be read as "
                               "template structure, not text; remove it (the library adds the tokens a row needs)",
                               "special_token")


def _tokenizes(row: Mapping, fmt: str, index: int | None, tokenizer, max_length: int | None, truncation: bool) -> None:
    """Tokenize the row as training will: whatever passes validation must not fail later."""
    main = {"completion": "text", "instruction": "output", "chat": "messages", "prompt_completion": "completion"}[fmt]
    try:
        encoded = tokenize_row(row, tokenizer)
    except Exception as error:  # noqa: BLE001 - any failure of the tokenizer or template is this row's problem
        raise RowError(index, main, f"the tokenizer or chat template fails on this row ({type(error).__name__}: "
                       f"{error})", "tokenize") from None
    n = len(encoded["input_ids"])
    if max_length is not None and not truncation and n > max_length:
        raise RowError(index, main, f"the row is {n} tokens, longer than max_length={max_length}, "
                       "and truncation is off", "too_long")
    if max_length is not None and not any(label != IGNORE_INDEX for label in encoded["labels"][:max_length]):
        first = next((i for i, label in enumerate(encoded["labels"]) if label != IGNORE_INDEX), n)
        raise RowError(index, main, f"its answer starts at token {first}, so truncation to max_length={max_length} "
                       "leaves nothing to learn", "too_long")


# ---------------------------------------------------------------------------------------------------- many rows


@dataclass
class DropSummary:
    """Every row a stage removed, with the reason: nothing leaves a dataset unaccounted for."""

    total: int = 0
    drops: list[RowError] = field(default_factory=list)
    stage: str = "validation"
    ignored: dict[str, int] = field(default_factory=dict)  # field no schema uses -> rows that have it
    kept_rows: list = field(default_factory=list)  # the names of the kept rows, in order
    schemas: dict[str, int] = field(default_factory=dict)  # schema -> kept rows

    @property
    def kept(self) -> int:
        return self.total - len(self.drops)

    def counts(self) -> dict[str, int]:
        """Dropped rows per kind of problem."""
        return dict(Counter(error.kind for error in self.drops).most_common())

    def rows(self) -> list[int | None]:
        """The indices of the dropped rows."""
        return [error.row for error in self.drops]

    def first_rows(self, kind: str, n: int = 5) -> list[int | None]:
        """The first `n` dropped rows of one kind."""
        return [error.row for error in self.drops if error.kind == kind][:n]

    def __str__(self) -> str:
        lines = [f"{self.stage}: kept {self.kept} of {self.total} rows, dropped {len(self.drops)}"]
        if self.schemas:
            lines[0] += f" (kept rows by schema: {', '.join(f'{k} {v}' for k, v in self.schemas.items())})"
        for kind, n in self.counts().items():
            example = next(e for e in self.drops if e.kind == kind)
            lines.append(f"  {n:>4} × {kind:<13} {KINDS.get(kind, '')} (e.g. {example})")
        if self.ignored:
            shown = ", ".join(f"{name!r} ({n} rows)" for name, n in self.ignored.items())
            lines.append(f"  fields no schema uses, left out of training: {shown}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):  # IPython shows the table, not the dataclass repr
        printer.text(str(self))


def validate_rows(rows: Iterable, on_error: str = "raise", fmt: str | None = None, tokenizer=None,
                  max_length: int | None = None, truncation: bool = True) -> tuple[list[dict], DropSummary]:
    """Validate rows from any source: on_error='raise' stops at the first bad row, 'drop' keeps the good ones.

    `rows` is a list of rows, a file path, a pandas DataFrame, a `datasets.Dataset` or `DatasetDict`
    (course_lib.data.sources reads them). Returns (good rows in their library format, DropSummary); rows are
    numbered by their position in the input, and a file's rows also name their line.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', not {on_error!r}")
    loaded = load_rows(rows)
    origins = [None if o == f"row {i}" else o for i, o in enumerate(loaded.origins)]
    return validate_named(list(loaded), range(len(loaded)), origins, on_error, fmt, tokenizer, max_length, truncation)


def validate_named(rows: Sequence, names: Iterable[int], origins: Sequence[str | None], on_error: str = "raise",
                   fmt: str | None = None, tokenizer=None, max_length: int | None = None,
                   truncation: bool = True) -> tuple[list[dict], DropSummary]:
    """`validate_rows` for rows that carry their own numbers (`names`) and file lines (`origins`, None where none)."""
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    good, summary = [], DropSummary()
    ignored: Counter = Counter()
    schemas: Counter = Counter()
    for row, name, origin in zip(rows, names, origins):
        summary.total += 1
        try:
            canonical = clean_row(row, name, fmt, tokenizer, max_length, truncation)
        except RowError as error:
            error = RowError(error.row, error.field, error.reason, error.kind, origin, error.hint) if origin else error
            if on_error == "raise":
                raise error from None
            summary.drops.append(error)
            continue
        ignored.update(canonical.ignored)
        schemas[canonical.schema] += 1
        good.append(canonical.row)
        summary.kept_rows.append(name)
    summary.ignored, summary.schemas = dict(ignored.most_common()), dict(schemas.most_common())
    return good, summary


def to_dataset(rows: Sequence[Mapping]) -> Dataset:
    """A `datasets.Dataset` of validated rows, with every field any row has.

    `Dataset.from_list` takes its columns from the first row only and silently drops fields the
    first row lacks, so the columns are the union of all rows' fields (absent ones become None).
    Arrow holds one type per column, nested fields included: a field whose type changes between rows is
    named with the rows, instead of Arrow's error that names neither.
    """
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    kinds: dict[str, dict[str, int]] = {}  # field path -> kind of value -> first row with it
    for index, row in enumerate(rows):
        for name in columns:
            _kinds(row.get(name), name, index, kinds)
    for path, seen in kinds.items():
        if len(seen) > 1:
            shown = ", ".join(f"{kind} (row {index})" for kind, index in seen.items())
            raise ValueError(f"field {path!r} holds values of several types: {shown}; make them one type, or leave "
                             "the field out (validate_rows keeps only the fields training uses)")
    return Dataset.from_list([{name: row.get(name) for name in columns} for row in rows])


def _kinds(value, path: str, index: int, kinds: dict) -> None:
    """Record the kind of value at every nested path: Arrow needs one per path (numbers are one kind)."""
    if value is None:
        return
    if isinstance(value, dict):
        kind = "an object"
        for key, item in value.items():
            _kinds(item, f"{path}.{key}", index, kinds)
    elif isinstance(value, (list, tuple)):
        kind = "a list"
        for item in value:
            _kinds(item, f"{path}[]", index, kinds)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        kind = "number"
    else:
        kind = type(value).__name__
    kinds.setdefault(path, {}).setdefault(kind, index)


def as_dataset(source, tokenizer=None) -> Dataset:
    """A Dataset as it is; any other source (rows, a file, a DataFrame, a DatasetDict) validated into one.

    Validation raises on the first bad row, naming it; the result's `source_row` column numbers the rows.
    """
    if isinstance(source, Dataset):
        validated, _ = validate_dataset(source, tokenizer=tokenizer)
        return source if _in_library_format(source) else validated  # keep extra columns the caller may want
    good, summary = validate_rows(source, on_error="raise", tokenizer=tokenizer)
    return to_dataset(good).add_column(SOURCE_ROW, summary.kept_rows)


def _in_library_format(dataset: Dataset) -> bool:
    """True for a Dataset of validated rows (what to_dataset builds): text columns of the formats, chats of role/content.

    Other columns (an id, a source) may ride along; the fields of another schema may not.
    """
    features = dataset.features
    text = {name for fields in FORMAT_FIELDS.values() for name in fields if name != "messages"}
    others = {name for fields in SCHEMA_FIELDS.values() for name in fields} - text - {"messages"}
    for name, feature in features.items():
        if name == SOURCE_ROW:
            continue
        if name in text:
            if getattr(feature, "dtype", None) != "string":
                return False
        elif name == "messages":
            turn = getattr(feature, "feature", None)
            if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
                return False
        elif name in others:
            return False
    return True


def validate_dataset(dataset, on_error: str = "raise", fmt: str | None = None, tokenizer=None,
                     max_length: int | None = None, truncation: bool = True) -> tuple[Dataset, DropSummary]:
    """`validate_rows` for a `datasets.Dataset`: returns (Dataset of the good rows in their library format, DropSummary).

    Rows are named by their `source_row` column if there is one, else by their index in the dataset; the
    result keeps that name in its `source_row` column.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', not {on_error!r}")
    rows = load_rows(dataset)
    names = [row.pop(SOURCE_ROW, i) if isinstance(row, dict) else i for i, row in enumerate(rows)]
    origins = [None] * len(rows)
    good, summary = validate_named(rows, names, origins, on_error, fmt, tokenizer, max_length, truncation)
    return to_dataset(good).add_column(SOURCE_ROW, summary.kept_rows), summary
