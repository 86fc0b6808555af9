"""Tokenized datasets, label inspection and batching, on top of course_lib.data.encode (one row at a time).

Labels follow the PyTorch convention: a label of IGNORE_INDEX (-100) is skipped by the cross-entropy, so
prompt, system and user tokens get -100 and only the tokens the model should learn to write keep their id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from datasets import Dataset, Features, List, Value

from course_lib.data.encode import (IGNORE_INDEX, SOURCE_ROW, TooLongError, assistant_header_ids, assistant_spans,
                                    chat_segments, eos_id, finish_row, render_ids, render_prompt, tokenize_chat,
                                    tokenize_completion, tokenize_prompt_completion, tokenize_row)
from course_lib.data.validate import as_dataset

__all__ = ["IGNORE_INDEX", "SOURCE_ROW", "TooLongError", "assistant_header_ids", "assistant_spans", "chat_segments",
           "finish_row", "render_prompt", "tokenize_chat", "tokenize_completion", "tokenize_prompt_completion",
           "tokenize_row", "TokenizeReport", "tokenize_dataset", "label_table", "show_labels", "learned_text",
           "LABEL_BUGS", "with_label_bug", "label_bug", "pad_token_note", "pad_batch", "ChatCollator", "to_rows"]


# ---------------------------------------------------------------------------------------------------- datasets


@dataclass
class TokenizeReport:
    """What tokenizing a dataset did: how many rows were truncated, and which rows were dropped and why."""

    rows: int
    max_length: int | None
    truncated: list[int] = field(default_factory=list)  # row indices cut to max_length
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    lengths: list[int] = field(default_factory=list)  # token counts before truncation

    def __str__(self) -> str:
        lines = [f"tokenized {self.rows} rows (max_length={self.max_length}): "
                 f"{len(self.truncated)} truncated, {len(self.dropped)} dropped"]
        lines += [f"  dropped row {row}: {reason}" for row, reason in self.dropped[:10]]
        if len(self.dropped) > 10:
            lines.append(f"  ... and {len(self.dropped) - 10} more")
        return "\n".join(lines)


def tokenize_dataset(dataset, tokenizer, max_length: int | None = None, truncation: bool = True,
                     keep_columns: bool = False) -> tuple[Dataset, TokenizeReport]:
    """Tokenize a `datasets.Dataset` of rows (batched map); returns (dataset, TokenizeReport).

    Rows are named by their `source_row` column when there is one, else by their index (kept as the
    `source_row` column of the result, with `num_tokens` before truncation). Rows truncated to max_length are counted. A truncated row that has no learned token left (its
    answer was cut off entirely) would teach nothing, so it is dropped, and the report says so.
    """

    dataset = as_dataset(dataset, tokenizer=tokenizer)  # a list, DataFrame or file is validated into a Dataset first

    def encode(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "num_tokens": [], SOURCE_ROW: []}
        for i, index in enumerate(indices):
            row = {key: values[i] for key, values in batch.items()}
            row = {key: value for key, value in row.items() if value is not None}  # Arrow fills absent fields
            index = row.pop(SOURCE_ROW, index)
            try:
                encoded = tokenize_row(row, tokenizer)
            except Exception as error:  # name the learner's row, not a position in a map batch
                raise ValueError(f"row {index}: the tokenizer failed ({type(error).__name__}: {error}); "
                                 "validate the rows first (validate.validate_rows) to drop or fix it") from error
            out["num_tokens"].append(len(encoded["input_ids"]))
            encoded = finish_row(encoded["input_ids"], encoded["labels"], max_length, truncation)
            for key in ("input_ids", "attention_mask", "labels"):
                out[key].append(encoded[key])
            out[SOURCE_ROW].append(index)
        return out

    drop = [c for c in dataset.column_names if not keep_columns or c == SOURCE_ROW]
    if len(dataset) == 0:  # map() on no rows makes no columns; an empty split keeps the columns of a full one
        empty = {"input_ids": [], "attention_mask": [], "labels": [], "num_tokens": [], SOURCE_ROW: []}
        return Dataset.from_dict(empty, features=_token_features()), TokenizeReport(rows=0, max_length=max_length)
    try:
        encoded = dataset.map(encode, batched=True, with_indices=True, remove_columns=drop)
    except TooLongError as error:
        raise TooLongError(f"{error}; validate the rows first to find which ones") from error
    report = TokenizeReport(rows=len(encoded), max_length=max_length, lengths=list(encoded["num_tokens"]))
    if max_length is not None:
        report.truncated = [row for row, n in zip(encoded[SOURCE_ROW], encoded["num_tokens"]) if n > max_length]
    learned = [any(label != IGNORE_INDEX for label in labels) for labels in encoded["labels"]]
    report.dropped = [(row, "no learned token left after truncation (the answer was cut off)")
                      for row, ok in zip(encoded[SOURCE_ROW], learned) if not ok]
    if report.dropped:
        encoded = encoded.filter(lambda batch: [any(l != IGNORE_INDEX for l in labels) for labels in batch["labels"]],
                                 batched=True)
    return encoded, report


def _token_features() -> Features:
    ints = List(Value("int64"))
    return Features({"input_ids": ints, "attention_mask": ints, "labels": ints, "num_tokens": Value("int64"),
                     SOURCE_ROW: Value("int64")})


# ---------------------------------------------------------------------------------------------------- inspection


def label_table(row: Mapping, tokenizer) -> list[dict]:
    """One entry per token of a tokenized row: position, id, the token's text, and whether it is learned."""
    return [
        {"position": i, "id": int(token), "text": tokenizer.decode([token]), "learned": label != IGNORE_INDEX}
        for i, (token, label) in enumerate(zip(row["input_ids"], row["labels"]))
    ]


def show_labels(row: Mapping, tokenizer, by: str = "run") -> str:
    """A row as text with its label state: runs of masked/learned tokens (by='run') or one token a line."""
    table = label_table(row, tokenizer)
    if by == "token":
        return "\n".join(f"{t['position']:>4} {t['id']:>6} {'LEARN' if t['learned'] else '  -  '} {t['text']!r}"
                         for t in table)
    if by != "run":
        raise ValueError(f"by must be 'run' or 'token', not {by!r}")
    runs: list[list] = []
    for t in table:
        if runs and runs[-1][0] == t["learned"]:
            runs[-1][1].append(t["id"])
        else:
            runs.append([t["learned"], [t["id"]]])
    return "\n".join(f"{'LEARN ' if learned else 'masked'} {len(ids):>4} tok  {tokenizer.decode(ids)!r}"
                     for learned, ids in runs)


def learned_text(row: Mapping, tokenizer) -> str:
    """The text of the tokens a row teaches (labels other than -100), joined."""
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])


# The labelling bugs real pipelines make, each named by its cause (what a row that has it teaches the model).
LABEL_BUGS = {
    "ok": "every assistant reply and its end token are learned, nothing else",
    "prompt_learned": "prompt tokens (system, user, template) are learned too: the loss learns the prompt",
    "reply_masked": "part or all of a reply is masked: the model does not learn (all of) the answer",
    "end_masked": "the replies are learned but an end token is masked: the model never learns to stop",
    "shifted": "the labels were shifted one place by hand; the model shifts them again and learns two tokens ahead",
}


def with_label_bug(messages: Sequence[Mapping], tokenizer, bug: str, variant: int = 0) -> dict:
    """A chat tokenized the way a buggy pipeline does it, with the labelling bug `bug` (a key of LABEL_BUGS).

    Variants are different pipelines with the same bug: prompt_learned 0 labels = input_ids (a completion collator),
    1 learns the assistant header too, 2 masks only the system prompt; reply_masked 0 learns only the last reply,
    1 starts each reply one token late; end_masked 0 masks every end token by id (pad token = EOS); shifted 0
    shifts the right labels left by one.
    """
    row = tokenize_chat(messages, tokenizer)
    ids, right = list(row["input_ids"]), list(row["labels"])
    spans = assistant_spans([{"role": m["role"], "content": m["content"]} for m in messages], tokenizer, ids)
    labels = list(right)
    if bug == "ok":
        pass
    elif bug == "prompt_learned" and variant == 0:
        labels = list(ids)
    elif bug == "prompt_learned" and variant == 1:
        header = len(assistant_header_ids(tokenizer))
        for start, _ in spans:
            labels[start - header : start] = ids[start - header : start]
    elif bug == "prompt_learned" and variant == 2:
        system_end = len(render_ids(tokenizer, list(messages)[:1], add_generation_prompt=False))
        if messages[0]["role"] != "system":
            raise ValueError("variant 2 needs a chat that starts with a system message")
        labels = [IGNORE_INDEX] * system_end + ids[system_end:]
    elif bug == "reply_masked" and variant == 0:
        if len(spans) < 2:
            raise ValueError("variant 0 needs a chat with at least two replies")
        labels = [IGNORE_INDEX] * len(ids)
        start, end = spans[-1]
        labels[start:end] = ids[start:end]
    elif bug == "reply_masked" and variant == 1:
        for start, _ in spans:
            labels[start] = IGNORE_INDEX
    elif bug == "end_masked" and variant == 0:
        end_id = eos_id(tokenizer)
        labels = [IGNORE_INDEX if token == end_id else label for token, label in zip(ids, right)]
    elif bug == "shifted" and variant == 0:
        labels = right[1:] + [IGNORE_INDEX]
    else:
        raise ValueError(f"no pipeline makes bug {bug!r} as variant {variant}; bugs: {', '.join(LABEL_BUGS)}")
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def label_bug(messages: Sequence[Mapping], row: Mapping, tokenizer) -> str:
    """Which labelling bug (a key of LABEL_BUGS) a tokenized chat row has, assuming at most one.

    The row's labels are compared with the right ones (`tokenize_chat`). A shift is named before its symptoms (a
    shifted row also learns the last header token and masks an end token), and a reply masked in part or whole is
    named before the end tokens it takes with it.
    """
    right = tokenize_chat(messages, tokenizer)
    ids, labels = list(row["input_ids"]), list(row["labels"])
    if ids != list(right["input_ids"]) or len(labels) != len(ids):
        raise ValueError("the row is not this chat rendered by the tokenizer's chat template")
    expected, end_id = right["labels"], eos_id(tokenizer)
    learned = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
    if any(labels[t] != ids[t] for t in learned) and all(t + 1 < len(ids) and labels[t] == ids[t + 1] for t in learned):
        return "shifted"
    if any(expected[t] == IGNORE_INDEX and labels[t] != IGNORE_INDEX for t in range(len(ids))):
        return "prompt_learned"
    masked = [t for t in range(len(ids)) if expected[t] != IGNORE_INDEX and labels[t] == IGNORE_INDEX]
    if any(ids[t] != end_id for t in masked):
        return "reply_masked"
    if masked:
        return "end_masked"
    return "ok"


def pad_token_note(tokenizer) -> str:
    """One paragraph on the tokenizer's pad token: which it is, and why it is not EOS."""
    pad, eos = tokenizer.pad_token, tokenizer.eos_token
    if pad == eos:
        return (f"pad token = EOS = {eos!r}: a collator that masks pad positions would also mask the real EOS, "
                "and the model would never learn to stop. Pick a different pad token.")
    return (f"pad token {pad!r} (id {tokenizer.pad_token_id}) differs from EOS {eos!r} (id {tokenizer.eos_token_id}): "
            "padding is masked by attention_mask=0 and labels=-100, and the EOS the model must learn stays learned. "
            f"Padding side: {tokenizer.padding_side} for training (left for batched generation).")


# ---------------------------------------------------------------------------------------------------- batching


def pad_batch(rows: Iterable[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad a list of tokenized rows to the longest one (dynamic padding) and stack them as tensors."""

    rows = list(rows)
    if not rows:
        raise ValueError("pad_batch got no rows")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    width = max(len(row["input_ids"]) for row in rows)
    batch: dict[str, list] = {key: [] for key in rows[0] if key in ("input_ids", "attention_mask", "labels")}
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    for row in rows:
        gap = width - len(row["input_ids"])
        for key in batch:
            pad = [fill[key]] * gap
            batch[key].append(pad + list(row[key]) if padding_side == "left" else list(row[key]) + pad)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


class ChatCollator:
    """A Trainer data collator: dynamic right padding, labels padded with -100."""

    def __init__(self, tokenizer):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; course_lib.core.models.load_tokenizer sets one")
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        return pad_batch(rows, self.pad_token_id, "right")


def to_rows(data: Sequence, tokenizer, max_length: int) -> list[dict]:
    """Training rows {"input_ids", "attention_mask", "labels"} from chats (lists of messages) or tokenized rows.

    Both kinds are cut to `max_length`, as `tokenize_chat` cuts chats. A row must keep a token to learn after the
    first position: a causal LM predicts token t from the tokens before it, so the first label is never learned.
    """
    rows = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "input_ids" in item:
            ids = list(item["input_ids"])[:max_length]
            labels = list(item.get("labels", item["input_ids"]))[:max_length]
            row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        elif isinstance(item, (list, tuple)) and item and all(isinstance(m, dict) and "role" in m for m in item):
            row = tokenize_chat(item, tokenizer, max_length=max_length)
        else:
            raise ValueError(f"training item {i} is neither a chat (a list of messages) nor a tokenized row: {item!r:.80}")
        if not any(label != IGNORE_INDEX for label in row["labels"][1:]):
            raise ValueError(f"training item {i} has no token to learn (every label after the first is "
                             f"{IGNORE_INDEX}): its answer is missing or was cut off by max_length={max_length}")
        rows.append(row)
    if not rows:
        raise ValueError("no training conversations given")
    return rows
