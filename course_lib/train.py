"""LoRA fine-tuning on the Hugging Face `Trainer` with `peft`: the course's training loop."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

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


@dataclass
class TrainResult:
    """What a run leaves: the trained (peft) model, the loss at every step, and the wall time."""

    model: object
    history: list[dict]
    seconds: float

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.history]


class _Progress:
    """A Trainer callback: one tqdm bar showing the loss, and the loss history for plots."""

    def __new__(cls, total: int, history: list[dict], show: bool):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        class Progress(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                self.bar = tqdm(total=total, desc="training", disable=not show)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    history.append({"step": state.global_step, "loss": float(logs["loss"])})
                    self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

            def on_step_end(self, args, state, control, **kwargs):
                self.bar.update(1)

            def on_train_end(self, args, state, control, **kwargs):
                self.bar.close()

        return Progress()


def finetune_lora(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    settings: LoraSettings | None = None,
    progress: bool = True,
) -> TrainResult:
    """Wrap `model` with LoRA adapters and train them on chat conversations (loss on answers only)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments

    settings = settings or LoraSettings()
    rows = [tokenize_chat(c, tokenizer, max_length=settings.max_length) for c in conversations]
    if not rows:
        raise ValueError("no training conversations given")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    on_gpu = next(model.parameters()).device.type == "cuda"
    history: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="course-run-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup_steps,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=settings.seed,
            data_seed=settings.seed,
            bf16=on_gpu and torch.cuda.is_bf16_supported(),
            use_cpu=not on_gpu,
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=peft_model,
            args=args,
            train_dataset=rows,
            data_collator=ChatCollator(tokenizer),
            callbacks=[_Progress(settings.steps, history, progress)],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; our bar shows the loss
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    peft_model.eval()
    return TrainResult(model=peft_model, history=history, seconds=seconds)
