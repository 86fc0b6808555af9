"""Deduplicate rows (exact and normalized) and split them so that no prompt crosses splits, with a proof.

Leakage is judged on the *normalized prompt*: two rows that ask the same thing (up to case, spacing and
Unicode-equivalent forms) must land in the same split, even when their answers differ, or the test set
measures memory instead of skill. Normalizing keeps every operator, symbol and emoji: "2+3" and "2-3"
are different questions. Keys are computed on the conversation's content, so one example written as an
instruction row and the same example converted to a chat share them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from datasets import DatasetDict

from course_lib.data.encode import SOURCE_ROW
from course_lib.data.formats import conversation
from course_lib.data.validate import as_dataset

if TYPE_CHECKING:
    from datasets import Dataset

_SPACE = re.compile(r"\s+", re.UNICODE)
_SCRIPTS = re.compile("([" + "".join(chr(c) for c in range(0x80, 0x10000)
                                      if unicodedata.decomposition(chr(c)).startswith(("<super>", "<sub>"))) + "]+)")
# What an editor or a copy-paste changes without changing the text: invisible characters and typographic quotes.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200e\u200f\u2060\ufeff\u00ad\ufe0e\ufe0f"))  # and emoji/text variation selectors
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, typographic quotes made plain, invisible characters removed, whitespace collapsed.

    Operators, symbols, punctuation and emoji are kept: they change what a prompt asks.
    """
    # NFKC, except that superscripts and subscripts keep their meaning: "5²" is not "52".
    parts = _SCRIPTS.split(text)
    text = "".join(part if i % 2 else unicodedata.normalize("NFKC", part) for i, part in enumerate(parts))
    text = text.translate(_INVISIBLE).translate(_QUOTES).casefold()
    return _SPACE.sub(" ", text).strip()


def prompt_text(row: Mapping) -> str:
    """What a row asks: every turn before its last answer (system included), or a completion row's whole text.

    Computed on the conversation, so an instruction row and its chat form give the same prompt.
    """
    turns = conversation(row)
    last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=len(turns))
    return "\n".join(m["content"] for m in turns[:last])


def row_text(row: Mapping) -> str:
    """All the text of a row as a conversation, in a fixed order (for normalized deduplication)."""
    turns = conversation(row)
    if len(turns) == 1 and turns[0]["role"] == "text":
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def prompt_key(row: Mapping) -> str:
    """The normalized prompt of a row: the unit a split must never share."""
    return normalize_text(prompt_text(row))


def _exact_key(row: Mapping) -> str:
    return json.dumps({k: v for k, v in row.items() if k != SOURCE_ROW}, sort_keys=True, ensure_ascii=False)


@dataclass
class DedupReport:
    """Which rows deduplication removed, each with the index of the row it duplicated."""

    mode: str
    total: int
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (dropped row, kept row it repeats)

    @property
    def kept(self) -> int:
        return self.total - len(self.duplicates)

    def __str__(self) -> str:
        pairs = ", ".join(f"{d}→{k}" for d, k in self.duplicates[:8])
        more = f", ... ({len(self.duplicates) - 8} more)" if len(self.duplicates) > 8 else ""
        return (f"dedup ({self.mode}): kept {self.kept} of {self.total} rows, dropped {len(self.duplicates)}"
                + (f" [dropped→kept: {pairs}{more}]" if pairs else ""))

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def deduplicate(rows: Sequence[Mapping], mode: str = "normalized") -> tuple[list, DedupReport]:
    """Keep the first of each group of duplicates: 'exact' (identical rows) or 'normalized' (same normalized text)."""
    if mode == "exact":
        key: Callable[[Mapping], str] = _exact_key
    elif mode == "normalized":
        key = lambda row: normalize_text(row_text(row))  # noqa: E731
    else:
        raise ValueError(f"mode must be 'exact' or 'normalized', not {mode!r}")
    first: dict[str, int] = {}
    kept, report = [], DedupReport(mode=mode, total=len(rows))
    for index, row in enumerate(rows):
        k = key(row)
        if k in first:
            report.duplicates.append((index, first[k]))
        else:
            first[k] = index
            kept.append(row)
    return kept, report


def deduplicate_dataset(dataset: Dataset, mode: str = "normalized") -> tuple[Dataset, DedupReport]:
    """`deduplicate` for a `datasets.Dataset`: keys by a batched map, first occurrences kept by a batched filter.

    Rows are named by their `source_row` column when there is one, else by their index.
    """
    if mode not in ("exact", "normalized"):
        raise ValueError(f"mode must be 'exact' or 'normalized', not {mode!r}")
    dataset = as_dataset(dataset)  # a list, DataFrame or file is validated into a Dataset first

    def keys(batch: dict) -> dict:
        rows = batch_rows(batch)
        return {"_key": [_exact_key(r) if mode == "exact" else normalize_text(row_text(r)) for r in rows]}

    keyed = dataset.map(keys, batched=True)
    names = keyed[SOURCE_ROW] if SOURCE_ROW in keyed.column_names else range(len(keyed))
    first: dict[str, int] = {}
    report = DedupReport(mode=mode, total=len(keyed))
    dropped = set()
    for index, (k, name) in enumerate(zip(keyed["_key"], names)):
        if k in first:
            report.duplicates.append((name, first[k]))
            dropped.add(index)
        else:
            first[k] = name
    kept = keyed.filter(lambda _, indices: [i not in dropped for i in indices], batched=True, with_indices=True)
    return kept.remove_columns("_key"), report


def batch_rows(batch: dict) -> list[dict]:
    """The rows of a datasets batch, without the None values Arrow puts in absent fields."""
    n = len(next(iter(batch.values())))
    rows = [{k: batch[k][i] for k in batch if batch[k][i] is not None} for i in range(n)]
    for row in rows:
        if isinstance(row.get("messages"), list):
            row["messages"] = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return rows


def conflicts(rows: Sequence[Mapping]) -> dict[str, list[int]]:
    """Normalized prompts asked with different answers: {prompt key: row indices} (kept, but worth a look).

    Completion rows have no answer of their own, so they never conflict.
    """
    groups: dict[str, dict[str, int]] = {}
    for index, row in enumerate(rows):
        turns = conversation(row)
        answers = [m["content"] for m in turns if m["role"] == "assistant"]
        if not answers:
            continue
        groups.setdefault(prompt_key(row), {}).setdefault(normalize_text(answers[-1]), index)
    return {key: sorted(answers.values()) for key, answers in groups.items() if len(answers) > 1}


# ---------------------------------------------------------------------------------------------------- splits

DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_groups(keys: Sequence[str], fractions: Mapping[str, float] | None = None, seed: int = 0) -> dict[str, list[int]]:
    """Indices per split such that equal keys always share a split; sizes follow `fractions` as closely as groups allow.

    The distinct keys are sorted, shuffled with `seed` and cut by their cumulative row count, so the
    result depends only on the keys and the seed (not on Python's hash seed or the input order).
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    names = list(fractions)
    bounds, acc = [], 0.0
    for name in names:
        acc += fractions[name]
        bounds.append(acc * len(keys))
    out: dict[str, list[int]] = {name: [] for name in names}
    done = 0
    for key in order:
        members = groups[key]
        middle = done + len(members) / 2  # a group goes where its middle row would fall
        target = next((n for n, b in zip(names, bounds) if middle < b), names[-1])
        out[target].extend(members)
        done += len(members)
    return {name: sorted(indices) for name, indices in out.items()}


class SplitTooSmallError(ValueError):
    """A dataset with too few distinct prompts for the requested splits (the message says how many each needs)."""


def check_split_sizes(indices: Mapping[str, Sequence[int]], keys: Sequence[str],
                      fractions: Mapping[str, float] | None = None) -> None:
    """Raise SplitTooSmallError when a split with a positive fraction came out empty, saying what would fill it."""
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    empty = [name for name, idx in indices.items() if not idx and fractions.get(name, 0) > 0]
    if not empty:
        return
    sizes = sorted(Counter(keys).values(), reverse=True)
    largest = f" (the largest repeats one prompt {sizes[0]} times)" if sizes[0] > 1 else ""
    rows = f"{len(keys)} row{'s' if len(keys) != 1 else ''}"
    prompts = f"{len(sizes)} distinct prompt{'s' if len(sizes) != 1 else ''}"
    need = prompts_needed(fractions)
    message = (f"the {' and '.join(map(repr, empty))} split came out empty: {rows} in {prompts}{largest} "
               f"are too few for the fractions {fractions}. Every split needs a prompt of its own "
               f"(rows that share a prompt stay together); these fractions need at least {need} distinct prompts "
               "of about equal size.")
    for other in ({"train": 0.8, "test": 0.2}, {"train": 0.5, "test": 0.5}):
        if other != fractions and prompts_needed(other) <= len(sizes) and sizes[0] <= len(keys) * max(other.values()):
            message += f" Add rows, or ask for fewer splits: fractions={other} needs {prompts_needed(other)}."
            break
    else:
        message += " Add rows with other prompts."
    raise SplitTooSmallError(message)


@functools.lru_cache(maxsize=64)
def _needed(fractions: tuple[tuple[str, float], ...]) -> int:
    wanted = [name for name, f in fractions if f > 0]
    for n in range(1, 10_001):
        parts = split_groups([str(i) for i in range(n)], dict(fractions))
        if all(parts[name] for name in wanted):
            return n
    return 10_001


def prompts_needed(fractions: Mapping[str, float] | None = None) -> int:
    """The fewest distinct prompts (one row each) that give every split with a positive fraction at least one row."""
    return _needed(tuple(dict(fractions or DEFAULT_FRACTIONS).items()))


def split_rows(rows: Sequence[Mapping], fractions: Mapping[str, float] | None = None, seed: int = 0,
               key: Callable[[Mapping], str] = prompt_key) -> dict[str, list]:
    """Split rows into named splits with no normalized prompt shared between two splits."""
    keys = [key(row) for row in rows]
    indices = split_groups(keys, fractions, seed)
    check_split_sizes(indices, keys, fractions)
    splits = {name: [rows[i] for i in idx] for name, idx in indices.items()}
    assert_no_leakage(splits, key)
    return splits


def split_dataset(dataset: Dataset, fractions: Mapping[str, float] | None = None, seed: int = 0) -> DatasetDict:
    """Split a `datasets.Dataset` into a DatasetDict without prompt leakage (keys computed by a batched map).

    A list of rows, a DataFrame or a file is validated into a Dataset first (course_lib.data.pipeline.as_dataset).
    """
    dataset = as_dataset(dataset)

    def keys(batch: dict) -> dict:
        return {"_prompt_key": [prompt_key(row) for row in batch_rows(batch)]}

    keyed = dataset.map(keys, batched=True)
    indices = split_groups(keyed["_prompt_key"], fractions, seed)
    check_split_sizes(indices, keyed["_prompt_key"], fractions)
    result = DatasetDict({name: keyed.select(idx) for name, idx in indices.items()})
    assert_no_leakage({name: ds["_prompt_key"] for name, ds in result.items()}, key=None)
    return DatasetDict({name: ds.remove_columns("_prompt_key") for name, ds in result.items()})


class LeakageError(AssertionError):
    """A normalized prompt occurs in more than one split."""


def leakage(splits: Mapping[str, Sequence], key: Callable | None = prompt_key) -> dict[str, dict[str, list[int]]]:
    """Every normalized prompt found in two or more splits: {key: {split: [row indices]}}; empty means no leakage.

    With key=None the splits already hold keys (strings) instead of rows.
    """
    where: dict[str, dict[str, list[int]]] = {}
    for name, rows in splits.items():
        for index, row in enumerate(rows):
            k = row if key is None else key(row)
            where.setdefault(k, {}).setdefault(name, []).append(index)
    return {k: found for k, found in where.items() if len(found) > 1}


def assert_no_leakage(splits: Mapping[str, Sequence], key: Callable | None = prompt_key) -> dict:
    """Prove that no normalized prompt is in two splits; raise LeakageError naming the first shared prompts.

    Returns the evidence: rows and distinct prompts per split, and the (empty) overlap of every pair.
    """
    shared = leakage(splits, key)
    if shared:
        shown = "; ".join(f"{k[:60]!r} in {dict(v)}" for k, v in list(shared.items())[:3])
        raise LeakageError(f"{len(shared)} normalized prompt(s) occur in more than one split: {shown}")
    keys = {name: {row if key is None else key(row) for row in rows} for name, rows in splits.items()}
    names = list(splits)
    return {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "distinct_prompts": {name: len(k) for name, k in keys.items()},
        "overlaps": {f"{a}&{b}": len(keys[a] & keys[b]) for i, a in enumerate(names) for b in names[i + 1 :]},
    }


def fingerprint(rows: Sequence[Mapping]) -> str:
    """A short hash of a split's prompts, to pin a split in a report and notice when it changes."""
    digest = hashlib.sha256("\n".join(sorted(prompt_key(row) for row in rows)).encode())
    return digest.hexdigest()[:12]
