"""The schemas learners bring, each mapped to one of the library's row formats, with the learner's field names kept.

| schema | a row | becomes |
| --- | --- | --- |
| plain text | `{"text": ...}` | completion |
| Alpaca | `{"instruction": ..., "input": ..., "output": ...}` | instruction |
| OpenAI messages | `{"messages": [{"role": ..., "content": "..." or [{"type": "text", "text": ...}]}]}` | chat |
| ShareGPT | `{"conversations": [{"from": "human"/"gpt"/"system", "value": ...}]}` | chat |
| trl prompt/completion | `{"prompt": "...", "completion": "..."}` | prompt_completion |
| trl conversational prompt/completion | `{"prompt": [messages], "completion": [messages]}` | chat |

`canonical_row` does the mapping and nothing else; course_lib.data.validate checks the result and names any problem
by the learner's own field (`conversations[2].from`, not `messages[2].role`). Missing optional values (None, NaN,
an empty `input`) are absent, not wrong. Fields no schema uses (an `id`, a `source`) are listed, never trained on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
SCHEMA_FIELDS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "input", "output"),
    "text": ("text",),
}


class SchemaError(ValueError):
    """A row no schema fits, or a schema's field that cannot be mapped: `field` names it, `kind` classifies it."""

    def __init__(self, field: str | None, reason: str, kind: str):
        self.field, self.reason, self.kind = field, reason, kind
        super().__init__(reason)


@dataclass
class Canonical:
    """A row in a library format, how to name its fields the learner's way, and the fields it left out."""

    row: dict
    schema: str
    rename: Callable[[str], str] = str
    ignored: list[str] = field(default_factory=list)
    format: str = ""  # the library format, once validation has checked the row


def absent(value) -> bool:
    """True for the ways a table says 'no value': None, NaN, pandas' NA and NaT."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def blank(value) -> bool:
    """Absent, or an empty text or list: what a table writes in the columns of another schema."""
    return absent(value) or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, (list, tuple)) and not value)


def canonical_row(row: Mapping) -> Canonical:
    """The row in the library's format ('completion', 'instruction', 'chat' or 'prompt_completion'); SchemaError if none fits."""
    if not any(key in row for fields in SCHEMA_FIELDS.values() for key in fields):
        # Spreadsheet headers such as "Instruction" or " Text ": the same fields, written another way
        folded = {str(key).strip().lower(): value for key, value in row.items()}
        if any(key in folded for fields in SCHEMA_FIELDS.values() for key in fields):
            row = folded
    row = {key: _turns_from_json(key, value) for key, value in row.items()}
    present = [name for name, fields in SCHEMA_FIELDS.items() if any(not blank(row.get(f)) for f in fields)]
    if not present:  # only empty values: the schema they belong to reports them as empty
        present = [name for name, fields in SCHEMA_FIELDS.items() if any(not absent(row.get(f)) for f in fields)]
    if not present:
        null = next((f for fields in SCHEMA_FIELDS.values() for f in fields if f in row and f != "input"), None)
        if null is not None:  # {"text": None}: the field is there but holds nothing
            raise SchemaError(null, "is missing (null or NaN)", "missing")
        raise SchemaError(None, "has none of the fields of a known schema: text; instruction/input/output; messages; "
                          "conversations (ShareGPT); prompt/completion (trl)", "missing")
    if len(present) > 1:
        fields = [next(f for f in SCHEMA_FIELDS[name] if not blank(row.get(f))) for name in present]
        raise SchemaError(None, f"mixes the fields {', '.join(map(repr, fields))} of several schemas; keep one", "format")
    schema = present[0]
    used = set(SCHEMA_FIELDS[schema])
    ignored = sorted(str(k) for k, v in row.items() if k not in used and not blank(v))
    if schema == "text":
        return Canonical({"text": row["text"]}, schema, ignored=ignored)
    if schema == "alpaca":
        out = {name: row.get(name) for name in ("instruction", "output") if not absent(row.get(name))}
        if not absent(row.get("input")) and not (isinstance(row["input"], str) and not row["input"].strip()):
            out["input"] = row["input"]
        for name in ("instruction", "output"):  # the format is known, so a missing field is reported as missing
            out.setdefault(name, None)
        return Canonical(out, schema, ignored=ignored)
    if schema == "messages":
        return Canonical({"messages": _messages(row["messages"], "messages")}, schema, ignored=ignored)
    if schema == "sharegpt":
        messages, from_value = _sharegpt(row["conversations"])
        return Canonical({"messages": messages}, schema, _renamer(from_value), ignored)
    return _prompt_completion(row, ignored)


def _turns_from_json(key, value):
    """A chat column read from a CSV by pandas holds JSON text: the list of turns it encodes, else the value."""
    if key not in ("messages", "conversations", "prompt", "completion") or not isinstance(value, str):
        return value
    if not value.lstrip().startswith("["):
        return value
    try:
        turns = json.loads(value)
    except json.JSONDecodeError:
        return value
    chat = isinstance(turns, list) and turns and all(isinstance(t, Mapping) for t in turns)
    if key in ("prompt", "completion") and not (chat and all("role" in t for t in turns)):
        return value  # a prompt or completion that is JSON text (an answer like [1, 2]) stays text
    return turns if chat else value


def _messages(messages, where: str) -> list:
    """OpenAI-style messages with text-part content joined into text; anything else is left for validation to name."""
    if not isinstance(messages, (list, tuple)):
        return messages
    out = []
    for turn, message in enumerate(messages):
        if isinstance(message, Mapping):  # keys a tool left empty ("name": "", "tool_calls": []) are not data
            message = {k: v for k, v in message.items() if not (blank(v) if k not in ("role", "content") else absent(v))}
            if isinstance(message.get("content"), (list, tuple)):
                message["content"] = _text_parts(message["content"], f"{where}[{turn}].content")
        out.append(message)
    return out


def _text_parts(parts, where: str):
    """Content given as parts ([{"type": "text", "text": ...}]) as one text; a non-text part is refused by name."""
    texts = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, Mapping) and part.get("type", "text") == "text":
            raise SchemaError(f"{where}[{i}].text", "is missing or not text (a text part needs its text)", "content")
        else:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise SchemaError(f"{where}[{i}]", f"is a {kind!r} part; only text parts can be trained on here "
                              "(images, audio and files need a multimodal model)", "content")
    return "\n".join(texts)


def _sharegpt(conversations) -> tuple[list, set[int]]:
    """The turns as messages, and which turns were written as from/value (their fields are named that way)."""
    if not isinstance(conversations, (list, tuple)):
        return conversations, set()
    out, from_value = [], set()
    for turn, message in enumerate(conversations):
        if not isinstance(message, Mapping):
            out.append(message)
            continue
        # Some exports use role/content; Arrow gives every turn every key, filling the missing ones with None.
        keys = ("role", "content") if not absent(message.get("role")) else ("from", "value")
        if keys[0] == "from":
            from_value.add(turn)
        source = message.get(keys[0])
        if absent(source):
            raise SchemaError(f"conversations[{turn}].{keys[0]}", "is missing", "missing")
        role = SHAREGPT_ROLES.get(str(source).lower())
        if role is None:
            raise SchemaError(f"conversations[{turn}].{keys[0]}", f"unknown speaker {source!r}; expected one of "
                              f"{', '.join(sorted(SHAREGPT_ROLES))}", "role")
        rest = {k: v for k, v in message.items() if k not in keys and not blank(v)}
        out.append({"role": role, "content": message.get(keys[1]), **rest})
    return _messages(out, "conversations"), from_value


def _prompt_completion(row: Mapping, ignored: list[str]) -> Canonical:
    prompt, completion = row.get("prompt"), row.get("completion")
    if absent(completion):
        raise SchemaError("completion", "is missing (a prompt/completion row needs both)", "missing")
    if absent(prompt):
        raise SchemaError("prompt", "is missing (a prompt/completion row needs both)", "missing")
    chat = [isinstance(value, (list, tuple)) for value in (prompt, completion)]
    if chat == [False, False]:
        return Canonical({"prompt": prompt, "completion": completion}, "prompt_completion", ignored=ignored)
    if chat != [True, True]:
        text, listed = ("prompt", "completion") if chat[1] else ("completion", "prompt")
        raise SchemaError(text, f"is text but '{listed}' is a list of messages; give both as text or both as messages",
                          "type")
    n = len(prompt)

    def rename(name: str) -> str:
        if name == "messages":
            return "prompt"
        if not name.startswith("messages["):
            return name
        turn, rest = name[len("messages["):].split("]", 1)
        turn = int(turn)
        return f"prompt[{turn}]{rest}" if turn < n else f"completion[{turn - n}]{rest}"

    messages = _messages(list(prompt), "prompt") + _messages(list(completion), "completion")
    return Canonical({"messages": messages}, "conversational prompt_completion", rename, ignored)


def _renamer(from_value: set[int]) -> Callable[[str], str]:
    """Field names of ShareGPT turns: conversations[i].from/.value where the turn was written that way."""
    def rename(name: str) -> str:
        if not name.startswith("messages"):
            return name
        name = "conversations" + name[len("messages"):]
        if name.startswith("conversations[") and int(name[len("conversations["):].split("]", 1)[0]) in from_value:
            name = name.replace(".role", ".from").replace(".content", ".value")
        return name
    return rename
