"""The course's fine-tuning entry points: `finetune_lora` and `finetune_qlora` on chat conversations.

`finetune_lora` and `finetune_qlora` (a 4-bit base from `qlora.bnb.load_4bit`) take the fast path (`course_lib.fast`)
on a CUDA GPU and on the CPU, where it measured faster than the Hugging Face Trainer with peft
(tests/benchmarks/README.md), and the Trainer elsewhere or when told to (`LoraSettings(fast=False)`), by the same rule
(`choose_path`). Both return a `core.results.TrainResult` whose `path` says which code ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from peft import LoraConfig, get_peft_model

from course_lib.core.models import ALL_LINEAR
from course_lib.core.results import TrainResult
from course_lib.data.tokenize import to_rows
from course_lib.fast.engine import train_fast, unsupported_reason
from course_lib.fast.settings import FastSettings
from course_lib.qlora.bnb import add_lora, is_4bit, unpack_cpu_weights
from course_lib.training.config import TrainConfig, resolve_precision
from course_lib.training.trainer import train


@dataclass
class LoraSettings:
    """The knobs of a short LoRA run; the defaults suit the 135M model on the course task."""

    steps: int = 50
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup_steps: int = 5
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    max_length: int = 256
    seed: int = 0
    # which path `finetune_lora` takes: None = the fast path when the model is on a CUDA GPU or the CPU (where both
    # measured faster than the Trainer), the Trainer otherwise; False = always the Hugging Face Trainer (the recipe
    # the course teaches); True = always the fast path
    fast: bool | None = None


def lora_config_for(settings: LoraSettings):
    """The peft LoraConfig for these settings."""

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")


def choose_path(model, settings: LoraSettings) -> tuple[bool, str]:
    """(use the fast path?, why): `settings.fast` decides when set, else the fast path on a CUDA GPU or the CPU."""

    device = next(model.parameters()).device.type
    reason = unsupported_reason(model)
    if settings.fast is False:
        return False, "LoraSettings(fast=False)"
    if settings.fast is True:
        if reason:
            raise ValueError(f"LoraSettings(fast=True), but {reason} (fast=False)")
        return True, "LoraSettings(fast=True)" + (" on a CPU: same maths, no GPU kernels" if device != "cuda" else "")
    if device not in ("cuda", "cpu"):
        return False, f"the model is on the {device}; the fast path is measured on CUDA GPUs and CPUs only"
    if reason:
        return False, reason.replace("use the recipe for this model", "so the Trainer runs")
    if device == "cpu":  # packed batches and fused LoRA layers: 1.5x (LoRA) and 1.8x (QLoRA) the Trainer on 2 cores
        return True, "the model is on the CPU, where the fast path measured faster than the Trainer"
    return True, "the model is on a CUDA GPU"


def fast_settings_for(settings: LoraSettings):
    """The fast path's settings for the same run: the optimisation exactly as the Trainer path does it.

    Both: `batch_size` examples per optimizer step, linear warm-up and decay, AdamW (betas 0.9/0.999, eps 1e-8) with
    no weight decay, the Trainer path's gradient clipping (1.0), seeded shuffled epochs, LoRA on the same layers with the same rank,
    alpha and dropout. (LoRA dropout above 0 is honoured: those layers run through peft's own forward, unfused.)
    """

    return FastSettings(
        steps=settings.steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, schedule="linear", weight_decay=0.0,
        max_grad_norm=TrainConfig().max_grad_norm, r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
        target_modules=list(settings.target_modules), max_length=settings.max_length, seed=settings.seed,
    )


def finetune_lora(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    settings: LoraSettings | None = None,
    progress: bool = True,
) -> TrainResult:
    """Wrap `model` with LoRA adapters and train them on chat conversations (loss on answers only).

    On a CUDA GPU or the CPU this runs the fast path (`course_lib.fast`: packed batches, fused LoRA layers, and on a
    GPU varlen attention, fused AdamW and CUDA graphs); elsewhere, or with `LoraSettings(fast=False)`, the Hugging
    Face Trainer with peft. Both minimise the same loss with the same optimiser settings; `result.path` says which
    one ran.
    """

    settings = settings or LoraSettings()
    rows = to_rows(conversations, tokenizer, settings.max_length)  # fail on bad data before touching the model
    fast, why = choose_path(model, settings)
    if fast:
        return _train_fast_path("finetune_lora", model, tokenizer, rows, fast_settings_for(settings), why, progress)
    peft_model = get_peft_model(model, lora_config_for(settings))
    on_gpu = next(model.parameters()).device.type == "cuda"
    config = TrainConfig(
        max_steps=settings.steps, per_device_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, schedule="linear", weight_decay=0.0, max_length=settings.max_length,
        precision=resolve_precision("auto", "cuda") if on_gpu else "fp32", seed=settings.seed,
    )
    result = train(peft_model, tokenizer, rows, config, progress=progress,
                   desc="LoRA, Trainer" + (" (fast=False)" if on_gpu else ""))
    result.details["why"] = why
    return result


def _train_fast_path(caller: str, model, tokenizer, rows, settings: FastSettings, why: str,
                     progress: bool) -> TrainResult:
    """`train_fast` for finetune_lora/finetune_qlora: one line saying so, and why, in the result's details."""
    if progress:
        print(f"{caller}: fast path ({why}); LoraSettings(fast=False) runs the plain Trainer recipe")
    result = train_fast(model, tokenizer, rows, settings, progress=progress,
                        desc=("QLoRA" if caller == "finetune_qlora" else "LoRA") + ", fast path")
    result.details["why"] = why
    return result


_FAST_OPTIMIZERS = {"paged_adamw_8bit": "paged8bit", "adamw_torch": "fused", "adamw_torch_fused": "fused"}


def finetune_qlora(model, tokenizer, conversations: Sequence[Sequence[dict]], settings: LoraSettings | None = None,
                   optimizer: str | None = None, progress: bool = True) -> TrainResult:
    """Add LoRA adapters to a 4-bit model from `load_4bit` and train them on chat conversations.

    The same run as `finetune_lora` (same settings, loss on answers only, the same choice of path), with paged
    8-bit AdamW on a GPU. `optimizer` is a Trainer `optim` name; the fast path knows those in _FAST_OPTIMIZERS.
    """

    if not is_4bit(model):
        raise ValueError("finetune_qlora expects a model loaded in 4 bits (qlora.load_4bit); "
                         "for a 16/32-bit model use finetune_lora")
    settings = settings or LoraSettings()
    rows = to_rows(conversations, tokenizer, settings.max_length)  # fail on bad data before touching the model
    unpack_cpu_weights(model)  # a generation before training may have packed them for inference
    on_gpu = next(model.parameters()).device.type == "cuda"
    fast, why = choose_path(model, settings)
    if fast:
        if optimizer is not None and optimizer not in _FAST_OPTIMIZERS:
            raise ValueError(f"the fast path has no optimizer {optimizer!r} (it has {sorted(_FAST_OPTIMIZERS)}); "
                             "LoraSettings(fast=False) runs the Trainer, which has")
        chosen = _FAST_OPTIMIZERS[optimizer] if optimizer else "auto"  # auto: paged 8-bit AdamW on a GPU
        return _train_fast_path("finetune_qlora", model, tokenizer, rows,
                                fast_settings_for(settings).replace(optimizer=chosen), why, progress)
    peft_model = add_lora(model, r=settings.r, alpha=settings.alpha, targets=settings.target_modules,
                          dropout=settings.dropout)
    config = TrainConfig(
        max_steps=settings.steps, per_device_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, schedule="linear", weight_decay=0.0, max_length=settings.max_length,
        precision=resolve_precision("auto", "cuda") if on_gpu else "fp32", seed=settings.seed,
        optim=optimizer or ("paged_adamw_8bit" if on_gpu else "adamw_torch"),
    )
    result = train(peft_model, tokenizer, rows, config, progress=progress,
                   desc="QLoRA, Trainer" + (" (fast=False)" if on_gpu else ""))
    result.details["why"] = why
    return result
