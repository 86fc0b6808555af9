"""Turn chat examples into training rows: the model's own chat template, loss on the answer only."""

from __future__ import annotations

from typing import Iterable, Sequence

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


def tokenize_chat(messages: Sequence[dict], tokenizer, max_length: int | None = None) -> dict:
    """Token ids of a chat rendered with the tokenizer's chat template, labels only on assistant turns.

    Each assistant turn is found by rendering the conversation up to it with the generation
    prompt: whatever the full rendering adds after that prefix is the assistant's text,
    including its end-of-turn token, so the model learns to stop.
    """
    full = _render_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render_ids(tokenizer, messages[:turn], add_generation_prompt=True))
        upto = _render_ids(tokenizer, messages[: turn + 1], add_generation_prompt=False)
        end = len(upto)
        if full[:end] != upto or upto[:start] != full[:start]:
            raise ValueError(f"the chat template does not render turn {turn} as a prefix of the whole chat")
        labels[start:end] = full[start:end]
    if max_length is not None and len(full) > max_length:
        full, labels = full[:max_length], labels[:max_length]
    return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels}


def _render_ids(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    encoded = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def render_prompt(messages: Sequence[dict], tokenizer) -> str:
    """The text a model sees before it answers: the chat template plus the assistant header."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def pad_batch(rows: Iterable[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad a list of tokenized rows to the longest one (dynamic padding) and stack them as tensors."""
    import torch

    rows = list(rows)
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
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        return pad_batch(rows, self.pad_token_id, "right")
