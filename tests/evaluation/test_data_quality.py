"""The same-budget data experiment (course_lib.evaluation.data_quality) on a tiny model."""

import pytest

from course_lib.data import noise
from course_lib.data.pipeline import task_rows
from course_lib.evaluation.data_quality import budget_experiment
from course_lib.training.finetune import LoraSettings
from course_lib.training.methods import tiny_causal_lm


def test_one_row_per_training_set_with_the_budget_in_epochs(tokenizer):
    rows = task_rows(40, seed=9)
    train, test = rows[:32], rows[32:]
    noisy, _ = noise.add_noise(train, 0.5, seed=1)
    settings = LoraSettings(steps=2, batch_size=4, r=4, alpha=8, warmup_steps=0)
    table = budget_experiment(lambda: tiny_causal_lm(tokenizer), tokenizer, {"clean 8": train[:8], "noisy 32": noisy},
                              test, settings, progress=False)
    assert list(table["training set"]) == ["no fine-tuning", "clean 8", "noisy 32"]
    assert list(table["rows"]) == [0, 8, 32] and list(table["epochs"])[1:] == [1.0, 0.25]
    assert ((table["95% CI low"] <= table["exact match"]) & (table["exact match"] <= table["95% CI high"])).all()
    assert table["answer loss"].iloc[1] < table["answer loss"].iloc[0]  # training moved the clean test's loss
    with pytest.raises(ValueError, match="shares 1 prompt"):
        budget_experiment(lambda: tiny_causal_lm(tokenizer), tokenizer, {"leaky": train[:3] + test[:1]}, test, settings)
    with pytest.raises(ValueError, match="is empty"):
        budget_experiment(lambda: tiny_causal_lm(tokenizer), tokenizer, {"none": []}, test, settings)
    with pytest.raises(ValueError, match="at least one training set"):
        budget_experiment(lambda: tiny_causal_lm(tokenizer), tokenizer, {}, test, settings, baseline=False)
    alone = budget_experiment(lambda: tiny_causal_lm(tokenizer), tokenizer, {}, test, settings)
    assert list(alone["training set"]) == ["no fine-tuning"]
