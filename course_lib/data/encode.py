"""Encode one row as training tokens: the exact tokenizer, the model's own chat template, loss on the answer only.

Labels follow the PyTorch convention: a label of IGNORE_INDEX (-100) is skipped by the cross-entropy, so
prompt, system and user tokens get -100 and only the tokens the model should learn to write keep their id.
course_lib.data.tokenize builds on this for datasets, inspection and batching (and re-exports these names).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from course_lib.data.formats import (FormatError, completion_text, detect_format, instruction_prompt, library_row,
                                     strip_eos)

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips
SOURCE_ROW = "source_row"  # the column naming a row's index in the raw input, for reports


# ---------------------------------------------------------------------------------------------------- chat


def tokenize_chat(
    messages: Sequence[Mapping], tokenizer, max_length: int | None = None, truncation: bool = True
) -> dict:
    """Token ids of a chat rendered with the tokenizer's chat template, labels only on assistant turns.

    Each assistant turn is found by rendering the conversation up to it with the generation prompt:
    whatever the full rendering adds after that prefix is the assistant's turn. The learned span runs
    to the end-of-turn token inclusive, so the model learns to stop; the template's whitespace after
    that token is masked, because generation stops at the end-of-turn token and never writes it.
    """
    ids, labels = [], []
    for piece, learned in chat_segments(messages, tokenizer):
        ids += piece
        labels += piece if learned else [IGNORE_INDEX] * len(piece)
    return finish_row(ids, labels, max_length, truncation)


def chat_segments(messages: Sequence[Mapping], tokenizer) -> list[tuple[list[int], bool]]:
    """A chat's tokens in pieces, (ids, learned): the prompts before each reply and the replies themselves.

    Each piece is tokenized on its own, as at inference, where the prompt (ending with the generation
    prompt) is tokenized alone and the reply's tokens follow it. Tokenizing the whole text at once could
    merge the header's newline with a reply that starts with whitespace into one token that inference never
    produces.
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]  # drop Arrow's None-filled keys
    text = _render_text(tokenizer, messages, add_generation_prompt=False)
    pieces, done = [], 0
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if not any(m["role"] == "user" for m in messages[:turn]):
            raise ValueError(f"assistant turn {turn} has no user turn before it: the template cannot prompt for it")
        prefix = _render_text(tokenizer, messages[:turn], add_generation_prompt=True)
        upto = _render_text(tokenizer, messages[: turn + 1], add_generation_prompt=False)
        if not (text.startswith(upto) and upto.startswith(prefix) and len(prefix) >= done):
            raise ValueError(f"the chat template does not render turn {turn} as a prefix of the whole chat, "
                             "so its assistant tokens cannot be located")
        pieces.append((_encode(tokenizer, text[done : len(prefix)]), False))
        reply = _encode(tokenizer, text[len(prefix) : len(upto)])
        end = _trim_after_end_of_turn(reply, 0, len(reply), tokenizer)
        pieces += [(reply[:end], True), (reply[end:], False)]
        done = len(upto)
    pieces.append((_encode(tokenizer, text[done:]), False))
    return [(ids, learned) for ids, learned in pieces if ids]


def assistant_spans(messages: Sequence[Mapping], tokenizer, full: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The [start, end) token spans of every assistant turn's reply (content and end-of-turn token)."""
    spans, position, ids = [], 0, []
    for piece, learned in chat_segments(messages, tokenizer):
        if learned:
            spans.append((position, position + len(piece)))
        position += len(piece)
        ids += piece
    if full is not None and list(full) != ids:
        raise ValueError("`full` is not this chat's tokenization (tokenize_chat gives it)")
    return spans


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _render_text(tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _trim_after_end_of_turn(ids: Sequence[int], start: int, end: int, tokenizer) -> int:
    """Move `end` back to just after the turn's end-of-turn token when only template whitespace follows it."""
    special = set(tokenizer.all_special_ids)
    for i in range(end - 1, start - 1, -1):
        if ids[i] in special:
            return i + 1
        if tokenizer.decode([ids[i]]).strip():  # real text after the last special token: keep the whole turn
            return end
    return end


def render_ids(tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool) -> list[int]:
    """The token ids of messages rendered by the chat template (with or without the generation prompt)."""
    if not messages:
        return []
    encoded = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def render_prompt(messages: Sequence[dict], tokenizer) -> str:
    """The text a model sees before it answers: the chat template plus the assistant header."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def assistant_header_ids(tokenizer) -> list[int]:
    """The token ids the chat template writes before every assistant reply (its generation prompt)."""
    user = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    with_prompt = render_ids(tokenizer, user, add_generation_prompt=True)
    without = render_ids(tokenizer, user, add_generation_prompt=False)
    if with_prompt[: len(without)] != without:
        raise ValueError("the chat template's generation prompt is not a suffix of the prompt")
    return with_prompt[len(without):]


# ---------------------------------------------------------------------------------------------------- other formats


def tokenize_prompt_completion(prompt: str, completion: str, tokenizer, max_length: int | None = None,
                               truncation: bool = True) -> dict:
    """Prompt tokens masked, completion tokens learned, then EOS (learned too).

    The prompt is tokenized on its own, exactly as it will be at inference, and the completion's
    tokens follow it; tokenizing the joined string could merge tokens across the seam.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion = strip_eos(completion, tokenizer.eos_token)  # an answer that already ends with EOS keeps exactly one
    answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos_id(tokenizer)]
    ids = list(prompt_ids) + list(answer_ids)
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids)
    return finish_row(ids, labels, max_length, truncation)


def tokenize_completion(text: str, tokenizer, max_length: int | None = None, truncation: bool = True) -> dict:
    """Plain text: every token learned, with one EOS at the end."""
    eos = eos_id(tokenizer)
    ids = list(tokenizer(completion_text(text, tokenizer.eos_token), add_special_tokens=True)["input_ids"])
    if ids[-1] != eos:  # the EOS string did not tokenize to the EOS id (unusual tokenizers): append the id
        ids.append(eos)
    return finish_row(ids, list(ids), max_length, truncation)


def tokenize_row(row: Mapping, tokenizer, max_length: int | None = None, truncation: bool = True) -> dict:
    """Tokenize a row of any format, with labels for completion-only training."""
    row = library_row(row)
    fmt = detect_format(row)
    if fmt == "chat":
        return tokenize_chat(row["messages"], tokenizer, max_length, truncation)
    if fmt == "instruction":
        prompt = instruction_prompt(row["instruction"], row.get("input"))
        return tokenize_prompt_completion(prompt, row["output"], tokenizer, max_length, truncation)
    if fmt == "prompt_completion":
        return tokenize_prompt_completion(row["prompt"], row["completion"], tokenizer, max_length, truncation)
    return tokenize_completion(row["text"], tokenizer, max_length, truncation)


def eos_id(tokenizer) -> int:
    """The tokenizer's EOS id; FormatError when it has none."""
    if tokenizer.eos_token_id is None:
        raise FormatError("the tokenizer has no EOS token: the model could not learn where an answer ends")
    return tokenizer.eos_token_id


class TooLongError(ValueError):
    """A row is longer than max_length and truncation is off."""


def finish_row(ids: list[int], labels: list[int], max_length: int | None, truncation: bool) -> dict:
    """A tokenized row {input_ids, attention_mask, labels}, cut to max_length (TooLongError with truncation off)."""
    if max_length is not None and len(ids) > max_length:
        if not truncation:
            raise TooLongError(f"{len(ids)} tokens, longer than max_length={max_length} with truncation off")
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
