from course_lib import tasks
from course_lib.data import IGNORE_INDEX, ChatCollator, pad_batch, render_prompt, tokenize_chat


def _learned_text(row, tokenizer):
    return tokenizer.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != IGNORE_INDEX])


def test_only_the_answer_and_its_end_token_are_learned(tokenizer):
    example = tasks.generate(1)[0]
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
    assert learned.replace("<|im_end|>", "|").split() == ["A|", "B|"]


def test_prompt_is_a_prefix_of_the_training_text(tokenizer):
    example = tasks.generate(1)[0]
    prompt = render_prompt(tasks.prompt_messages(example), tokenizer)
    full = tokenizer.decode(tokenize_chat(tasks.to_messages(example), tokenizer)["input_ids"])
    assert full.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")


def test_truncation(tokenizer):
    row = tokenize_chat(tasks.to_messages(tasks.generate(1)[0]), tokenizer, max_length=10)
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
