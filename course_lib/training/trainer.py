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
from pathlib import Path
from typing import Iterator, Sequence

from transformers import DataCollatorWithFlattening, PrinterCallback, Trainer

from course_lib.core.results import NonFiniteLossError, TrainResult
from course_lib.data.tokenize import ChatCollator, to_rows
from course_lib.training.callbacks import EarlyStoppingOnValLoss, LossHistory, ProgressBar, StopOnNonFiniteLoss
from course_lib.training.config import ConfigError, TrainConfig, check_trainable_dtypes
from course_lib.training.scored_logits import keeps_logits, scored_positions


class ScoredLogitsTrainer(Trainer):
    """The Trainer, with the output layer run only at the positions that predict a scored label: the same loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        # label smoothing, a custom loss or compute_metrics read the logits themselves: leave those alone
        plain = self.label_smoother is None and self.compute_loss_func is None and self.compute_metrics is None
        plain = plain and self.model_accepts_loss_kwargs  # `shift_labels` reaches the loss through **kwargs
        if labels is not None and plain and keeps_logits(self.accelerator.unwrap_model(model)):
            positions = scored_positions(labels)
            # the model's causal-LM loss takes already-shifted labels for the kept logits (`shift_labels`)
            inputs = {**inputs, "logits_to_keep": positions, "shift_labels": labels[:, 1:][:, positions]}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


def collator_for(tokenizer, packing: bool):
    """Right-padded batches, or with packing a padding-free batch (one row, positions restarting per example)."""
    if packing:

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
        trainer = ScoredLogitsTrainer(
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

    config = config or TrainConfig()
    rows = to_rows(data, tokenizer, config.max_length)
    device = next(model.parameters()).device.type
    with tempfile.TemporaryDirectory(prefix="course-eval-") as out:
        plain = config.replace(eval_strategy="no", save_strategy="no", early_stopping_patience=None, output_dir=None)
        args = plain.to_training_arguments(output_dir=out, device=device, check=False)
        trainer = ScoredLogitsTrainer(model=model, args=args, eval_dataset=rows,
                                      data_collator=collator_for(tokenizer, config.packing))
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
