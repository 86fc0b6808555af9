"""Curate rows before training: quality filters, near-duplicates, balance, and realistic noise to test them on.

Validation (course_lib.data.validate) decides whether a row *can* train; curation decides whether it *should*.
A quality check is a function `row -> reason or None`; `filter_rows` runs a list of them and drops each row at the
first reason, counting every drop (`FilterReport`). `near_duplicates` finds rows whose examples (input and answer)
share most of their character 5-grams (MinHash candidates, confirmed by the exact Jaccard similarity), where
`splits.deduplicate` finds only identical or normalized-identical rows. `balance` counts a row property (which
fields an answer fills, a class label) so that a skew is seen before it is learned. `data.noise` makes the faults
these checks are for, to measure them on data whose faults are known.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import fastjsonschema
import numpy as np

from course_lib.core import tasks
from course_lib.data.formats import conversation
from course_lib.data.splits import normalize_text

Check = Callable[[Mapping], "str | None"]

# ------------------------------------------------------------------------------------------- row parts


def turns(row: Mapping) -> list[dict]:
    """The row's messages (`formats.conversation`), read straight from a chat row: converting costs ~1 ms a row."""
    messages = row.get("messages") if isinstance(row, Mapping) else None
    if isinstance(messages, list) and all(isinstance(m, Mapping) and "role" in m for m in messages):
        return messages
    return conversation(row)


def answer_text(row: Mapping) -> str:
    """The row's last assistant turn (a completion row: its text)."""
    answers = [m["content"] for m in turns(row) if m["role"] in ("assistant", "text")]
    if not answers:
        raise ValueError(f"the row has no assistant turn: {str(row)[:80]}")
    return answers[-1]


def input_text(row: Mapping) -> str:
    """What the row gives the model to work on: its user turns (a completion row: its text), without the system turn.

    The system instruction is usually the same in every row; comparing it would make every pair look alike.
    """
    users = [m["content"] for m in turns(row) if m["role"] in ("user", "text")]
    return "\n".join(users)


def example_text(row: Mapping) -> str:
    """The row's user and assistant turns (not the system turn): the example itself, for near-duplicate search."""
    return "\n".join(m["content"] for m in turns(row) if m["role"] != "system")


def parsed_answer(row: Mapping) -> dict | None:
    """The answer as a JSON object, or None when it is not one."""
    try:
        value = json.loads(answer_text(row))
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------- quality checks


def answer_is_json(row: Mapping) -> str | None:
    """'not_json' when the answer does not parse as a JSON object (a truncated or chatty reply)."""
    return None if parsed_answer(row) is not None else "not_json"


def answer_matches_schema(schema: Mapping) -> Check:
    """A check: 'schema' when the parsed answer breaks the JSON schema (a missing key, a number written as text)."""
    # fastjsonschema (nbformat's validator) compiles the schema once; importing jsonschema costs seconds, because
    # its format checkers build a URI grammar at import
    validate = fastjsonschema.compile(dict(schema))

    def check(row: Mapping) -> str | None:
        value = parsed_answer(row)
        if value is None:
            return "not_json"
        try:
            validate(value)
        except fastjsonschema.JsonSchemaException:
            return "schema"
        return None

    check.__name__ = "answer_matches_schema"
    return check


def length_within(low: int, high: int) -> Check:
    """A check: 'too_short' / 'too_long' when the input's character count is outside [low, high]."""
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")

    def check(row: Mapping) -> str | None:
        n = len(input_text(row).strip())
        return "too_short" if n < low else "too_long" if n > high else None

    check.__name__ = "length_within"
    return check


# UTF-8 read as Windows-1252 (mojibake): "JosÃ©", "â€“"; U+FFFD is what a decoder writes for bytes it cannot read.
_MOJIBAKE = re.compile("[\u00c2\u00c3\u00e2][\u0080-\u00bf\u0152-\u0192\u02c6-\u02dc\u2013-\u203a\u20ac\u2122]|\ufffd")
_RUN = re.compile(r"(.)\1{7,}")


def looks_like_text(row: Mapping, min_letters: float = 0.4) -> str | None:
    """'garbage' when the input or answer holds mojibake or a long run of one character, or the input is mostly not letters."""
    text = input_text(row)
    for part in (text, answer_text(row)):
        if _MOJIBAKE.search(part) or _RUN.search(part):
            return "garbage"
    visible = [ch for ch in text if not ch.isspace()]
    if visible and sum(ch.isalpha() for ch in visible) / len(visible) < min_letters:
        return "garbage"
    return None


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_in_words(n: int) -> str:
    """An integer from 0 to 99 in English words ('forty-two'); other numbers as digits."""
    if not 0 <= n < 100:
        return str(n)
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens - 2] + (f"-{_ONES[ones]}" if ones else "")


def _number_patterns(n: int) -> list[str]:
    # "36" but not "136"; "thirty" in "thirty-year-old" but not in "thirty-six"
    patterns = [rf"(?<!\d){n}(?!\d)"]
    if 0 <= n < 100:
        patterns.append(rf"(?<![\w-]){number_in_words(n)}(?!\w|-(?:{'|'.join(_ONES[1:10])})\b)")
    return patterns


def answer_grounded(row: Mapping) -> str | None:
    """'ungrounded' when a filled answer value does not occur in the input (an extraction copies, it never invents).

    Text values must appear in the input (normalized); a number as digits or in words ("42" or "forty-two").
    Rows whose answer is not a JSON object are left to `answer_is_json`.
    """
    value = parsed_answer(row)
    if value is None:
        return None
    text = normalize_text(input_text(row))
    for item in value.values():
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not any(re.search(pattern, text) for pattern in _number_patterns(item)):
                return "ungrounded"
        elif normalize_text(str(item)) not in text:
            return "ungrounded"
    return None


def task_checks() -> list[Check]:
    """The quality checks for the course task, cheapest and most basic first (the first failing one names the drop)."""
    return [looks_like_text, answer_is_json, answer_matches_schema(tasks.answer_schema()), length_within(10, 400),
            answer_grounded]


@dataclass
class FilterReport:
    """Which rows the quality checks dropped, and why (the first failing check of each row)."""

    total: int
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)

    @property
    def kept(self) -> int:
        return self.total - len(self.dropped)

    def counts(self) -> dict[str, int]:
        """Dropped rows per reason, most common first."""
        return dict(Counter(reason for _, reason in self.dropped).most_common())

    def rows_for(self, reason: str) -> list[int]:
        """The rows dropped for `reason`."""
        return [row for row, why in self.dropped if why == reason]

    def __str__(self) -> str:
        lines = [f"quality filters: kept {self.kept} of {self.total} rows, dropped {len(self.dropped)}"]
        for reason, n in self.counts().items():
            first = ", ".join(map(str, self.rows_for(reason)[:5]))
            lines.append(f"  {reason:<12} {n:>5}  rows {first}{', ...' if n > 5 else ''}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def filter_rows(rows: Sequence[Mapping], checks: Sequence[Check] | None = None) -> tuple[list, FilterReport]:
    """Keep the rows that pass every check (None: `task_checks()`); the report names each dropped row's first reason."""
    checks = task_checks() if checks is None else list(checks)
    kept, report = [], FilterReport(total=len(rows))
    for index, row in enumerate(rows):
        reason = next((r for r in (check(row) for check in checks) if r), None)
        if reason is None:
            kept.append(row)
        else:
            report.dropped.append((index, reason))
    return kept, report


# ------------------------------------------------------------------------------------------- near-duplicates

def shingles(text: str, n: int = 5) -> set[int]:
    """The character n-grams of the normalized text, as stable 32-bit hashes (a text shorter than n is one shingle)."""
    text = normalize_text(text)
    grams = {text[i : i + n] for i in range(max(1, len(text) - n + 1))}
    return {zlib.crc32(g.encode("utf-8")) for g in grams}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash(sets: Sequence[set[int]], num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """MinHash signatures, shape (len(sets), num_perm): the share of equal entries estimates the Jaccard similarity."""
    rng = np.random.default_rng(seed)
    # num_perm random hash functions h(x) = ((a*x + b) mod 2^64) >> 32 with odd a (multiply-shift hashing):
    # uint64 arithmetic wraps, which is the mod 2^64
    a = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    out = np.empty((len(sets), num_perm), dtype=np.uint64)
    for i, items in enumerate(sets):
        x = np.fromiter(items, dtype=np.uint64, count=len(items))[:, None]
        out[i] = ((a * x + b) >> np.uint64(32)).min(axis=0)
    return out


@dataclass(frozen=True)
class NearDuplicate:
    """Row `dropped` repeats row `kept`: `similarity` is the Jaccard similarity of their examples' character n-grams."""

    dropped: int
    kept: int
    similarity: float


def near_duplicates(rows: Sequence[Mapping], threshold: float = 0.85, key: Callable[[Mapping], str] = example_text,
                    n: int = 5, num_perm: int = 128, bands: int = 32, seed: int = 0) -> list[NearDuplicate]:
    """Each row whose example (`key`) is at least `threshold` Jaccard-similar to an earlier kept row, with that row.

    MinHash with `bands` bands of `num_perm // bands` rows (locality-sensitive hashing) proposes candidate pairs in
    about linear time; every candidate is confirmed with the exact Jaccard similarity, so no pair below the threshold
    is reported. With 32 bands of 4, a pair at similarity 0.85 becomes a candidate with probability 1 - 6e-11, and
    one at 0.5 with 0.87 (then dropped by the exact check). The input and the answer are compared together: two
    short inputs from one template ("Ana is 34." / "Ivo is 34.") share most of their n-grams, while a re-typed copy
    also repeats its answer.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm % bands:
        raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
    sets = [shingles(key(row), n) for row in rows]
    signatures = minhash(sets, num_perm, seed)
    width = num_perm // bands
    candidates: dict[int, set[int]] = {}
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        for i, signature in enumerate(signatures[:, band * width : (band + 1) * width]):
            buckets.setdefault(signature.tobytes(), []).append(i)
        for members in buckets.values():
            for j in members[1:]:
                candidates.setdefault(j, set()).update(m for m in members if m < j)
    found, dropped = [], set()
    for j in range(len(rows)):
        best = max(((jaccard(sets[i], sets[j]), i) for i in candidates.get(j, ()) if i not in dropped),
                   default=(0.0, -1), key=lambda pair: (pair[0], -pair[1]))
        if best[0] >= threshold:
            found.append(NearDuplicate(j, best[1], best[0]))
            dropped.add(j)
    return found


def drop_near_duplicates(rows: Sequence[Mapping], threshold: float = 0.85, **kwargs) -> tuple[list, list[NearDuplicate]]:
    """The rows without their near-duplicates (the first of each group is kept), and the pairs found."""
    pairs = near_duplicates(rows, threshold, **kwargs)
    gone = {p.dropped for p in pairs}
    return [row for i, row in enumerate(rows) if i not in gone], pairs


def closest_pairs(rows: Sequence[Mapping], k: int = 3, key: Callable[[Mapping], str] = example_text,
                  n: int = 5) -> list[tuple[float, int, int]]:
    """The `k` most similar pairs (similarity, i, j) by exact Jaccard of the n-grams (all pairs: a few hundred rows)."""
    if len(rows) > 3000:
        raise ValueError(f"closest_pairs compares all pairs; {len(rows)} rows is too many (use near_duplicates)")
    sets = [shingles(key(row), n) for row in rows]
    scored = [(jaccard(sets[i], sets[j]), i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))]
    return sorted(scored, key=lambda t: (-t[0], t[1], t[2]))[:k]


# ------------------------------------------------------------------------------------------- balance


def fields_filled(row: Mapping) -> str:
    """Which fields of the course task's answer are filled, e.g. 'name+age+city' ('not JSON' when it does not parse)."""
    value = parsed_answer(row)
    if value is None:
        return "not JSON"
    filled = [f for f in tasks.FIELDS if value.get(f) is not None]
    return "+".join(filled) or "none"


@dataclass
class Balance:
    """How often each value of a row property occurs."""

    name: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ratio(self) -> float:
        """Most common over least common (1.0 is perfectly balanced)."""
        return max(self.counts.values()) / min(self.counts.values()) if self.counts else float("nan")

    def __str__(self) -> str:
        lines = [f"{self.name}: {len(self.counts)} values over {self.total} rows, most/least common = {self.ratio:.1f}x"]
        top = max(self.counts.values(), default=1)
        for value, n in self.counts.items():
            lines.append(f"  {value:<22} {n:>5} {n / self.total:6.1%} {'#' * max(1, round(30 * n / top))}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def balance(rows: Sequence[Mapping], key: Callable[[Mapping], str] = fields_filled, name: str | None = None) -> Balance:
    """Count `key(row)` over the rows, most common first (default: which answer fields are filled)."""
    counts = Counter(str(key(row)) for row in rows)
    return Balance(name or getattr(key, "__name__", "value"), dict(counts.most_common()))


def field_fill_rates(rows: Sequence[Mapping], fields: Sequence[str] = tasks.FIELDS) -> dict[str, float]:
    """The share of rows whose parsed answer fills each field (rows that do not parse count as empty)."""
    if not rows:
        raise ValueError("field_fill_rates needs at least one row")
    parsed = [parsed_answer(row) or {} for row in rows]
    return {f: sum(p.get(f) is not None for p in parsed) / len(rows) for f in fields}
