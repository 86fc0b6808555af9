"""What a training run returns, whichever code ran it (the Trainer or the GPU fast path), and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    path: str = "trainer"  # which code trained: "trainer" (Hugging Face Trainer), "fast" or "recipe" (course_lib.fast)
    details: dict = field(default_factory=dict)  # what the fast path chose (kernels, memory plan), or why not
    tokens: int = 0  # real (non-padding) tokens trained on, where the path counts them

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.history]

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_history[-1]["eval_loss"] if self.eval_history else None

    @property
    def tokens_per_second(self) -> float:
        """Real tokens per second over the timed part of the run (all of it unless the path timed less)."""
        timed = self.details.get("timed_tokens", self.tokens)
        seconds = self.details.get("timed_seconds", self.seconds)
        return timed / seconds if seconds else float("nan")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""

    def __init__(self, message: str, step: int, history: list[dict] | None = None):
        super().__init__(message)
        self.step = step
        self.history = history or []
