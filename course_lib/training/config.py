"""One typed training configuration: the course's defaults, checked early, mapped onto `TrainingArguments`.

Every knob a learner turns in module 04 lives in `TrainConfig`. `validate()` catches the mistakes that
otherwise surface an hour into a run (or never: a NaN hidden by the logger, warmup silently ignored by the
"constant" schedule, an effective batch that is not what you think). The arithmetic the course teaches,
effective batch, steps per epoch, the learning rate at step t, which parameters get weight decay, is
written out here and tested against what the `Trainer` actually does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

import torch
from transformers import TrainingArguments, get_scheduler
from transformers.training_args import OptimizerNames

from course_lib.core.runtime import detect_device, gpu_has_bf16
from course_lib.qlora.memory import estimate

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
STRATEGIES = ("no", "steps", "epoch")
DEFAULT_WARMUP_RATIO = 0.1


class ConfigError(ValueError):
    """A training configuration that cannot work, with a message naming the field and the fix."""


@dataclass
class TrainConfig:
    """Every knob of a training run, with the course's defaults (a LoRA-sized run on the 135M model)."""

    # How long: max_steps wins when set, otherwise `epochs` passes over the data.
    max_steps: int | None = None
    epochs: float = 1.0
    # Batch: effective batch = per_device_batch_size × grad_accum × processes.
    per_device_batch_size: int = 8
    grad_accum: int = 1
    processes: int = 1
    effective_batch_size: int | None = None  # optional: state what you want, validate() checks the product
    # Optimizer and schedule.
    learning_rate: float = 2e-4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = None  # give warmup_steps or warmup_ratio (of the total steps), not both;
    warmup_ratio: float | None = None  # neither: the course default, DEFAULT_WARMUP_RATIO of the run
    weight_decay: float = 0.0  # applied to weight matrices only, never to biases or norm weights
    max_grad_norm: float | None = 1.0  # None turns clipping off
    adam_beta2: float = 0.999
    optim: str | None = None  # a transformers optimizer name ("paged_adamw_8bit" for QLoRA); None: its default
    # Numerics and memory.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    # Evaluation, checkpoints, early stopping.
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = None
    save_strategy: Literal["no", "steps", "epoch"] = "no"
    save_steps: int | None = None
    save_total_limit: int | None = 2
    early_stopping_patience: int | None = None  # evaluations without improvement of the validation loss
    early_stopping_threshold: float = 0.0
    restore_best: bool = True  # with early stopping: reload the best checkpoint at the end
    logging_steps: int = 1
    # Data and reproducibility.
    max_length: int = 256
    packing: bool = False
    seed: int = 0
    output_dir: str | None = None  # None: a temporary folder, deleted after the run (no resume possible)

    # --- arithmetic the course teaches -------------------------------------------------------------
    def effective_batch(self) -> int:
        """Examples per optimizer step: per device × accumulation × processes."""
        return self.per_device_batch_size * self.grad_accum * self.processes

    def steps_per_epoch(self, n_examples: int) -> int:
        """Optimizer steps in one pass over `n_examples`, as the Trainer counts them."""
        return steps_per_epoch(n_examples, self.per_device_batch_size, self.grad_accum, self.processes)

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps of the whole run."""
        if self.max_steps is not None:
            return self.max_steps
        return math.ceil(self.epochs * self.steps_per_epoch(n_examples))

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps for a run of `total_steps` (a ratio rounds up, as the Trainer does)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        ratio = DEFAULT_WARMUP_RATIO if self.warmup_ratio is None else self.warmup_ratio
        return math.ceil(total_steps * ratio)

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate the scheduler applies at optimizer step `step` (0-based)."""
        return lr_at(step, self.learning_rate, self.warmup_for(total_steps), total_steps, self.schedule)

    # --- validation --------------------------------------------------------------------------------
    def validate(self, n_examples: int | None = None, device: str | None = None) -> "TrainConfig":
        """Raise ConfigError on a configuration that cannot work or would silently do something else."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        for name in ("per_device_batch_size", "grad_accum", "processes", "logging_steps", "max_length"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        need(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
             f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        need(self.max_steps is not None or self.epochs > 0, f"epochs must be > 0 (or set max_steps), got {self.epochs}")
        if self.effective_batch_size is not None:
            product = self.effective_batch()
            need(product == self.effective_batch_size,
                 f"effective_batch_size={self.effective_batch_size}, but per_device_batch_size × grad_accum × processes "
                 f"= {self.per_device_batch_size} × {self.grad_accum} × {self.processes} = {product}; "
                 f"{_accum_hint(self)}")
        need(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate} "
             "(typical: 1e-5 to 5e-5 full fine-tuning, 1e-4 to 2e-3 LoRA)")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(self.warmup_steps is None or self.warmup_ratio is None,
             f"give warmup_steps ({self.warmup_steps}) or warmup_ratio ({self.warmup_ratio}), not both; "
             "set the other to None")
        need(self.warmup_steps is None or (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0),
             f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        need(self.warmup_ratio is None or 0 <= self.warmup_ratio < 1,
             f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if n_examples is not None or self.max_steps is not None:
            total = self.total_steps(n_examples or 0)
            if self.warmup_for(total) >= total > 0:  # legal, but the peak learning rate is never reached
                warnings.warn(f"warmup ({self.warmup_for(total)} steps) is not shorter than the run ({total} steps): "
                              "the learning rate never reaches its peak", stacklevel=2)
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm}")
        if self.optim is not None:

            names = [o.value for o in OptimizerNames]
            need(self.optim in names, f"optim must be None or a transformers optimizer name such as 'adamw_torch' or "
                 f"'paged_adamw_8bit', got {self.optim!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        resolve_precision(self.precision, device)  # raises ConfigError for fp16/bf16 where they cannot run
        for kind in ("eval", "save"):
            strategy, steps = getattr(self, f"{kind}_strategy"), getattr(self, f"{kind}_steps")
            need(strategy in STRATEGIES, f"{kind}_strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
            need(strategy != "steps" or (isinstance(steps, int) and steps >= 1),
                 f"{kind}_strategy='steps' needs {kind}_steps, a positive integer (got {steps!r})")
        need(self.save_total_limit is None or self.save_total_limit >= 1,
             f"save_total_limit must be >= 1 or None (keep all), got {self.save_total_limit}")
        need(self.save_strategy == "no" or self.output_dir is not None,
             f"save_strategy={self.save_strategy!r} writes checkpoints: set output_dir to a folder that outlives the run")
        if self.early_stopping_patience is not None:
            need(self.early_stopping_patience >= 1,
                 f"early_stopping_patience must be >= 1 evaluation, got {self.early_stopping_patience}")
            need(self.eval_strategy != "no",
                 "early stopping watches the validation loss: set eval_strategy to 'steps' or 'epoch' (and pass "
                 "validation data)")
            if self.restore_best:
                need(self.save_strategy == self.eval_strategy,
                     f"restore_best reloads the best checkpoint, so save_strategy ({self.save_strategy!r}) must equal "
                     f"eval_strategy ({self.eval_strategy!r}); or set restore_best=False")
                need(self.eval_strategy != "steps" or self.save_steps % self.eval_steps == 0,
                     f"restore_best needs save_steps ({self.save_steps}) to be a multiple of eval_steps "
                     f"({self.eval_steps}), so that every best evaluation has a checkpoint")
        need(not self.packing or self.max_length >= 16, "packing needs max_length >= 16")
        return self

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (unknown names raise)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"TrainConfig has no field {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain fields, for JSON (a subprocess run reads them back with `TrainConfig(**d)`)."""
        return asdict(self)

    # --- mapping onto transformers -----------------------------------------------------------------
    def to_training_arguments(self, output_dir: str | None = None, device: str | None = None, check: bool = True):
        """The equivalent `transformers.TrainingArguments` (validated first unless the caller just did)."""

        if check:
            self.validate(device=device)
        precision = resolve_precision(self.precision, device)
        device = device or _device_type()
        warmup: float = (self.warmup_steps if self.warmup_steps is not None
                         else DEFAULT_WARMUP_RATIO if self.warmup_ratio is None else self.warmup_ratio)
        early = self.early_stopping_patience is not None
        return TrainingArguments(
            output_dir=output_dir or self.output_dir,
            max_steps=self.max_steps if self.max_steps is not None else -1,
            num_train_epochs=self.epochs,
            per_device_train_batch_size=self.per_device_batch_size,
            per_device_eval_batch_size=self.per_device_batch_size,
            gradient_accumulation_steps=self.grad_accum,
            learning_rate=self.learning_rate,
            # "constant" ignores warmup in transformers; with warmup we ask for the variant that honours it
            lr_scheduler_type=("constant_with_warmup" if self.schedule == "constant" and warmup else self.schedule),
            warmup_steps=warmup,
            weight_decay=self.weight_decay,  # the Trainer applies it to decay_parameter_names() only
            adam_beta2=self.adam_beta2,
            **({"optim": self.optim} if self.optim is not None else {}),
            max_grad_norm=self.max_grad_norm or 0.0,
            bf16=precision == "bf16",
            fp16=precision == "fp16",  # accelerate pairs fp16 autocast with a dynamic loss scaler (GradScaler)
            use_cpu=device == "cpu",
            gradient_checkpointing=self.gradient_checkpointing,
            # non-reentrant checkpointing works with frozen embeddings (LoRA) without enable_input_require_grads
            gradient_checkpointing_kwargs={"use_reentrant": False} if self.gradient_checkpointing else None,
            eval_strategy=self.eval_strategy,
            eval_steps=self.eval_steps,
            save_strategy=self.save_strategy,
            save_steps=self.save_steps if self.save_strategy == "steps" else 500,
            save_total_limit=self.save_total_limit,
            save_only_model=False,  # optimizer, scheduler and RNG states are what make a resume exact
            load_best_model_at_end=early and self.restore_best,
            metric_for_best_model="eval_loss" if early else None,
            greater_is_better=False if early else None,
            logging_steps=self.logging_steps,
            logging_nan_inf_filter=False,  # the default replaces a NaN loss by the running mean: it hides the problem
            seed=self.seed,
            data_seed=self.seed,
            report_to="none",
            disable_tqdm=True,  # course_lib shows one bar of its own
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )


def _accum_hint(config: TrainConfig) -> str:
    per_step = config.per_device_batch_size * config.processes
    if config.effective_batch_size % per_step == 0:
        return f"set grad_accum={config.effective_batch_size // per_step}"
    return (f"{config.effective_batch_size} is not a multiple of per_device_batch_size × processes = {per_step}; "
            "change per_device_batch_size")


def accumulation_for(effective_batch: int, per_device_batch_size: int, processes: int = 1) -> int:
    """Gradient accumulation steps that reach `effective_batch` (raises when it does not divide)."""
    per_step = per_device_batch_size * processes
    if effective_batch % per_step:
        raise ConfigError(f"effective batch {effective_batch} is not a multiple of per-device batch × processes "
                          f"= {per_device_batch_size} × {processes} = {per_step}")
    return effective_batch // per_step


def steps_per_epoch(n_examples: int, per_device_batch_size: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Optimizer steps per epoch: each process sees ceil(n / (batch × processes)) batches, grouped by accumulation."""
    if n_examples < 1:
        raise ConfigError(f"the training set is empty (n_examples={n_examples})")
    batches = math.ceil(n_examples / (per_device_batch_size * processes))  # the last batch may be short, never dropped
    return math.ceil(batches / grad_accum)  # a short last accumulation group still makes an optimizer step


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup from 0, then cosine/linear decay to 0, or flat."""
    if step < warmup_steps:
        return peak_lr * step / max(1, warmup_steps)
    if schedule == "constant":
        return peak_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return peak_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if schedule == "linear":
        return peak_lr * max(0.0, 1.0 - progress)
    raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def schedule_curve(config: TrainConfig, total_steps: int) -> list[float]:
    """The learning rate of every optimizer step of a run, as transformers' scheduler computes it."""

    warmup = config.warmup_for(total_steps)
    name = "constant_with_warmup" if config.schedule == "constant" and warmup else config.schedule
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    curve = []
    for _ in range(total_steps):
        curve.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return curve


def decay_parameter_names(model) -> set[str]:
    """Parameters that get weight decay: weight matrices; never biases, normalization weights or anything 1-D.

    Decay pulls weights towards zero. That regularizes a projection matrix, but pulling a LayerNorm/RMSNorm
    scale towards 0 shrinks activations and pulling a bias towards 0 just shifts them: neither helps.
    """

    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, *_rmsnorm_types())
    skip: set[int] = set()
    for module in model.modules():
        if isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
            skip.update(id(p) for p in module.parameters(recurse=False))
    return {name for name, param in model.named_parameters()
            if id(param) not in skip and not name.endswith("bias") and param.ndim >= 2}


def _rmsnorm_types() -> tuple:

    return (torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on `decay_parameter_names`, none on the rest (trainable params only)."""
    decay = decay_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]


def _device_type() -> str:

    return detect_device().type


def resolve_precision(precision: str, device: str | None = None) -> str:
    """'bf16', 'fp16' or 'fp32' for this device: auto picks bf16 where supported, fp16 on older GPUs, fp32 on CPU."""

    device = device or _device_type()
    bf16_ok = device == "cuda" and gpu_has_bf16()
    if precision == "auto":
        if device != "cuda":
            return "fp32"  # bf16 autocast on most laptop CPUs is slower than fp32, and fp16 has no CPU kernels
        return "bf16" if bf16_ok else "fp16"
    if precision == "fp32":
        return "fp32"
    if device != "cuda":
        raise ConfigError(f"precision={precision!r} needs a CUDA GPU; on {device} train in fp32 (precision='auto')")
    if precision == "bf16" and not bf16_ok:
        raise ConfigError("this GPU has no bf16 support: use precision='fp16' (with its loss scaler) or 'auto'")
    return precision


def check_trainable_dtypes(model, precision: str) -> None:
    """Refuse a model with nothing to train, or fp16 trainable weights (no fp32 master weights for the loss scaler)."""

    half = [name for name, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float16]
    if half:
        raise ConfigError(
            f"{len(half)} trainable parameters are float16 (e.g. {half[0]}): fp16 training keeps fp32 master weights "
            "and a loss scaler, so load the model in float32 and set precision='fp16' (autocast) instead")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters: every weight is frozen (requires_grad=False)")


def plan_batch(budget_bytes: float, model_config, method: str, target_batch: int, seq_len: int) -> TrainConfig:
    """A TrainConfig reaching `target_batch` per optimizer step whose planned peak memory fits `budget_bytes`.

    The largest power-of-two per-device batch dividing `target_batch` that fits, accumulation for the rest; gradient
    checkpointing only when no batch fits without it; ValueError when nothing fits (planned by `qlora.memory`).
    """
    for checkpointing in (False, True):
        best, per_device = None, 1
        while per_device <= target_batch and target_batch % per_device == 0:
            planned = estimate(model_config, method, batch_size=per_device, seq_len=seq_len,
                               gradient_checkpointing=checkpointing, device="cpu")
            if planned.total_bytes <= budget_bytes:
                best = per_device
            per_device *= 2
        if best is not None:
            return TrainConfig(per_device_batch_size=best, grad_accum=target_batch // best,
                               effective_batch_size=target_batch, gradient_checkpointing=checkpointing)
    raise ValueError(f"{method} does not fit in {budget_bytes / 2**30:.2f} GiB even with one sequence per step "
                     "and gradient checkpointing")
