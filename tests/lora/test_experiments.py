"""Notebook 02's experiments (course_lib.lora.experiments): our LoRA trained side by side with peft's, and the rsLoRA
rank experiment."""

import copy

import pytest

from course_lib.core import tasks
from course_lib.lora.experiments import (
    LOSS_TOLERANCE,
    alpha_or_learning_rate,
    compare_with_peft,
    make_batches,
    rank_scaling_experiment,
    scaling_table,
    train_steps,
)
from course_lib.lora.layer import inject_lora, lora_layers


def _convs(n=6):
    return [tasks.to_messages(e) for e in tasks.make_examples(n, seed=0)]


def test_make_batches_cycles_and_masks_prompts(tokenizer):
    batches = make_batches(_convs(3), tokenizer, batch_size=2, steps=4)
    assert len(batches) == 4 and all(b["input_ids"].shape[0] == 2 for b in batches)
    for b in batches:
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
        assert (b["labels"] == -100).any() and (b["labels"] != -100).any()  # prompt masked, answer kept
    with pytest.raises(ValueError, match="no conversations"):
        make_batches([], tokenizer, batch_size=2, steps=1)


def test_compare_with_peft_matches_for_a_right_layer_and_catches_a_wrong_one(tiny_llama, tokenizer):
    batches = make_batches(_convs(), tokenizer, batch_size=2, steps=3)
    pattern = r".*\.(q_proj|v_proj)"
    good, ours, theirs = compare_with_peft(copy.deepcopy(tiny_llama), lambda m: inject_lora(m, pattern, r=4, alpha=8),
                                           batches, r=4, alpha=8, target_modules=pattern, lr=1e-2)
    assert good.matches and good.max_abs_diff <= LOSS_TOLERANCE and "equal within" in str(good)
    assert good.ours[-1] < good.ours[0]  # it trained
    assert not any(p.requires_grad for n, p in ours.named_parameters() if "lora_" not in n)

    def alpha_not_over_r(model):  # the typical learner's mistake: scaling alpha instead of alpha / r
        inject_lora(model, pattern, r=4, alpha=8)
        for layer in lora_layers(model).values():
            layer.scaling = 8
        return model

    with pytest.warns(UserWarning, match="scaling differs"):
        bad, _, _ = compare_with_peft(copy.deepcopy(tiny_llama), alpha_not_over_r, batches, r=4, alpha=8,
                                      target_modules=pattern, lr=1e-2)
    assert not bad.matches and "NOT equal" in str(bad)


def test_train_steps_refuses_a_model_with_nothing_to_train(tiny_llama, tokenizer):
    tiny_llama.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_steps(tiny_llama, make_batches(_convs(2), tokenizer, 1, 1), lr=1e-3)


def test_rank_scaling_experiment_shows_the_rslora_effect():
    runs = rank_scaling_experiment(ranks=(4, 64), steps=30)
    plain, rs = runs["alpha / r"], runs["alpha / sqrt(r)"]
    assert set(runs) == {"alpha / r", "alpha / sqrt(r)"} and all(len(c) == 30 for c in plain.values())
    assert plain[4][0] == pytest.approx(1.0, abs=0.05)  # relative loss starts at 1 (B = 0)
    # What the notebook claims: with alpha/sqrt(r) the higher rank learns faster; with alpha/r it barely differs.
    assert rs[64][-1] < rs[4][-1] - 0.05
    assert abs(plain[64][-1] - plain[4][-1]) < 0.02
    assert rs[64][-1] < plain[64][-1]


def test_doubling_alpha_is_doubling_bs_learning_rate_not_the_learning_rate(tiny_llama, tokenizer):
    """Over a whole run, with Adam: alpha x2 and LoRA+'s B-only learning rate x2 are one run; lr x2 is another."""
    batches = make_batches(_convs(), tokenizer, batch_size=2, steps=8)
    runs = alpha_or_learning_rate(tiny_llama, batches, r=4, alpha=8, lr=1e-2, factor=2.0)
    (alpha2, _, _, _, _, _, _), (lr2, *_, lr_loss_gap, lr_delta_gap), (b2, *_, b_loss_gap, b_delta_gap) = \
        scaling_table(runs)
    assert (alpha2, lr2, b2) == ("alpha x2", "learning rate x2", "B's learning rate x2 (LoRA+)")
    assert b_delta_gap < 1e-3 and b_loss_gap < 1e-4  # the same run up to Adam's epsilon and rounding
    assert lr_delta_gap > 0.05  # A moved twice as fast: a different adapter
    assert runs["alpha x2"].losses[0] == runs["learning rate x2"].losses[0]  # every run starts where the base is
    assert not any("lora_" in name for name, _ in tiny_llama.named_parameters())  # each run adapted its own copy
