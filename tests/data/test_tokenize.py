"""Tokenizing chats and rows (course_lib.data.tokenize): the chat template, loss masks, truncation, padding."""

import pytest

from course_lib.core import tasks
from course_lib.data import formats, tokenize
from course_lib.data.tokenize import IGNORE_INDEX, ChatCollator, pad_batch, render_prompt, tokenize_chat


def _learned_text(row, tokenizer):
    return tokenizer.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != IGNORE_INDEX])


def test_only_the_answer_and_its_end_token_are_learned(tokenizer):
    example = tasks.make_examples(1)[0]
    row = tokenize_chat(tasks.to_messages(example), tokenizer)
    learned = _learned_text(row, tokenizer)
    assert learned.startswith(example.answer_json())
    assert "<|im_end|>" in learned and tasks.INSTRUCTION not in learned
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])


def test_multi_turn_learns_every_assistant_turn_and_no_user_turn(tokenizer):
    chat = [
        {"role": "user", "content": "Say A."},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Say B."},
        {"role": "assistant", "content": "B"},
    ]
    learned = _learned_text(tokenize_chat(chat, tokenizer), tokenizer)
    # Each reply and its end-of-turn token; the template's newline after <|im_end|> is never generated, so masked.
    assert learned == "A<|im_end|>B<|im_end|>"


def test_prompt_is_a_prefix_of_the_training_text(tokenizer):
    example = tasks.make_examples(1)[0]
    prompt = render_prompt(tasks.prompt_messages(example), tokenizer)
    full = tokenizer.decode(tokenize_chat(tasks.to_messages(example), tokenizer)["input_ids"])
    assert full.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")


def test_truncation(tokenizer):
    row = tokenize_chat(tasks.to_messages(tasks.make_examples(1)[0]), tokenizer, max_length=10)
    assert len(row["input_ids"]) == len(row["labels"]) == 10


def test_dynamic_padding_both_sides(tokenizer):
    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
            {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    right = pad_batch(rows, pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = pad_batch(rows, pad_token_id=0, padding_side="left")
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ChatCollator(tokenizer)(rows)["input_ids"].shape == (2, 3)


# ---------------------------------------------------------------------------------------------------- module 01

SYSTEM_CHAT = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "Colour of the sky?"},
    {"role": "assistant", "content": "Blue"},
    {"role": "user", "content": "And of grass?"},
    {"role": "assistant", "content": "Green"},
    {"role": "user", "content": "And of snow?"},
    {"role": "assistant", "content": "White"},
]


def test_multi_turn_learned_spans_are_exactly_each_reply_and_its_end_token(tokenizer):
    row = tokenize_chat(SYSTEM_CHAT, tokenizer)
    spans = tokenize.assistant_spans(SYSTEM_CHAT, tokenizer)
    assert [tokenizer.decode(row["input_ids"][a:b]) for a, b in spans] == \
        ["Blue<|im_end|>", "Green<|im_end|>", "White<|im_end|>"]
    learned = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
    assert learned == [i for a, b in spans for i in range(a, b)]  # nothing else is learned
    for a, b in spans:
        assert row["labels"][a:b] == row["input_ids"][a:b]
        assert row["input_ids"][b - 1] == tokenizer.eos_token_id


def test_every_reply_starts_where_inference_starts_generating(tokenizer):
    """Training and inference agree: each learned span begins right after render_prompt of the turns before it."""
    row = tokenize_chat(SYSTEM_CHAT, tokenizer)
    for (start, _), turn in zip(tokenize.assistant_spans(SYSTEM_CHAT, tokenizer), (2, 4, 6)):
        prompt = render_prompt(SYSTEM_CHAT[:turn], tokenizer)
        assert tokenizer.decode(row["input_ids"][:start]) == prompt


def test_system_user_and_headers_are_masked(tokenizer):
    row = tokenize_chat(SYSTEM_CHAT, tokenizer)
    masked = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX])
    for text in ("Answer with one word.", "Colour of the sky?", "And of grass?", "And of snow?"):
        assert text in masked
    assert masked.count("<|im_start|>assistant\n") == 3
    assert row["labels"][-1] == IGNORE_INDEX and tokenizer.decode(row["input_ids"][-1:]) == "\n"


def test_template_default_system_prompt_is_masked(tokenizer):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    row = tokenize_chat(chat, tokenizer)
    assert "You are a helpful AI assistant" in tokenizer.decode(row["input_ids"])  # the template adds it
    assert tokenize.learned_text(row, tokenizer) == "Hello<|im_end|>"


def test_arrow_filled_keys_do_not_reach_the_template(tokenizer):
    chat = [{"role": "user", "content": "Hi", "tool_calls": None}, {"role": "assistant", "content": "Yo", "name": None}]
    plain = [{"role": m["role"], "content": m["content"]} for m in chat]
    assert tokenize_chat(chat, tokenizer) == tokenize_chat(plain, tokenizer)


def test_an_assistant_turn_without_a_user_turn_is_refused(tokenizer):
    with pytest.raises(ValueError, match="no user turn"):
        tokenize_chat([{"role": "assistant", "content": "Hi"}], tokenizer)


def test_assistant_header_ids(tokenizer):
    header = tokenize.assistant_header_ids(tokenizer)
    assert tokenizer.decode(header) == "<|im_start|>assistant\n"


def test_instruction_rows_learn_the_output_and_eos_only(tokenizer):
    row = {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"}
    encoded = tokenize.tokenize_row(row, tokenizer)
    assert tokenize.learned_text(encoded, tokenizer) == "4" + tokenizer.eos_token
    prompt = formats.instruction_prompt(row["instruction"], row["input"])
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert encoded["input_ids"][: len(prompt_ids)] == prompt_ids  # the prompt is tokenized as at inference
    assert set(encoded["labels"][: len(prompt_ids)]) == {IGNORE_INDEX}
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id == encoded["labels"][-1]


def test_completion_rows_learn_everything_and_get_one_eos(tokenizer):
    encoded = tokenize.tokenize_row({"text": "Once upon a time"}, tokenizer)
    assert encoded["labels"] == encoded["input_ids"]
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id
    again = tokenize.tokenize_row({"text": "Once upon a time" + tokenizer.eos_token}, tokenizer)
    assert again["input_ids"] == encoded["input_ids"]  # an EOS already there is not doubled


def test_truncation_off_raises_and_on_cuts(tokenizer):
    chat = tasks.to_messages(tasks.make_examples(1)[0])
    with pytest.raises(tokenize.TooLongError, match="max_length=10"):
        tokenize_chat(chat, tokenizer, max_length=10, truncation=False)
    assert len(tokenize_chat(chat, tokenizer, max_length=10)["input_ids"]) == 10
    full = tokenize_chat(chat, tokenizer)
    assert tokenize_chat(chat, tokenizer, max_length=len(full["input_ids"]), truncation=False) == full


def test_tokenize_dataset_counts_truncated_rows_and_drops_rows_with_nothing_left_to_learn(tokenizer):
    from datasets import Dataset

    rows = [{"messages": tasks.to_messages(e)} for e in tasks.make_examples(6, seed=4)]
    rows.append({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    lengths = [len(tokenize.tokenize_row(r, tokenizer)["input_ids"]) for r in rows]
    limit = lengths[-1]  # the short chat fits; the task rows are cut inside their prompt
    assert all(n > limit + 10 for n in lengths[:-1])
    encoded, report = tokenize.tokenize_dataset(Dataset.from_list(rows), tokenizer, max_length=limit)
    assert report.truncated == [0, 1, 2, 3, 4, 5] and report.lengths == lengths
    assert [row for row, _ in report.dropped] == [0, 1, 2, 3, 4, 5]
    assert "answer was cut off" in report.dropped[0][1] and "6 truncated, 6 dropped" in str(report)
    assert len(encoded) == 1 and encoded[0]["source_row"] == 6
    assert encoded.column_names == ["input_ids", "attention_mask", "labels", "num_tokens", "source_row"]


def test_tokenize_dataset_without_limit_matches_tokenize_row(tokenizer):
    from datasets import Dataset

    rows = [{"instruction": "Add.", "input": "1+1", "output": "2"}, {"instruction": "Greet.", "output": "Hi"}]
    encoded, report = tokenize.tokenize_dataset(Dataset.from_list(rows), tokenizer)
    assert report.truncated == [] and report.dropped == []
    for row, got in zip(rows, encoded):
        assert got["input_ids"] == tokenize.tokenize_row(row, tokenizer)["input_ids"]


def test_label_views(tokenizer):
    row = tokenize_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tokenizer)
    table = tokenize.label_table(row, tokenizer)
    assert len(table) == len(row["input_ids"])
    assert [t["text"] for t in table if t["learned"]] == ["Y", "o", "<|im_end|>"]
    runs = tokenize.show_labels(row, tokenizer).splitlines()
    assert [line.split()[0] for line in runs] == ["masked", "LEARN", "masked"]
    assert "'Yo<|im_end|>'" in runs[1]
    assert len(tokenize.show_labels(row, tokenizer, by="token").splitlines()) == len(table)
    with pytest.raises(ValueError):
        tokenize.show_labels(row, tokenizer, by="word")


def test_pad_token_note_explains_the_choice(tokenizer):
    note = tokenize.pad_token_note(tokenizer)
    assert "<|endoftext|>" in note and "differs from EOS" in note

    class Same:
        pad_token = eos_token = "</s>"

    assert "never learn to stop" in tokenize.pad_token_note(Same())


def test_pad_batch_rejects_nonsense():
    with pytest.raises(ValueError, match="no rows"):
        pad_batch([], 0)
    with pytest.raises(ValueError, match="padding_side"):
        pad_batch([{"input_ids": [1]}], 0, padding_side="middle")


def test_tokenize_dataset_can_keep_the_source_columns(tokenizer):
    from datasets import Dataset

    rows = [{"text": "Hello there", "source_row": 4, "origin": "web"}]
    encoded, _ = tokenize.tokenize_dataset(Dataset.from_list(rows), tokenizer, keep_columns=True)
    assert encoded[0]["origin"] == "web" and encoded[0]["source_row"] == 4 and encoded[0]["text"] == "Hello there"


def test_chat_collator_needs_a_pad_token():
    class NoPad:
        pad_token_id = None

    with pytest.raises(ValueError, match="no pad token"):
        ChatCollator(NoPad())


_CHAT = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Sky?"},
         {"role": "assistant", "content": "Blue"}, {"role": "user", "content": "Grass?"},
         {"role": "assistant", "content": "Green"}]
_PIPELINES = [("ok", 0), ("prompt_learned", 0), ("prompt_learned", 1), ("prompt_learned", 2), ("reply_masked", 0),
              ("reply_masked", 1), ("end_masked", 0), ("shifted", 0)]


@pytest.mark.parametrize("bug,variant", _PIPELINES)
def test_label_bug_names_the_bug_each_pipeline_makes(tokenizer, bug, variant):
    row = tokenize.with_label_bug(_CHAT, tokenizer, bug, variant)
    assert row["input_ids"] == tokenize_chat(_CHAT, tokenizer)["input_ids"]  # only the labels are wrong
    assert tokenize.label_bug(_CHAT, row, tokenizer) == bug
    assert (row["labels"] == tokenize_chat(_CHAT, tokenizer)["labels"]) == (bug == "ok")


def test_label_bug_symptoms_and_causes(tokenizer):
    right = tokenize_chat(_CHAT, tokenizer)
    shifted = tokenize.with_label_bug(_CHAT, tokenizer, "shifted")
    # a shifted row learns a header token and masks an end token, yet its cause is the shift
    header_end = [t for t, label in enumerate(right["labels"]) if label != IGNORE_INDEX][0] - 1
    assert shifted["labels"][header_end] == right["input_ids"][header_end + 1]
    only_last = tokenize.with_label_bug(_CHAT, tokenizer, "reply_masked", 0)
    assert tokenizer.decode([t for t, l in zip(only_last["input_ids"], only_last["labels"]) if l != IGNORE_INDEX]) == \
        "Green<|im_end|>"
    assert set(tokenize.LABEL_BUGS) == {bug for bug, _ in _PIPELINES}


def test_label_bug_refuses_a_row_of_another_chat_and_unknown_pipelines(tokenizer):
    other = tokenize_chat(_CHAT[:3], tokenizer)
    with pytest.raises(ValueError, match="not this chat"):
        tokenize.label_bug(_CHAT, other, tokenizer)
    with pytest.raises(ValueError, match="no pipeline"):
        tokenize.with_label_bug(_CHAT, tokenizer, "end_masked", 3)
    with pytest.raises(ValueError, match="two replies"):
        tokenize.with_label_bug(_CHAT[:3], tokenizer, "reply_masked", 0)
