"""Realistic faults for rows of the course task, planted on purpose: to measure what filters catch and what faults cost.

`add_noise` replaces a fraction of the rows with faulty versions and says which fault each row got: an annotator's
wrong or emptied value, an answer cut off by an export, text garbled by a wrong decoding (mojibake), a re-typed
copy of another row. Real deliveries have these faults without the labels; planted ones let the curation checks
(`data.curation`) and a training run (`evaluation.data_quality`) be scored against the truth.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from course_lib.core import tasks
from course_lib.data.curation import answer_text, parsed_answer, turns

NOISE_KINDS = ("wrong_value", "truncated", "mojibake", "near_copy")
NOISE_MEANING = {
    "wrong_value": "an annotator's slip: one filled field holds another row's value, or was left empty",
    "truncated": "the export cut the answer off: the JSON does not close",
    "mojibake": "UTF-8 read as Windows-1252 somewhere on the way: 'Chloé' became 'ChloÃ©'",
    "near_copy": "another row's example again, re-typed (a typo, other punctuation, a lead-in, lower case)",
}


def _chat_with(row: Mapping, user: str | None = None, answer: str | None = None) -> dict:
    messages = [dict(m) for m in turns(row)]
    if user is not None:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = user
    if answer is not None:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages[last]["content"] = answer
    return {"messages": messages}


def _user(row: Mapping) -> str:
    return [m["content"] for m in turns(row) if m["role"] == "user"][-1]


def _typo(text: str, rng: random.Random) -> str:
    # two neighbouring letters of one word swapped, as fast typing does
    spots = [i for i in range(len(text) - 1) if text[i].isalpha() and text[i + 1].isalpha() and text[i] != text[i + 1]]
    if not spots:
        return text + " "
    i = rng.choice(spots)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def corrupt(row: Mapping, kind: str, rng: random.Random, donors: Sequence[Mapping]) -> dict:
    """One chat row of the course task with one fault of `kind` (see NOISE_MEANING); `donors` lend wrong values."""
    if kind == "wrong_value":
        answer = parsed_answer(row) or {}
        filled = [f for f in tasks.FIELDS if answer.get(f) is not None]
        if not filled:
            raise ValueError("wrong_value needs a row with a filled field")
        name = rng.choice(filled)
        others = [v for v in ((parsed_answer(d) or {}).get(name) for d in donors) if v is not None and v != answer[name]]
        # half the slips paste another row's value (a filter can see it is not in the text), half leave the field
        # empty (a valid, grounded answer that is simply wrong: no filter sees it)
        answer = {**answer, name: rng.choice(others) if others and rng.random() < 0.5 else None}
        return _chat_with(row, answer=tasks.answer_to_json(answer))
    if kind == "truncated":
        text = answer_text(row)
        return _chat_with(row, answer=text[: rng.randint(len(text) // 3, len(text) - 2)])
    if kind == "mojibake":
        garble = lambda s: s.encode("utf-8").decode("cp1252", errors="replace")  # noqa: E731
        user = _user(row)
        if user.isascii():  # plain ASCII survives a wrong decoding; a typographic dash, as editors write it, does not
            user = user.replace(" ", " \u2013 ", 1)
        return _chat_with(row, user=garble(user), answer=garble(answer_text(row)))
    if kind == "near_copy":
        source = rng.choice(donors)
        edit = rng.choice([_typo, lambda s, r: s.rstrip(".!") + rng.choice(["", "!", " ."]), lambda s, r: "FYI: " + s,
                           lambda s, r: s.lower()])
        return _chat_with(source, user=edit(_user(source), rng))
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {', '.join(NOISE_KINDS)}")


def add_noise(rows: Sequence[Mapping], fraction: float, seed: int = 0,
              kinds: Sequence[str] = NOISE_KINDS) -> tuple[list[dict], list[str | None]]:
    """The rows with `fraction` of them replaced by faulty versions, and each row's fault (None: clean).

    The number of rows stays the same, so a noisy set costs the same to train on as the clean one. Faults cycle
    through `kinds` in a seeded order; which rows get them is seeded too.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {NOISE_KINDS}, got {list(kinds)}")
    rng = random.Random(seed)
    out: list[dict] = [dict(r) for r in rows]
    labels: list[str | None] = [None] * len(rows)
    chosen = sorted(rng.sample(range(len(rows)), round(fraction * len(rows))))
    for n, index in enumerate(chosen):
        kind = kinds[n % len(kinds)]
        out[index] = corrupt(rows[index], kind, rng, rows)
        labels[index] = kind
    return out, labels
