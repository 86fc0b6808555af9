"""The course task (course_lib.core.tasks): seeded, varied, leakage-free JSON-extraction examples."""

import json

import pytest

from course_lib.core import tasks


def test_generation_is_deterministic_and_distinct():
    a, b = tasks.make_examples(300, seed=7), tasks.make_examples(300, seed=7)
    assert a == b
    assert len({e.text for e in a}) == 300
    assert a != tasks.make_examples(300, seed=8)


def test_splits_share_no_text():
    splits = tasks.make_splits(n_train=200, n_val=30, n_test=50, seed=1)
    texts = {name: {e.text for e in rows} for name, rows in splits.items()}
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [200, 30, 50]
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


def test_answers_are_canonical_and_match_the_text():
    for example in tasks.make_examples(200, seed=2):
        parsed = json.loads(example.answer_json())
        assert list(parsed) == list(tasks.FIELDS)
        assert parsed == example.answer
        assert example.answer["name"] in example.text
        for key in ("city", "job"):
            value = example.answer[key]
            assert value is None or value in example.text


def test_task_is_varied():
    examples = tasks.make_examples(400, seed=0)
    with_nulls = sum(any(v is None for v in e.answer.values()) for e in examples)
    assert 0.5 < with_nulls / len(examples) < 0.95
    assert sum(not any(ch.isdigit() for ch in e.text) and e.answer["age"] is not None for e in examples) > 10  # ages in words


def test_non_ascii_is_kept():
    assert tasks.answer_to_json({"name": "José"}) == '{"name": "José", "age": null, "city": null, "job": null}'


def test_messages():
    example = tasks.make_examples(1)[0]
    messages = tasks.to_messages(example)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[:2] == tasks.prompt_messages(example)
    assert messages[2]["content"] == example.answer_json()


def test_too_many_examples_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(tasks, "_TEMPLATES", {("name",): ["Hello."]})  # one possible text
    with pytest.raises(ValueError, match="distinct"):
        tasks.make_examples(2)
