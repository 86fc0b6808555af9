"""The forgetting probe (course_lib.evaluation.forgetting): the shipped probe, the sweep's table, its plot."""

import pytest

from course_lib.core.tasks import make_examples, to_messages
from course_lib.evaluation import forgetting
from course_lib.training.methods import tiny_causal_lm


def test_the_probe_ships_with_the_package_and_tokenizes(tokenizer):
    probe = forgetting.load_probe()
    assert len(probe["paragraphs"]) >= 5 and len(probe["questions"]) >= 10
    assert all(len(p.split()) >= 50 for p in probe["paragraphs"])
    tokenized = forgetting.build_probe(tokenizer)
    assert len(tokenized.text_rows) == len(probe["paragraphs"])
    assert all(r["labels"] == r["input_ids"] for r in tokenized.text_rows)  # plain text: every token scored
    for row, question in zip(tokenized.question_rows, probe["questions"]):  # chats: only the answer is scored
        learned = tokenizer.decode([t for t in row["labels"] if t != -100])
        assert learned.startswith(question["answer"]) and question["question"] not in learned


@pytest.fixture(scope="module")
def sweep(tokenizer):
    examples = make_examples(40, seed=5)
    train, test = [to_messages(e) for e in examples[:32]], [to_messages(e) for e in examples[32:]]
    settings = [forgetting.Setting("gentle LoRA", "lora", learning_rate=1e-4, steps=(1, 2), r=4),
                forgetting.Setting("hard full FT", "full", learning_rate=3e-2, steps=(4,))]
    return forgetting.forgetting_sweep(lambda: tiny_causal_lm(tokenizer), tokenizer, train, test, settings,
                                       batch_size=4, progress=False)


def test_the_sweep_has_the_base_model_then_one_row_per_checkpoint(sweep):
    assert list(sweep["setting"]) == ["base model", "gentle LoRA", "gentle LoRA", "hard full FT"]
    assert list(sweep["steps"]) == [0, 1, 2, 4]
    base = sweep.iloc[0]
    assert base["text_change_%"] == 0 and base["qa_change_%"] == 0 and base["task_gain"] == 0
    lora, full = sweep.iloc[2], sweep.iloc[3]
    assert 0 < lora["trainable"] < full["trainable"]
    assert lora["r"] == 4 and full["method"] == "full"
    for column in ("task_loss", "task_exact", "probe_text_ppl", "probe_qa_ppl", "seconds"):
        assert sweep[column].notna().all(), column


def test_hard_full_fine_tuning_moves_the_probe_more_than_gentle_lora(sweep):
    gentle, hard = sweep.iloc[2], sweep.iloc[3]
    assert abs(hard["text_change_%"]) > 10 * abs(gentle["text_change_%"])
    assert hard["task_gain"] > gentle["task_gain"]  # and it learned the task's tokens faster


def test_settings_are_checked(tokenizer):
    with pytest.raises(ValueError, match="method must be one of"):
        forgetting.Setting("x", "bitfit")
    with pytest.raises(ValueError, match="increasing"):
        forgetting.Setting("x", steps=(5, 2))
    with pytest.raises(ValueError, match="must differ"):
        forgetting.forgetting_sweep(lambda: None, tokenizer, [], [], [forgetting.Setting("a"), forgetting.Setting("a")])


def test_the_plot_has_a_point_per_row(sweep):
    import matplotlib

    matplotlib.use("Agg")
    fig = forgetting.plot_forgetting(sweep)
    assert len(fig.axes) == 2
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(sweep)
