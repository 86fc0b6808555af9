"""The three row formats of fine-tuning data, and exact conversions between them.

- completion:  {"text": ...}                                   the model learns every token
- instruction: {"instruction": ..., "input": ..., "output": ...} the model learns the output
- chat:        {"messages": [{"role": ..., "content": ...}, ...]} the model learns the assistant turns
- prompt_completion: {"prompt": ..., "completion": ...}          trl's plain-text pair: the model learns the completion

course_lib.data.schemas maps the other common schemas (ShareGPT, text parts, trl's conversational pairs) onto these.

This module works on text only; course_lib.data.tokenize turns rows into tokens and labels. Chats are
rendered with the tokenizer's own chat template, never with a hand-written imitation of it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from course_lib.core import tasks
from course_lib.data.schemas import SchemaError, canonical_row

FORMATS = ("completion", "instruction", "chat")
ROLES = ("system", "user", "assistant")
FORMAT_FIELDS = {"completion": ("text",), "instruction": ("instruction", "input", "output"), "chat": ("messages",),
                 "prompt_completion": ("prompt", "completion")}

# An Alpaca-style prompt for the instruction format, for models that have no chat template (base models).
INSTRUCTION_HEADER = "Below is an instruction that describes a task. Write a response that completes the request."
INPUT_HEADER = "Below is an instruction that describes a task, paired with an input that provides further context. " \
               "Write a response that completes the request."


class FormatError(ValueError):
    """A row that cannot be put into the requested format (the reason says why)."""


def library_row(row: Mapping) -> dict:
    """A row of any schema course_lib.data.schemas knows (ShareGPT, text parts, trl pairs, NaN inputs) in its format."""
    if not isinstance(row, Mapping):
        raise FormatError(f"a row must be a dict, got {type(row).__name__}")
    try:
        return canonical_row(row).row
    except SchemaError as error:
        raise FormatError(f"field {error.field!r} {error.reason}" if error.field else f"the row {error.reason}") from None


def detect_format(row: Mapping) -> str:
    """'completion', 'instruction', 'chat' or 'prompt_completion', from the fields a row has; FormatError when none fit."""
    row = library_row(row)
    present = [fmt for fmt, fields in FORMAT_FIELDS.items() if any(row.get(f) is not None for f in fields)]
    if len(present) == 1:
        return present[0]
    if not present:
        raise FormatError("the row has none of the fields 'text', 'instruction'/'output', 'messages' or 'prompt'/'completion'")
    raise FormatError(f"the row mixes the fields of the {' and '.join(present)} formats")


def instruction_prompt(instruction: str, input: str | None = None) -> str:
    """The Alpaca-style prompt for an instruction (and optional input), ending where the response starts.

    An input that is missing, None or only whitespace leaves the Input section out.
    """
    if isinstance(input, str) and input.strip():  # NaN from a table is no input either
        return f"{INPUT_HEADER}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    return f"{INSTRUCTION_HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def instruction_text(row: Mapping, eos_token: str) -> str:
    """The whole training text of an instruction row: its prompt, the output, then EOS so the model learns to stop."""
    if not eos_token:
        raise FormatError("an EOS token is needed: without it the model never learns where an answer ends")
    row = library_row(row)
    return instruction_prompt(row["instruction"], row.get("input")) + strip_eos(row["output"], eos_token) + eos_token


def completion_text(text: str, eos_token: str) -> str:
    """A completion row's training text: the text with one EOS at the end (not doubled if already there)."""
    if not eos_token:
        raise FormatError("an EOS token is needed: without it the model never learns where a document ends")
    return strip_eos(text, eos_token) + eos_token


def strip_eos(text: str, eos_token: str | None) -> str:
    """The text without one EOS (and whitespace after it) at its end: the library appends exactly one itself."""
    trimmed = text.rstrip()
    if eos_token and trimmed.endswith(eos_token):
        return trimmed[: -len(eos_token)]
    return text


def conversation(row: Mapping) -> list[dict]:
    """A row's turns as messages, the same for every format that holds one example (a completion row is one 'text' turn)."""
    fmt = detect_format(row)
    if fmt == "completion":
        return [{"role": "text", "content": row["text"]}]
    return to_chat(row)["messages"]


def instruction_to_messages(row: Mapping) -> list[dict]:
    """An instruction row as a chat: the instruction is the system turn when there is an input, else the user turn.

    This is the layout of course_lib.core.tasks (instruction as system message, the text as user message),
    and it converts back exactly with `messages_to_instruction`.
    """
    if isinstance(row.get("input"), str) and row["input"].strip():
        turns = [{"role": "system", "content": row["instruction"]}, {"role": "user", "content": row["input"]}]
    else:
        turns = [{"role": "user", "content": row["instruction"]}]
    return turns + [{"role": "assistant", "content": row["output"]}]


def messages_to_instruction(messages: Sequence[Mapping]) -> dict:
    """A single-turn chat as an instruction row; FormatError for chats an instruction row cannot hold."""
    roles = [m.get("role") for m in messages]
    if roles == ["system", "user", "assistant"]:
        return {"instruction": messages[0]["content"], "input": messages[1]["content"], "output": messages[2]["content"]}
    if roles == ["user", "assistant"]:
        return {"instruction": messages[0]["content"], "input": "", "output": messages[1]["content"]}
    raise FormatError(f"only [system,] user, assistant chats fit the instruction format; this one has roles {roles}")


def to_chat(row: Mapping) -> dict:
    """A row of any format with a prompt as a chat row {'messages': [...]}."""
    row = library_row(row)
    fmt = detect_format(row)
    if fmt == "chat":
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}
    if fmt == "instruction":
        return {"messages": instruction_to_messages(row)}
    if fmt == "prompt_completion":
        return {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]}
    raise FormatError("a completion row has no prompt/answer split, so it cannot become a chat")


def to_instruction(row: Mapping) -> dict:
    """A row of any format with a prompt as an instruction row."""
    row = library_row(row)
    fmt = detect_format(row)
    if fmt == "instruction":
        return {"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]}
    if fmt == "chat":
        return messages_to_instruction(row["messages"])
    if fmt == "prompt_completion":
        return {"instruction": row["prompt"], "input": "", "output": row["completion"]}
    raise FormatError("a completion row has no prompt/answer split, so it cannot become an instruction")


def to_completion(row: Mapping, tokenizer) -> dict:
    """Any row as plain text {'text': ...}: chats through the chat template, instructions with EOS appended.

    The result trains on every token, prompt included: converting to completion loses the mask.
    """
    row = library_row(row)
    fmt = detect_format(row)
    if fmt == "completion":
        return {"text": completion_text(row["text"], tokenizer.eos_token)}
    if fmt == "instruction":
        return {"text": instruction_text(row, tokenizer.eos_token)}
    if fmt == "prompt_completion":
        return {"text": row["prompt"] + completion_text(row["completion"], tokenizer.eos_token)}
    text = tokenizer.apply_chat_template(to_chat(row)["messages"], tokenize=False, add_generation_prompt=False)
    return {"text": text}


def convert(row: Mapping, fmt: str, tokenizer=None) -> dict:
    """Convert a row to `fmt` ('completion' needs the tokenizer for its chat template and EOS)."""
    if fmt == "chat":
        return to_chat(row)
    if fmt == "instruction":
        return to_instruction(row)
    if fmt == "completion":
        if tokenizer is None:
            raise FormatError("converting to completion needs the tokenizer (chat template and EOS)")
        return to_completion(row, tokenizer)
    raise FormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def task_row(example, fmt: str = "chat", eos_token: str | None = None) -> dict:
    """A course_lib.core.tasks example as a row of the given format."""

    chat = {"messages": tasks.to_messages(example)}
    if fmt == "chat":
        return chat
    if fmt == "instruction":
        return to_instruction(chat)
    if fmt == "completion":
        if eos_token is None:
            raise FormatError("a completion row needs eos_token")
        return {"text": instruction_text(to_instruction(chat), eos_token)}
    raise FormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
