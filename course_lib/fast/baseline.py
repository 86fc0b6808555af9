"""The textbook recipe, kept for teaching and as the benchmark's baseline: `Trainer` + `peft`, padded batches.

This is LoRA/QLoRA as most tutorials write it: every example padded to `max_length`, `micro_batch_size`
examples a forward pass, gradient accumulation up to `batch_size`, LoRA dropout, the Trainer's plain AdamW, bf16
autocast on a GPU (fp16 with loss scaling for an fp16 model, as on a T4), and for a 4-bit model `prepare_model_for_kbit_training` (fp32 norms, gradient checkpointing).
"""

from __future__ import annotations

import tempfile
import time

import torch
from peft import prepare_model_for_kbit_training
from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from course_lib.core.results import TrainResult
from course_lib.core.runtime import gpu_has_bf16, quiet
from course_lib.fast.lora import attach_lora
from course_lib.fast.settings import FastSettings
from course_lib.qlora.bnb import is_4bit, model_compute_dtype


def train_recipe(model, tokenizer, rows: list[dict], settings: FastSettings, progress: bool = True,
                 desc: str = "training (recipe)") -> TrainResult:
    """Train LoRA adapters with the Hugging Face Trainer on padded batches; the same examples per step as the fast path."""

    quiet()
    if settings.batch_size % settings.micro_batch_size:
        raise ValueError(f"batch_size={settings.batch_size} is not a multiple of micro_batch_size="
                         f"{settings.micro_batch_size}: the recipe reaches it by gradient accumulation")
    on_gpu = next(model.parameters()).device.type == "cuda"
    device = next(model.parameters()).device
    # a T4's recipe: fp16 weights (or 4-bit layers computing in fp16), AMP with loss scaling. Read before the
    # QLoRA preparation, which turns the embeddings to fp32
    fp16 = model_compute_dtype(model) == torch.float16
    if is_4bit(model):

        model = prepare_model_for_kbit_training(model)  # the QLoRA textbook step (also turns on checkpointing)
    peft_model = attach_lora(model, settings)
    if fp16:  # ... and fp32 adapters, peft's default, which the GradScaler needs (it refuses fp16 gradients)
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.float()

    accumulation = settings.batch_size // settings.micro_batch_size
    counter = _CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=settings.max_length,
                                                       label_pad_token_id=-100), accumulation)
    history: list[dict] = []
    timing: dict = {}

    class Record(TrainerCallback):
        """Loss per step, and a GPU-synchronised clock from `time_from_step` on."""

        def on_step_begin(self, args, state, control, **kwargs):
            if settings.time_from_step is not None and state.global_step + 1 == settings.time_from_step:
                if on_gpu:
                    torch.cuda.synchronize(device)
                timing["start"], timing["tokens_at_start"] = time.perf_counter(), counter.step_tokens_done

        def on_step_end(self, args, state, control, **kwargs):
            counter.close_step()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                history.append({"step": state.global_step, "loss": float(logs["loss"])})

    bf16 = on_gpu and gpu_has_bf16(device) and not fp16
    with tempfile.TemporaryDirectory(prefix="course-recipe-") as out:
        args = TrainingArguments(
            output_dir=out, max_steps=settings.steps, per_device_train_batch_size=settings.micro_batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=settings.learning_rate, lr_scheduler_type=settings.schedule,
            warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
            max_grad_norm=settings.max_grad_norm if settings.max_grad_norm is not None else 0.0,
            optim="adamw_torch", bf16=bf16, fp16=fp16, logging_steps=1, save_strategy="no",
            report_to="none", seed=settings.seed, dataloader_num_workers=0, disable_tqdm=not progress,
            remove_unused_columns=False,
        )
        trainer = Trainer(model=peft_model, args=args, train_dataset=rows, data_collator=counter, callbacks=[Record()])
        trainer.remove_callback(PrinterCallback)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        trainer.train()
        if on_gpu:
            torch.cuda.synchronize(device)
        ended = time.perf_counter()
    details: dict = {"padded_to": settings.max_length, "accumulation": accumulation}
    if "start" in timing:
        details["timed_seconds"] = ended - timing["start"]
        details["timed_tokens"] = counter.step_tokens_done - timing["tokens_at_start"]
    if on_gpu:
        details["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    details["padding_fraction"] = 1 - counter.real / max(1, counter.padded)
    peft_model.eval()
    return TrainResult(model=peft_model, history=history, seconds=ended - started, global_step=len(history),
                       path="recipe", details=details, tokens=counter.step_tokens_done)


class _CountingCollator:
    """Wraps a collator and counts the real (attention_mask = 1) tokens of the steps the Trainer finished."""

    def __init__(self, inner, accumulation: int):
        self.inner = inner
        self.accumulation = accumulation
        self.pending: list[int] = []  # real tokens of batches built but not yet closed by a finished step
        self.step_tokens_done = 0
        self.real = 0
        self.padded = 0

    def __call__(self, features):
        features = [{k: v for k, v in f.items() if k in ("input_ids", "attention_mask", "labels")} for f in features]
        batch = self.inner(features)
        n = int(batch["attention_mask"].sum())
        self.pending.append(n)
        self.real += n
        self.padded += batch["attention_mask"].numel()
        return batch

    def close_step(self):
        # the data loader may build the next batch before a step ends, so close exactly one step's worth
        done, self.pending = self.pending[: self.accumulation], self.pending[self.accumulation :]
        self.step_tokens_done += sum(done)
