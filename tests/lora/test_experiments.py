"""Notebook 02's experiments (course_lib.lora.experiments): our LoRA trained side by side with peft's, and the rsLoRA
rank experiment."""

import copy

import pytest

from course_lib.core import tasks
from course_lib.lora.experiments import (
    LOSS_TOLERANCE,
    compare_with_peft,
    make_batches,
    rank_scaling_experiment,
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
