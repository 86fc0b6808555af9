"""Training on the Hugging Face `Trainer`: one `train()` for every method, and LoRA fine-tuning on top of it.

`train()` takes a model (already wrapped or frozen as the method wants), chat conversations or tokenized rows,
and a `TrainConfig`. The loss is computed on the assistant's answers only (`data.tokenize_chat`); with
`packing` the rows of a batch are concatenated without padding, each keeping its own positions and attention.
Checkpoints hold the optimizer, scheduler and RNG states, so a killed run resumes exactly (see `resume.py`).
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from .config import ConfigError, TrainConfig, check_trainable_dtypes
from .data import ChatCollator, tokenize_chat

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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
    # which path `finetune_lora` takes: None = the fast path when the model is on a CUDA GPU, the Trainer otherwise;
    # False = always the Hugging Face Trainer (the recipe the course teaches); True = always the fast path
    fast: bool | None = None


@dataclass
class TrainResult:
    """What a run leaves: the trained model, the loss at every logged step, and the wall time."""

    model: object
    history: list[dict]
    seconds: float
    eval_history: list[dict] = field(default_factory=list)  # {"step", "eval_loss"} per evaluation
    stopped_early_at: int | None = None  # the step early stopping ended the run, if it did
    best_step: int | None = None  # the step of the best validation loss, with early stopping
    global_step: int = 0
    output_dir: str | None = None  # where the checkpoints are, when the config kept them
    path: str = "trainer"  # which code trained: "trainer" (Hugging Face Trainer) or "fast" (course_lib.fastpath)
    details: dict = field(default_factory=dict)  # what the fast path chose (kernels, memory plan), or why not

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.history]

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_history[-1]["eval_loss"] if self.eval_history else None


def to_rows(data: Sequence, tokenizer, max_length: int) -> list[dict]:
    """Tokenized training rows from chat conversations (lists of messages) or rows that are already tokenized."""
    rows = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "input_ids" in item:
            row = dict(item)
            row.setdefault("attention_mask", [1] * len(row["input_ids"]))
            row.setdefault("labels", list(row["input_ids"]))
        elif isinstance(item, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in item):
            row = tokenize_chat(item, tokenizer, max_length=max_length)
        else:
            raise ValueError(f"training item {i} is neither a chat (a list of messages) nor a tokenized row: {item!r:.80}")
        if not any(label != -100 for label in row["labels"]):
            raise ValueError(f"training item {i} has no token to learn (every label is -100): its answer is missing "
                             f"or was cut off by max_length={max_length}")
        rows.append(row)
    if not rows:
        raise ValueError("no training conversations given")
    return rows


def collator_for(tokenizer, packing: bool):
    """Right-padded batches, or with packing a padding-free batch (one row, positions restarting per example)."""
    if packing:
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return ChatCollator(tokenizer)


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint in `output_dir`, or None.

    The Trainer writes `trainer_state.json` last, so a folder without a readable one was cut off mid-save
    by the crash; `transformers.trainer_utils.get_last_checkpoint` would pick it and the resume would fail.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            try:
                json.loads((child / "trainer_state.json").read_text())
            except (OSError, ValueError):
                continue
            found.append((int(match.group(1)), child))
    return str(max(found)[1]) if found else None


def train(
    model,
    tokenizer,
    train_data: Sequence,
    config: TrainConfig | None = None,
    *,
    eval_data: Sequence | None = None,
    resume: bool | str = False,
    callbacks: Sequence = (),
    progress: bool = True,
    desc: str = "training",
) -> TrainResult:
    """Train `model` with the Trainer as `config` says; `resume=True` continues from the last checkpoint."""
    from transformers import PrinterCallback, Trainer

    from .callbacks import EarlyStoppingOnValLoss, LossHistory, NonFiniteLossError, ProgressBar, StopOnNonFiniteLoss

    config = config or TrainConfig()
    device = next(model.parameters()).device.type
    rows = to_rows(train_data, tokenizer, config.max_length)
    eval_rows = to_rows(eval_data, tokenizer, config.max_length) if eval_data is not None else None
    config.validate(n_examples=len(rows), device=device)
    if config.eval_strategy != "no" and not eval_rows:
        raise ConfigError(f"eval_strategy={config.eval_strategy!r} needs eval_data (validation conversations)")
    check_trainable_dtypes(model, config.precision)
    checkpoint = _resume_point(resume, config)

    history, guard, bar = LossHistory(), StopOnNonFiniteLoss(), ProgressBar(progress, desc)
    extra = [EarlyStoppingOnValLoss(config.early_stopping_patience, config.early_stopping_threshold)] \
        if config.early_stopping_patience is not None else []
    with _output_dir(config) as out:
        args = config.to_training_arguments(output_dir=out, device=device, check=False)
        args.restore_callback_states_from_checkpoint = True  # early stopping's patience counter survives a resume
        trainer = Trainer(
            model=model, args=args, train_dataset=rows, eval_dataset=eval_rows,
            data_collator=collator_for(tokenizer, config.packing),
            callbacks=[bar, history, guard, *extra, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; our bar shows the loss
        started = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        finally:
            if bar.bar is not None:
                bar.bar.close()
        seconds = time.perf_counter() - started
        # the Trainer may have rebuilt the early-stopping callback from the checkpoint: read the live one
        stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingOnValLoss)), None)
        state = trainer.state
    model.eval()
    if guard.message:
        raise NonFiniteLossError(guard.message, guard.step, history.train)
    return TrainResult(
        model=model, history=history.train, seconds=seconds, eval_history=history.eval,
        stopped_early_at=stopper.stopped_at if stopper else None,
        best_step=state.best_global_step if config.early_stopping_patience is not None else None,
        global_step=state.global_step, output_dir=config.output_dir,
    )


def evaluate_loss(model, tokenizer, data: Sequence, config: TrainConfig | None = None) -> float:
    """Mean validation loss of `model` on `data` (answer tokens only), as the Trainer's evaluation computes it."""
    from transformers import PrinterCallback, Trainer

    config = config or TrainConfig()
    rows = to_rows(data, tokenizer, config.max_length)
    device = next(model.parameters()).device.type
    with tempfile.TemporaryDirectory(prefix="course-eval-") as out:
        plain = config.replace(eval_strategy="no", save_strategy="no", early_stopping_patience=None, output_dir=None)
        args = plain.to_training_arguments(output_dir=out, device=device, check=False)
        trainer = Trainer(model=model, args=args, eval_dataset=rows, data_collator=collator_for(tokenizer, config.packing))
        trainer.remove_callback(PrinterCallback)
        loss = trainer.evaluate()["eval_loss"]
    model.eval()
    return float(loss)


def _resume_point(resume: bool | str, config: TrainConfig) -> str | None:
    if not resume:
        return None
    if isinstance(resume, str):
        if not (Path(resume) / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{resume} is not a complete checkpoint (no trainer_state.json)")
        return resume
    if config.output_dir is None:
        raise ConfigError("resume=True needs config.output_dir, the folder the interrupted run saved checkpoints in")
    found = last_checkpoint(config.output_dir)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint in {config.output_dir} to resume from")
    return found


@contextlib.contextmanager
def _output_dir(config: TrainConfig) -> Iterator[str]:
    """The config's output folder, or a temporary one removed afterwards."""
    if config.output_dir is not None:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        yield config.output_dir
        return
    with tempfile.TemporaryDirectory(prefix="course-run-") as folder:
        yield folder


def lora_config_for(settings: LoraSettings):
    """The peft LoraConfig for these settings."""
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")


def choose_path(model, settings: LoraSettings) -> tuple[bool, str]:
    """(use the fast path?, why): `settings.fast` decides when set, else the fast path exactly on a CUDA GPU."""
    from .fastpath import unsupported_reason

    device = next(model.parameters()).device.type
    reason = unsupported_reason(model)
    if settings.fast is False:
        return False, "LoraSettings(fast=False)"
    if settings.fast is True:
        if reason:
            raise ValueError(f"LoraSettings(fast=True), but {reason} (fast=False)")
        return True, "LoraSettings(fast=True)" + (" on a CPU: same maths, no GPU kernels" if device != "cuda" else "")
    if device != "cuda":
        return False, f"the model is on the {device}; the fast path is for CUDA GPUs"
    if reason:
        return False, reason.replace("use the recipe for this model", "so the Trainer runs")
    return True, "the model is on a CUDA GPU"


def fast_settings_for(settings: LoraSettings):
    """The fast path's settings for the same run: the optimisation exactly as the Trainer path does it.

    Both: `batch_size` examples per optimizer step, linear warm-up and decay, AdamW (betas 0.9/0.999, eps 1e-8) with
    no weight decay, the Trainer path's gradient clipping (1.0), seeded shuffled epochs, LoRA on the same layers with the same rank,
    alpha and dropout. (LoRA dropout above 0 is honoured: those layers run through peft's own forward, unfused.)
    """
    from .fastpath import FastSettings

    return FastSettings(
        steps=settings.steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, schedule="linear", weight_decay=0.0,
        max_grad_norm=TrainConfig().max_grad_norm, r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
        target_modules=list(settings.target_modules), max_length=settings.max_length, seed=settings.seed,
    )


def from_fast_result(fast, why: str = "") -> TrainResult:
    """A `TrainResult` (what notebooks read) from the fast path's `FastResult`."""
    return TrainResult(model=fast.model, history=fast.history, seconds=fast.seconds, global_step=len(fast.history),
                       path=fast.path, details={**fast.details, "tokens": fast.tokens, "why": why})


def finetune_lora(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    settings: LoraSettings | None = None,
    progress: bool = True,
) -> TrainResult:
    """Wrap `model` with LoRA adapters and train them on chat conversations (loss on answers only).

    On a CUDA GPU this runs the fast path (`course_lib.fastpath`: packed batches, varlen attention, fused LoRA
    layers, fused AdamW); elsewhere, or with `LoraSettings(fast=False)`, the Hugging Face Trainer with peft. Both
    minimise the same loss with the same optimiser settings; `result.path` says which one ran.
    """
    import torch
    from peft import get_peft_model

    settings = settings or LoraSettings()
    rows = to_rows(conversations, tokenizer, settings.max_length)  # fail on bad data before touching the model
    fast, why = choose_path(model, settings)
    if fast:
        from .callbacks import NonFiniteLossError
        from .fastpath import NonFiniteLoss, train_fast

        if progress:
            print(f"finetune_lora: fast path ({why}); LoraSettings(fast=False) runs the plain Trainer recipe")
        try:
            result = train_fast(model, tokenizer, rows, fast_settings_for(settings), progress=progress,
                                desc="LoRA, fast path")
        except NonFiniteLoss as error:
            raise NonFiniteLossError(str(error), error.step, error.history) from error
        return from_fast_result(result, why)
    peft_model = get_peft_model(model, lora_config_for(settings))
    on_gpu = next(model.parameters()).device.type == "cuda"
    config = TrainConfig(
        max_steps=settings.steps, per_device_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, schedule="linear", weight_decay=0.0, max_length=settings.max_length,
        precision="bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32", seed=settings.seed,
    )
    result = train(peft_model, tokenizer, rows, config, progress=progress,
                   desc="LoRA, Trainer" + (" (fast=False)" if on_gpu else ""))
    result.details["why"] = why
    return result
