"""Short, plain training loops for module 02: a learner's LoRA next to peft's, and the rsLoRA rank experiment.

No `Trainer` here on purpose: the loop is ten lines, so the two runs being compared differ only in whose
LoRA layers they hold. Both see the same batches in the same order, start from the same A (B = 0) and use
the same optimizer, so their loss curves must agree up to float rounding.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from torch import nn

from course_lib.core.progress import progress_bar
from course_lib.data.tokenize import ChatCollator, tokenize_chat
from course_lib.lora.layer import LoRALinear, copy_lora_from_peft

# Measured on the default model (fp32, CPU): the two loss curves differ by ~1e-6 over a few steps.
# The bound leaves a wide margin for other BLAS builds, yet any real mistake (a wrong scaling,
# a missed layer, B not zero) moves the loss by 1e-2 or more.
LOSS_TOLERANCE = 1e-4


def make_batches(
    conversations: Sequence[Sequence[dict]],
    tokenizer,
    batch_size: int,
    steps: int,
    max_length: int = 256,
    seed: int = 0,
) -> list[dict]:
    """`steps` padded batches of chat rows (loss on the answers only), shuffled by `seed`, cycling if needed."""
    if not conversations:
        raise ValueError("no conversations given")
    rows = [tokenize_chat(c, tokenizer, max_length=max_length) for c in conversations]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    collate = ChatCollator(tokenizer)
    needed = [order[i % len(order)] for i in range(steps * batch_size)]
    return [collate([rows[j] for j in needed[k : k + batch_size]]) for k in range(0, len(needed), batch_size)]


def train_steps(model: nn.Module, batches: Sequence[dict], lr: float, desc: str = "training", seed: int = 0,
                optimizer: torch.optim.Optimizer | None = None) -> list[float]:
    """AdamW (or the given optimizer) over the trainable parameters, one step per batch; the loss before each step."""

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: was LoRA injected?")
    torch.manual_seed(seed)  # the same dropout masks for both runs, if there is dropout
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    device = params[0].device
    for batch in progress_bar(batches, desc=desc, leave=False):
        loss = model(**{key: value.to(device) for key, value in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


@dataclass(frozen=True)
class PeftComparison:
    """Loss per step of the same run with two LoRA implementations."""

    ours: list[float]
    peft: list[float]
    tolerance: float = LOSS_TOLERANCE

    @property
    def max_abs_diff(self) -> float:
        return max(abs(a - b) for a, b in zip(self.ours, self.peft))

    @property
    def matches(self) -> bool:
        return len(self.ours) == len(self.peft) and self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "equal within" if self.matches else "NOT equal within"
        return (f"{len(self.ours)} steps: loss {self.ours[0]:.4f} -> {self.ours[-1]:.4f} (yours), "
                f"{self.peft[0]:.4f} -> {self.peft[-1]:.4f} (peft); max |difference| {self.max_abs_diff:.2e}, "
                f"{verdict} {self.tolerance:g}")


def compare_with_peft(
    model: nn.Module,
    inject: Callable[[nn.Module], nn.Module],
    batches: Sequence[dict],
    *,
    r: int,
    alpha: float,
    target_modules: str | list[str],
    lr: float = 1e-3,
    tolerance: float = LOSS_TOLERANCE,
) -> tuple[PeftComparison, nn.Module, nn.Module]:
    """Train `inject(model)` and peft's LoRA on a copy of `model` on the same batches; returns (comparison, ours, peft's).

    `inject` wraps the model in place with someone's LoRA layers (parameters named lora_A and lora_B,
    shaped like peft's). Both start from peft's A and B = 0, so any difference is the implementation's.
    """

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0)
    theirs = get_peft_model(copy.deepcopy(model), config)  # copy first: `inject` changes `model` in place
    ours = inject(model)
    copy_lora_from_peft(ours, theirs)
    ours_losses = train_steps(ours, batches, lr, desc="your LoRA")
    peft_losses = train_steps(theirs, batches, lr, desc="peft LoRA")
    return PeftComparison(ours_losses, peft_losses, tolerance), ours, theirs


# --- alpha against the learning rate, over a whole run ---------------------------------------------------


@dataclass(frozen=True)
class ScalingRun:
    """One LoRA run: the loss before each step, and (alpha / r) B A of its first adapted layer at the end."""

    alpha: float
    lr_A: float
    lr_B: float
    losses: list[float]
    delta: torch.Tensor


def alpha_or_learning_rate(model: nn.Module, batches: Sequence[dict], *, r: int = 8, alpha: float = 8,
                           lr: float = 1e-3, factor: float = 2.0,
                           target_modules: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0) -> dict[str, ScalingRun]:
    """The same LoRA run from the same start with alpha, the learning rate, or only B's learning rate times `factor`.

    Adam without weight decay, so the comparison is exact: scaling alpha by c scales B's gradient by c, which Adam's
    update ignores, so B moves as far as before and c * B is what a B with c times the learning rate holds. Alpha
    times c is therefore B's learning rate times c (LoRA+, peft's create_loraplus_optimizer), not both A's and B's.
    """
    setups = {f"alpha x{factor:g}": (factor * alpha, lr, 1.0),
              f"learning rate x{factor:g}": (alpha, factor * lr, 1.0),
              f"B's learning rate x{factor:g} (LoRA+)": (alpha, lr, factor)}
    runs = {}
    for name, (run_alpha, run_lr, ratio) in setups.items():
        torch.manual_seed(seed)  # the same A in every run (its init does not depend on alpha); B = 0
        adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=run_alpha, lora_dropout=0.0,
                                                                  target_modules=list(target_modules)))
        optimizer = create_loraplus_optimizer(adapted, torch.optim.AdamW, lr=run_lr, loraplus_lr_ratio=ratio,
                                              weight_decay=0.0)
        losses = train_steps(adapted, batches, run_lr, desc=name, seed=seed, optimizer=optimizer)
        first = next(m for m in adapted.modules() if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A"))
        with torch.no_grad():
            delta = first.get_delta_weight("default").detach().clone()
        runs[name] = ScalingRun(run_alpha, run_lr, run_lr * ratio, losses, delta)
        del adapted, optimizer
    return runs


def scaling_table(runs: dict[str, ScalingRun]) -> list[list]:
    """Rows of (run, alpha, lr of A, lr of B, final loss, largest loss gap to the first run, Delta W gap to it)."""
    first = next(iter(runs.values()))
    scale = first.delta.abs().max().item()
    return [[name, run.alpha, run.lr_A, run.lr_B, run.losses[-1],
             max(abs(a - b) for a, b in zip(run.losses, first.losses)),
             (run.delta - first.delta).abs().max().item() / scale] for name, run in runs.items()]


# --- rsLoRA: how the scaling rule changes learning as the rank grows --------------------------------------


def rank_scaling_experiment(
    ranks: Sequence[int] = (4, 8, 16, 32, 64, 128),
    alpha: float = 8,
    steps: int = 100,
    lr: float = 1e-3,
    dim: int = 128,
    n: int = 512,
    target_rank: int = 8,
    seed: int = 0,
) -> dict[str, dict[int, list[float]]]:
    """Fit a rank-`target_rank` change of a linear layer with LoRA at each rank, scaled alpha/r and alpha/sqrt(r).

    Returns {"alpha / r" | "alpha / sqrt(r)": {r: relative loss per step}}, where the relative loss is the
    mean squared error divided by that of the untrained layer (so every curve starts at 1).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    base = nn.Linear(dim, dim, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(dim, dim, generator=g) / math.sqrt(dim))
        # The change to learn: rank `target_rank`, entries of a size comparable to the weight's.
        change = torch.randn(dim, target_rank, generator=g) @ torch.randn(target_rank, dim, generator=g)
        target = x @ (base.weight + 2 * change / math.sqrt(dim * target_rank)).T
        start = ((base(x) - target) ** 2).mean().item()
    results: dict[str, dict[int, list[float]]] = {}
    for name, use_rslora in (("alpha / r", False), ("alpha / sqrt(r)", True)):
        results[name] = {}
        for r in ranks:
            torch.manual_seed(seed)  # the same A at each rank for both rules
            layer = LoRALinear(copy.deepcopy(base), r=r, alpha=alpha, use_rslora=use_rslora)
            optimizer = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
            curve = []
            for _ in range(steps):
                loss = ((layer(x) - target) ** 2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                curve.append(loss.item() / start)
            results[name][r] = curve
    return results
