"""The fast path's engine (course_lib.fast.engine) on a CPU: its loss matches the textbook recipe step by step, its
switches change only speed and memory, and the benchmark's CPU mode runs."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from course_lib.core import tasks
from course_lib.data.tokenize import to_rows
from course_lib.fast.engine import train_fast
from course_lib.fast.settings import FastSettings
from tests.helpers import REPO

# ---------------------------------------------------------------------------------------------------- fast path vs recipe


def test_fast_path_loss_equals_the_recipe(tiny_llama, tokenizer):
    """Same adapters, same examples per step, same token-weighted loss: the curves agree step by step.

    Each step sees the whole (8-example) data set, so the recipe's shuffling cannot change what a step averages.
    """
    conversations = [tasks.to_messages(e) for e in tasks.make_examples(8, seed=1)]
    settings = FastSettings(steps=3, batch_size=8, micro_batch_size=4, learning_rate=1e-2, warmup_steps=0,
                            max_length=128, dropout=0.0, max_tokens=300)  # 300 tokens: several micro-batches
    twin = copy.deepcopy(tiny_llama)
    fast = train_fast(tiny_llama, tokenizer, conversations, settings, progress=False)
    recipe = train_fast(twin, tokenizer, conversations, settings.replace(recipe=True), progress=False)
    assert fast.path == "fast" and recipe.path == "recipe"
    assert len(fast.losses) == len(recipe.losses) == 3
    assert fast.losses == pytest.approx(recipe.losses, rel=1e-4)
    assert fast.losses[-1] < fast.losses[0]
    mine, theirs = dict(fast.model.named_parameters()), dict(recipe.model.named_parameters())
    lora = [name for name in mine if "lora_" in name]
    assert lora and all(torch.allclose(mine[n], theirs[n], atol=1e-4) for n in lora)
    assert fast.tokens == 3 * sum(len(r["input_ids"]) for r in to_rows(conversations, tokenizer, 128))
    # after training the model generates with its own attention again (the packed one needs packed batches)
    assert fast.model.get_base_model().config._attn_implementation != "course_varlen"


def test_fp16_fast_path_loss_equals_the_fp16_recipe(tiny_llama, tokenizer):
    """A T4's setting on a CPU: fp16 weights. The fast path (fp16 adapters, fp32 masters, its own loss scaling,
    padded SDPA attention) and the recipe (fp32 adapters, the Trainer's fp16=True with its GradScaler) agree."""
    conversations = [tasks.to_messages(e) for e in tasks.make_examples(8, seed=1)]
    settings = FastSettings(steps=3, batch_size=8, micro_batch_size=4, learning_rate=1e-2, warmup_steps=0,
                            max_length=128, dropout=0.0, max_tokens=300)
    half = tiny_llama.half()
    twin = copy.deepcopy(half)
    fast = train_fast(half, tokenizer, conversations, settings, progress=False)
    recipe = train_fast(twin, tokenizer, conversations, settings.replace(recipe=True), progress=False)
    assert fast.path == "fast" and fast.details["attention"] == "padded SDPA"
    assert fast.details["loss_scale"] == {"skipped_steps": 0, "final_scale": 2.0**16}
    assert fast.losses == pytest.approx(recipe.losses, rel=1e-4)
    assert fast.losses[-1] < fast.losses[0]
    assert all(p.dtype == torch.float16 for n, p in fast.model.named_parameters() if "lora_" in n)


def test_a_step_skipped_for_fp16_overflow_leaves_the_schedule_where_it_was(tiny_llama, tokenizer, monkeypatch):
    """As the Trainer does (it steps the scheduler only when the GradScaler did not skip the optimizer step)."""
    from course_lib.fast import ops

    monkeypatch.setattr(ops.LossScale.__init__, "__defaults__", (2.0**22, 2000))  # too high: the first steps overflow
    conversations = [tasks.to_messages(e) for e in tasks.make_examples(8, seed=1)]
    settings = FastSettings(steps=6, batch_size=8, micro_batch_size=4, learning_rate=1e-2, warmup_steps=0,
                            max_length=128, dropout=0.0, max_tokens=300)
    result = train_fast(tiny_llama.half(), tokenizer, conversations, settings, progress=False)
    skipped = [not torch.isfinite(torch.tensor(row["grad_norm"])) for row in result.history]
    assert any(skipped) and not all(skipped) and result.details["loss_scale"]["skipped_steps"] == sum(skipped)
    stepped_before = [sum(not s for s in skipped[:i]) for i in range(len(skipped))]
    assert [row["learning_rate"] for row in result.history] == pytest.approx(
        [1e-2 * (1 - n / settings.steps) for n in stepped_before])
    for i in range(1, len(skipped)):  # every step sees the same 8 examples: a skipped step changes no weight
        assert (result.history[i]["loss"] == result.history[i - 1]["loss"]) is skipped[i - 1]


def test_to_rows_names_the_bad_item(tokenizer):
    good = tasks.to_messages(tasks.make_examples(1)[0])
    with pytest.raises(ValueError, match="training item 1"):
        to_rows([good, "just a string"], tokenizer, 128)
    with pytest.raises(ValueError, match="training item 0 has no token to learn"):
        to_rows([good], tokenizer, 8)  # the answer is cut off
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        train_fast(None, tokenizer, [good], FastSettings.textbook(batch_size=6, micro_batch_size=4), progress=False)


def test_textbook_settings_are_the_recipe():
    s = FastSettings.textbook()
    assert (s.recipe, s.batch_size, s.micro_batch_size, s.max_length, s.dropout) == (True, 32, 8, 512, 0.05)
    assert FastSettings().recipe is False and FastSettings().dropout == 0.0


# ---------------------------------------------------------------------------------------------------- the benchmark


def test_benchmark_cpu_mode_runs():
    script = REPO / "tests" / "benchmarks" / "train_throughput.py"
    proc = subprocess.run([sys.executable, str(script), "--cpu", "--methods", "QLoRA tiny"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| QLoRA tiny")]
    assert len(rows) == 1 and "x | " in rows[0], proc.stdout[-2000:]


# ---------------------------------------------------------------------------------------------------- switches


def test_switches_do_not_change_the_maths(tiny_llama, tokenizer):
    """Fused or peft LoRA layers, checkpointed or not: the same losses (only speed and memory differ)."""
    conversations = [tasks.to_messages(e) for e in tasks.make_examples(6, seed=2)]
    base = FastSettings(steps=2, batch_size=6, learning_rate=1e-2, warmup_steps=0, max_length=128)
    runs = {}
    variants = {"fused": {}, "peft": {"fused_lora": False}, "checkpointed": {"gradient_checkpointing": 0.5},
                "ungrouped": {"grouped_lora": False}}
    for name, changes in variants.items():
        result = train_fast(copy.deepcopy(tiny_llama), tokenizer, conversations, base.replace(**changes), progress=False)
        runs[name] = result
    assert runs["fused"].details["fused_lora_layers"] == 14 and runs["peft"].details["fused_lora_layers"] == 0
    assert runs["checkpointed"].details["checkpointed_layers"] == 0.5
    assert runs["peft"].losses == pytest.approx(runs["fused"].losses, rel=1e-5)
    assert runs["checkpointed"].losses == pytest.approx(runs["fused"].losses, rel=1e-5)
    assert runs["fused"].details["lora_groups"] == 4 and runs["ungrouped"].details["lora_groups"] == 0
    assert runs["ungrouped"].losses == pytest.approx(runs["fused"].losses, rel=1e-5)
    # the model leaves without patches: peft's forward back, checkpointing off
    model = runs["checkpointed"].model
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_set_checkpointing_covers_the_leading_layers_and_switches_back_off(tiny_llama):
    from course_lib.fast.engine import set_checkpointing

    layers = list(tiny_llama.get_decoder().layers)
    assert set_checkpointing(tiny_llama, 0.5, preserve_rng=False) == 0.5
    assert [layer.gradient_checkpointing for layer in layers] == [True] * (len(layers) // 2) + [False] * (
        len(layers) - len(layers) // 2)
    assert set_checkpointing(tiny_llama, 0.0) == 0.0  # what the measured headroom does when every layer fits
    assert not any(layer.gradient_checkpointing for layer in layers)
