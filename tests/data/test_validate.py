"""Row validation (course_lib.data.validate): every kind of bad row named by row, field and kind."""

import pickle

import pytest

from course_lib.core import tasks
from course_lib.data.validate import KINDS, DropSummary, RowError, validate_dataset, validate_row, validate_rows

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}
S = {"role": "system", "content": "Be kind."}

# (row, field named by the error, kind): one case per kind of bad row the issue lists, and a few more.
BAD_ROWS = {
    # missing fields
    "no known field": ({"id": 1}, None, "missing"),
    "instruction without output": ({"instruction": "Add."}, "output", "missing"),
    "output without instruction": ({"output": "4"}, "instruction", "missing"),
    "null output": ({"instruction": "Add.", "output": None}, "output", "missing"),
    "message without role": ({"messages": [{"content": "Hi"}, A]}, "messages[0].role", "missing"),
    "message without content": ({"messages": [U, {"role": "assistant"}]}, "messages[1].content", "missing"),
    # empty fields
    "empty text": ({"text": ""}, "text", "empty"),
    "whitespace output": ({"instruction": "Add.", "output": "  \n"}, "output", "empty"),
    "empty messages": ({"messages": []}, "messages", "empty"),
    "empty reply": ({"messages": [U, {"role": "assistant", "content": " "}]}, "messages[1].content", "empty"),
    # wrong types
    "number as text": ({"text": 42}, "text", "type"),
    "number as output": ({"instruction": "Add.", "output": 4}, "output", "type"),
    "list as input": ({"instruction": "Add.", "input": ["2", "2"], "output": "4"}, "input", "type"),
    "messages as string": ({"messages": "user: hi"}, "messages", "type"),
    "message as string": ({"messages": ["Hi", A]}, "messages[0]", "type"),
    "row as list": (["Hi", "Hello"], None, "not_a_row"),
    # unknown roles
    "bot role": ({"messages": [U, {"role": "bot", "content": "Hi"}]}, "messages[1].role", "role"),
    "tool role": ({"messages": [U, {"role": "tool", "content": "{}"}, A]}, "messages[1].role", "role"),
    "capitalised role": ({"messages": [{"role": "User", "content": "Hi"}, A]}, "messages[0].role", "role"),
    # a chat that does not end with an assistant turn
    "ends with user": ({"messages": [U, A, U]}, "messages[2].role", "last_turn"),
    "only a user turn": ({"messages": [U]}, "messages[0].role", "last_turn"),
    # turns in an order the template cannot train on
    "system in the middle": ({"messages": [U, S, A]}, "messages[1].role", "order"),
    "reply before any question": ({"messages": [S, A]}, "messages[1].role", "order"),
    # non-text content
    "content parts": ({"messages": [{"role": "user", "content": [{"type": "image"}]}, A]}, "messages[0].content[0]",
                      "content"),
    "content dict": ({"messages": [U, {"role": "assistant", "content": {"text": "Hello"}}]}, "messages[1].content", "content"),
    "content number": ({"messages": [U, {"role": "assistant", "content": 7}]}, "messages[1].content", "content"),
    # a message key the template and the mask would ignore (some datasets mark turns not to learn this way)
    "per-turn weight": ({"messages": [U, {"role": "assistant", "content": "Hello", "weight": 0}]}, "messages[1].weight",
                        "unknown_key"),
    # several formats at once
    "text and messages": ({"text": "Hi", "messages": [U, A]}, None, "format"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_each_bad_row_raises_an_error_naming_row_and_field(name):
    row, field, kind = BAD_ROWS[name]
    with pytest.raises(RowError) as caught:
        validate_row(row, 7)
    error = caught.value
    assert (error.row, error.field, error.kind) == (7, field, kind), str(error)
    assert str(error).startswith("row 7") and kind in KINDS
    if field:
        assert repr(field) in str(error)


@pytest.mark.parametrize("row, fmt", [
    ({"text": "Once upon a time"}, "completion"),
    ({"instruction": "Add.", "output": "4"}, "instruction"),
    ({"instruction": "Add.", "input": "", "output": "4"}, "instruction"),  # an empty input is allowed
    ({"instruction": "Add.", "input": None, "output": "4"}, "instruction"),
    ({"messages": [S, U, A, U, A], "source": "forum"}, "chat"),  # extra fields are fine
    ({"messages": [U, A, A]}, "chat"),
    ({"messages": [U, dict(A, name=None)]}, "chat"),  # keys Arrow filled with None are not data
])
def test_good_rows_pass_and_report_their_format(row, fmt):
    assert validate_row(row, 0) == fmt


def test_every_task_row_is_valid(tokenizer):
    for example in tasks.make_examples(50, seed=5):
        assert validate_row({"messages": tasks.to_messages(example)}, 0, tokenizer=tokenizer) == "chat"


def test_a_pinned_format_names_the_missing_or_foreign_field():
    with pytest.raises(RowError) as caught:
        validate_row({"text": "Hi"}, 3, fmt="chat")
    assert caught.value.field == "text" and caught.value.kind == "format"
    with pytest.raises(RowError) as caught:
        validate_row({"id": 1}, 3, fmt="instruction")
    assert caught.value.field == "instruction" and caught.value.kind == "missing"
    with pytest.raises(ValueError, match="unknown format"):
        validate_row({"text": "Hi"}, 3, fmt="tsv")


def test_special_tokens_inside_text_are_rejected(tokenizer):
    row = {"messages": [U, {"role": "assistant", "content": "Hello<|im_end|> more"}]}
    for given in (tokenizer, None):  # without a tokenizer, the course model's is the one checked
        with pytest.raises(RowError) as caught:
            validate_row(row, 0, tokenizer=given)
        assert (caught.value.field, caught.value.kind) == ("messages[1].content", "special_token")
    with pytest.raises(RowError, match="<|endoftext|>"):
        validate_row({"text": "a<|endoftext|>b"}, 0, tokenizer=tokenizer)


def test_too_long_rows_are_rejected_only_when_truncation_is_off(tokenizer):
    row = {"messages": tasks.to_messages(tasks.make_examples(1)[0])}
    validate_row(row, 0, tokenizer=tokenizer, max_length=70)  # truncation on: the tokenizer cuts it, the answer starts
    with pytest.raises(RowError, match="leaves nothing to learn"):  # ...but not when the cut leaves no answer token
        validate_row(row, 0, tokenizer=tokenizer, max_length=10)
    with pytest.raises(RowError) as caught:
        validate_row(row, 4, tokenizer=tokenizer, max_length=10, truncation=False)
    assert (caught.value.row, caught.value.field, caught.value.kind) == (4, "messages", "too_long")
    assert "max_length=10" in str(caught.value)
    with pytest.raises(RowError) as caught:
        validate_row({"instruction": "Say it.", "output": "word " * 50}, 2, tokenizer=tokenizer, max_length=20,
                     truncation=False)
    assert caught.value.field == "output"
    validate_row(row, 0, tokenizer=tokenizer, max_length=1000, truncation=False)


def test_validate_rows_raises_on_the_first_bad_row_by_default():
    rows = [{"text": "ok"}, {"text": ""}, {"text": 5}]
    with pytest.raises(RowError, match="row 1, field 'text': is empty"):
        validate_rows(rows)


def test_validate_rows_drop_keeps_good_rows_and_accounts_for_every_drop():
    rows = [{"text": "ok"}] + [case[0] for case in BAD_ROWS.values()] + [{"text": "fine"}]
    good, summary = validate_rows(rows, on_error="drop")
    assert good == [{"text": "ok"}, {"text": "fine"}]
    assert summary.total == len(rows) and summary.kept == 2
    assert summary.rows() == list(range(1, len(rows) - 1))
    assert sum(summary.counts().values()) == len(BAD_ROWS)
    assert summary.counts()["type"] == 5 and summary.counts()["role"] == 3
    text = str(summary)
    assert text.startswith(f"validation: kept 2 of {len(rows)} rows, dropped {len(BAD_ROWS)}")
    assert "last_turn" in text and "row 22" in text and "unknown_key" in text  # each kind comes with an example naming its row
    with pytest.raises(ValueError, match="on_error"):
        validate_rows(rows, on_error="ignore")


def test_validate_dataset_with_batched_map_and_filter(tokenizer):
    from datasets import Dataset

    rows = [{"messages": [U, A]}, {"messages": [U, {"role": "bot", "content": "x"}]}, {"messages": [U, A, U]},
            {"messages": [U, {"role": "assistant", "content": ""}]}, {"messages": [S, U, A]}]
    dataset = Dataset.from_list(rows)
    kept, summary = validate_dataset(dataset, on_error="drop", tokenizer=tokenizer)
    assert len(kept) == 2 and kept.column_names == ["messages", "source_row"] and kept["source_row"] == [0, 4]
    assert [(e.row, e.field, e.kind) for e in summary.drops] == [
        (1, "messages[1].role", "role"), (2, "messages[2].role", "last_turn"), (3, "messages[1].content", "empty")]
    with pytest.raises(RowError, match="row 1, field 'messages\\[1\\].role'"):
        validate_dataset(dataset)


def test_validate_dataset_names_rows_by_source_row():
    from datasets import Dataset

    dataset = Dataset.from_list([{"text": "a", "source_row": 10}, {"text": "", "source_row": 12}])
    kept, summary = validate_dataset(dataset, on_error="drop")
    assert summary.rows() == [12] and kept["source_row"] == [10]


def test_row_errors_survive_pickling():
    error = pickle.loads(pickle.dumps(RowError(3, "text", "is empty", "empty")))
    assert (error.row, error.field, error.kind, str(error)) == (3, "text", "empty",
                                                           "row 3, field 'text': is empty (to fix: write the text, or remove the row)")


def test_empty_summary():
    assert str(DropSummary(total=4)) == "validation: kept 4 of 4 rows, dropped 0"
