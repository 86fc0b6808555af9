"""Trainer callbacks: a progress bar, the loss history for plots, early stopping on validation loss, a NaN guard.

The history is rebuilt from `state.log_history` at the start of training, which the Trainer restores from a
checkpoint on resume, so a resumed run reports the whole curve, not only the part after the crash.
"""

from __future__ import annotations

import math
import time

import torch
from transformers import EarlyStoppingCallback, TrainerCallback

from course_lib.core.progress import progress_bar


def _train_row(logs: dict, step: int) -> dict:
    row = {"step": step, "loss": float(logs["loss"])}
    for key in ("learning_rate", "grad_norm"):
        if key in logs:
            row[key] = float(logs[key])
    return row


class LossHistory(TrainerCallback):
    """Records every logged training loss and every validation loss, with their steps."""

    def __init__(self):
        self.train: list[dict] = []
        self.eval: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        # on resume the Trainer has restored log_history from the checkpoint: start the curves from it
        self.train, self.eval = [], []
        for logs in state.log_history:
            self._record(logs, logs.get("step", 0))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self._record(logs, state.global_step)

    def _record(self, logs: dict, step: int) -> None:
        if "loss" in logs:
            self.train.append(_train_row(logs, step))
        if "eval_loss" in logs:
            self.eval.append({"step": step, "eval_loss": float(logs["eval_loss"])})


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops training at the first NaN/inf training loss and keeps a message saying what to check.

    Needs `logging_nan_inf_filter=False` (TrainConfig sets it): the Trainer's default replaces a
    non-finite loss by the running mean before it is logged, so the run would go on with NaN weights.
    """

    def __init__(self):
        self.message: str | None = None
        self.step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(loss) or self.message is not None:
            return
        self.step = state.global_step
        lr = (logs or {}).get("learning_rate")
        self.message = (
            f"training stopped: the loss became {loss} at step {state.global_step}"
            + (f" (learning rate {lr:.3g})" if lr is not None else "")
            + ". Usual causes: a learning rate too high (lower it, or warm up longer), fp16 overflow (use bf16 or "
            "fp32), or a batch whose labels are all -100 (an answer cut off by max_length)."
        )
        control.should_training_stop = True
        control.should_save = False  # a checkpoint of NaN weights would poison a resume


class EarlyStoppingOnValLoss(EarlyStoppingCallback):
    """transformers' early stopping on `eval_loss`, remembering the step where it stopped the run.

    On resume the Trainer rebuilds stateful callbacks as `type(cb)(**args)` and sets their attributes, so the
    constructor keeps the parent's argument names and `stopped_at` travels in the state.
    """

    def __init__(self, early_stopping_patience: int = 2, early_stopping_threshold: float = 0.0):
        super().__init__(early_stopping_patience=early_stopping_patience,
                         early_stopping_threshold=early_stopping_threshold)
        self.stopped_at: int | None = None

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        # should_training_stop alone is also set when max_steps is reached: check that patience ran out
        if self.early_stopping_patience_counter >= self.early_stopping_patience and self.stopped_at is None:
            self.stopped_at = state.global_step

    def state(self) -> dict:
        saved = super().state()
        saved["attributes"]["stopped_at"] = self.stopped_at
        return saved


class ProgressBar(TrainerCallback):
    """One tqdm bar for the run, showing the latest loss; it starts where a resumed run starts."""

    def __init__(self, show: bool = True, desc: str = "training"):
        self.show = show
        self.desc = desc
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):

        self.bar = progress_bar(total=state.max_steps, initial=state.global_step, desc=self.desc, disable=not self.show)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {k: f"{logs[k]:.3f}" for k in ("loss", "eval_loss") if k in logs}
            if shown:
                self.bar.set_postfix(shown)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class CrashAfterStep(TrainerCallback):
    """Simulates a crash in-process: raises `SimulatedCrash` at the end of step `step` (for demos)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise SimulatedCrash(f"simulated crash after step {state.global_step}")


class SimulatedCrash(RuntimeError):
    """Raised by CrashAfterStep."""


class InjectNaN(TrainerCallback):
    """Sets one trainable weight to NaN at the end of step `step`, as an fp16 overflow would (for demos and tests)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:

            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


class SlowDown(TrainerCallback):
    """Sleeps after every step, so that a test can kill a tiny run mid-way (a real run is slow enough)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):

        time.sleep(self.seconds)
