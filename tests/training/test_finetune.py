"""finetune_lora (course_lib.training.finetune): it trains the adapters only and repeats with a seed; its switch takes
the fast path on a CUDA GPU, the Trainer elsewhere or when asked, the same run either way."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from course_lib.core import tasks
from course_lib.core.results import NonFiniteLossError, TrainResult
from course_lib.fast.settings import FastSettings
from course_lib.training import finetune
from course_lib.training.finetune import LoraSettings, choose_path, fast_settings_for, finetune_lora


def conversations(n=8, seed=1):
    return [tasks.to_messages(e) for e in tasks.make_examples(n, seed=seed)]


class _Param:
    def __init__(self, device):
        self.device = torch.device(device)


def on_device(model, device: str):
    """`model` as choose_path sees it when its parameters live on `device` (no GPU needed to test the rule)."""
    twin = copy.copy(model)
    twin.parameters = lambda: iter([_Param(device)])
    return twin


def test_lora_run_trains_adapters_only(tiny_llama, tokenizer):
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    settings = LoraSettings(steps=4, batch_size=2, learning_rate=1e-2, warmup_steps=0, r=4, alpha=8)
    result = finetune_lora(tiny_llama, tokenizer, [tasks.to_messages(e) for e in tasks.make_examples(8)], settings,
                           progress=False)
    assert [row["step"] for row in result.history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(result.losses)))
    lora = {n: p for n, p in result.model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in lora.items() if "lora_B" in n)
    for name, param in result.model.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, before[original]), f"{name} changed"


def test_same_seed_same_losses(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    def run():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2)
        return finetune_lora(LlamaForCausalLM(config), tokenizer, [tasks.to_messages(e) for e in tasks.make_examples(8)],
                             LoraSettings(steps=3, batch_size=2, r=2, alpha=4), progress=False).losses

    assert run() == run()


def test_choose_path_is_fast_on_cuda_and_cpu_unless_switched_off(tiny_llama):
    assert choose_path(on_device(tiny_llama, "cuda"), LoraSettings())[0] is True
    assert choose_path(on_device(tiny_llama, "cuda"), LoraSettings(fast=False)) == (False, "LoraSettings(fast=False)")
    fast, why = choose_path(tiny_llama, LoraSettings())  # measured faster than the Trainer on 2 cores
    assert fast is True and "CPU" in why
    assert choose_path(tiny_llama, LoraSettings(fast=False)) == (False, "LoraSettings(fast=False)")
    fast, why = choose_path(on_device(tiny_llama, "mps"), LoraSettings())  # never measured there: the Trainer
    assert fast is False and "mps" in why
    assert choose_path(on_device(tiny_llama, "mps"), LoraSettings(fast=True))[0] is True


def test_choose_path_falls_back_where_the_fast_path_would_be_wrong(tiny_llama):
    half = copy.deepcopy(tiny_llama).to(torch.float16)  # fp16 (a T4): the fast path scales the loss
    assert choose_path(on_device(half, "cuda"), LoraSettings())[0] is True
    capped = copy.deepcopy(tiny_llama)
    capped.config.final_logit_softcapping = 30.0
    assert choose_path(on_device(capped, "cuda"), LoraSettings())[0] is False
    spread = copy.deepcopy(tiny_llama)  # device_map="auto" over two GPUs (Kaggle's two T4s)
    spread.hf_device_map = {"model.embed_tokens": 0, "model.layers": 0, "model.norm": 1, "lm_head": 1}
    fast, why = choose_path(on_device(spread, "cuda"), LoraSettings())
    assert fast is False and "device_map" in why and "Trainer" in why


@pytest.mark.parametrize("capability, fast", [((7, 5), False), ((8, 0), True)])
def test_bf16_weights_take_the_fast_path_only_where_the_gpu_computes_in_bf16(tiny_llama, monkeypatch, capability,
                                                                             fast):
    """A bf16 model on a T4 (bf16 only emulated there): the Trainer, which autocasts to fp16, and the reason why."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    model = on_device(copy.deepcopy(tiny_llama).to(torch.bfloat16), "cuda")
    chosen, why = choose_path(model, LoraSettings())
    assert chosen is fast
    if not fast:
        assert "emulates" in why and "float16" in why
        with pytest.raises(ValueError, match="emulates"):
            choose_path(model, LoraSettings(fast=True))


def test_fast_settings_carry_every_lora_setting():
    settings = LoraSettings(steps=7, batch_size=3, learning_rate=1e-3, warmup_steps=2, r=4, alpha=16, dropout=0.1,
                            target_modules=["q_proj", "v_proj"], max_length=99, seed=5)
    fast = fast_settings_for(settings)
    for name in ("steps", "batch_size", "learning_rate", "warmup_steps", "r", "alpha", "dropout", "target_modules",
                 "max_length", "seed"):
        assert getattr(fast, name) == getattr(settings, name), name
    assert (fast.schedule, fast.weight_decay, fast.max_grad_norm, fast.recipe) == ("linear", 0.0, 1.0, False)
    # every LoraSettings field is either mapped above or is the switch itself
    mapped = {"steps", "batch_size", "learning_rate", "warmup_steps", "r", "alpha", "dropout", "target_modules",
              "max_length", "seed", "fast"}
    assert {f.name for f in dataclasses.fields(LoraSettings)} == mapped
    assert LoraSettings().dropout == 0.0 and FastSettings().fused_lora  # the default runs fused LoRA layers


def test_fast_switch_returns_what_notebooks_read(tiny_llama, tokenizer):
    """fast=True on a CPU: a TrainResult with the Trainer path's attributes and history row keys, and the same losses."""
    data = conversations()
    settings = LoraSettings(steps=3, batch_size=8, learning_rate=1e-2, warmup_steps=1, r=4, alpha=8, max_length=128)
    torch.manual_seed(settings.seed)  # the Trainer path draws the adapters from the global generator; fast seeds it
    slow = finetune_lora(copy.deepcopy(tiny_llama), tokenizer, data, dataclasses.replace(settings, fast=False),
                         progress=False)
    fast = finetune_lora(tiny_llama, tokenizer, data, dataclasses.replace(settings, fast=True), progress=False)
    assert (slow.path, fast.path) == ("trainer", "fast")
    assert fast.global_step == slow.global_step == 3 and fast.seconds > 0
    assert [r["step"] for r in fast.history] == [r["step"] for r in slow.history] == [1, 2, 3]
    assert set(slow.history[0]) <= set(fast.history[0])  # step, loss, learning_rate, grad_norm (+ tokens)
    assert [r["learning_rate"] for r in fast.history] == pytest.approx([r["learning_rate"] for r in slow.history])
    # each step sees all 8 examples, so the order cannot matter: the same loss, step by step, on both paths
    assert fast.losses == pytest.approx(slow.losses, rel=1e-4)
    assert [r["grad_norm"] for r in fast.history] == pytest.approx([r["grad_norm"] for r in slow.history], rel=1e-3)
    assert fast.eval_history == [] and fast.final_eval_loss is None and fast.details["fused_lora_layers"] == 14
    assert not fast.model.training and any("lora_" in n for n, _ in fast.model.named_parameters())


def test_cpu_default_is_the_fast_path_and_fast_false_the_trainer(tiny_llama, tokenizer, monkeypatch):
    settings = LoraSettings(steps=1, batch_size=2, warmup_steps=0, r=2, alpha=4)
    trainer = finetune.train
    monkeypatch.setattr(finetune, "train", lambda *a, **k: pytest.fail("the Trainer ran on a CPU by default"))
    result = finetune_lora(copy.deepcopy(tiny_llama), tokenizer, conversations(4), settings, progress=False)
    assert result.path == "fast" and "CPU" in result.details["why"]
    monkeypatch.setattr(finetune, "train", trainer)
    monkeypatch.setattr(finetune, "train_fast", lambda *a, **k: pytest.fail("fast=False ran the fast path"))
    result = finetune_lora(tiny_llama, tokenizer, conversations(4), dataclasses.replace(settings, fast=False),
                           progress=False)
    assert result.path == "trainer" and result.details["why"] == "LoraSettings(fast=False)"


def test_fast_path_non_finite_loss_is_the_trainers_error(tiny_llama, tokenizer):
    settings = LoraSettings(steps=2, batch_size=4, learning_rate=1e30, warmup_steps=0, r=2, alpha=4, fast=True)
    with pytest.raises(NonFiniteLossError, match="at step 2") as caught:
        finetune_lora(tiny_llama, tokenizer, conversations(4), settings, progress=False)
    assert caught.value.step == 2 and [r["step"] for r in caught.value.history] == [1]


def test_fast_path_says_which_path_ran(tiny_llama, tokenizer, capsys):
    finetune_lora(tiny_llama, tokenizer, conversations(4), LoraSettings(steps=1, batch_size=4, r=2, alpha=4, fast=True))
    assert "fast path" in capsys.readouterr().out
    assert TrainResult(model=None, history=[], seconds=0.0).path == "trainer"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("flash_varlen", [True, False])
def test_fp16_model_on_a_gpu_takes_the_fast_path_with_loss_scaling(tiny_llama, tokenizer, flash_varlen, monkeypatch):
    """A T4's setting: fp16 weights. The fast path trains with loss scaling; without flash varlen (a T4 has none) the
    padded SDPA attention serves, still inside CUDA graphs."""
    original = finetune.fast_settings_for
    monkeypatch.setattr(finetune, "fast_settings_for", lambda s: original(s).replace(flash_varlen=flash_varlen))
    model = tiny_llama.half().cuda()
    result = finetune_lora(model, tokenizer, conversations(8), LoraSettings(steps=4, batch_size=4, r=4, alpha=8),
                           progress=False)
    assert result.path == "fast" and result.details["dtype"] == "float16"
    assert result.details["attention"] == ("padded SDPA" if not flash_varlen or torch.cuda.get_device_capability()[0] < 8
                                           else "flash varlen")
    assert "loss_scale" in result.details and result.details["graphs"]["graphs"] >= 1
    assert all(math.isfinite(loss) for loss in result.losses) and result.details["loss_scale"]["skipped_steps"] < 4
    assert any(p.abs().sum() > 0 for n, p in result.model.named_parameters() if "lora_B" in n)  # the adapters moved


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_after_the_gpu_fast_path_the_model_and_transformers_run_on_the_cpu_again(tiny_llama, tokenizer):
    """Liger's kernels (where liger-kernel is installed) patch transformers' Llama module for the whole process; the
    fast path undoes them, so the trained model moved to the CPU (to merge or export it) runs PyTorch's code."""
    from transformers.models.llama import modeling_llama

    names = ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")
    before = {name: getattr(modeling_llama, name) for name in names}
    result = finetune_lora(tiny_llama.cuda(), tokenizer, conversations(8), LoraSettings(steps=2, batch_size=4, r=4,
                                                                                         alpha=8), progress=False)
    assert result.path == "fast" and {name: getattr(modeling_llama, name) for name in names} == before
    model = result.model.cpu()
    assert not any("forward" in vars(module) for module in model.get_base_model().modules())
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.randint(3, 1000, (1, 9))).logits).all()
