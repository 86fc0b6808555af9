"""LoRA written by hand, small enough to read in one sitting, and tested against `peft`.

A frozen weight W (out x in) gets a low-rank update: W' = W + B @ A * scaling, with
A (r x in) and B (out x r). Only A and B train: r * (in + out) numbers instead of in * out.
B starts at zero, so a freshly wrapped model computes exactly what the base model did.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable

import torch
from peft import LoraConfig
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D


class LoRALinear(nn.Module):
    """A frozen nn.Linear (or GPT-2 Conv1D) plus a trainable low-rank update B @ A."""

    def __init__(
        self,
        base: nn.Linear | Conv1D,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        fan_in_fan_out: bool = False,
    ) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"r must be a positive integer, got {r}")
        # Conv1D stores its weight as (in, out), the transpose of nn.Linear; peft also forces this flag.
        self.fan_in_fan_out = fan_in_fan_out or isinstance(base, Conv1D)
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        w = base.weight
        in_dim, out_dim = (0, 1) if self.fan_in_fan_out else (1, 0)
        self.in_features, self.out_features = w.shape[in_dim], w.shape[out_dim]
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        # rsLoRA: alpha/sqrt(r) keeps the update's size stable as r grows; alpha/r shrinks it.
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=w.dtype, device=w.device))
        # Same init as nn.Linear's default (and peft's): A random so gradients reach B, B zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update B @ A * scaling, laid out like the base weight."""
        delta = self.lora_B @ self.lora_A * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the scaled low-rank path (just the base once merged)."""
        if self.merged:
            return self.base(x)
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight so inference costs nothing extra."""
        if self.merged:
            warnings.warn("LoRALinear is already merged; merging twice would add the update twice. Skipped.")
            return
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update back out of the base weight."""
        if not self.merged:
            warnings.warn("LoRALinear is not merged; nothing to unmerge. Skipped.")
            return
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.r}, "
            f"scaling={self.scaling:g}, merged={self.merged}"
        )


def _matches(name: str, target_modules: str | Iterable[str]) -> bool:
    # Same rules as peft: a string is a regex over the full name, a list matches by name suffix.
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """All LoRALinear modules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(
    model: nn.Module,
    target_modules: str | list[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    use_rslora: bool = False,
) -> nn.Module:
    """Wrap every matching nn.Linear/Conv1D in a LoRALinear and freeze everything else (in place)."""
    if lora_layers(model):
        raise ValueError("This model already has LoRA layers; unload_lora() it before injecting again.")
    targets = [
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and _matches(n, target_modules)
    ]
    if not targets:
        raise ValueError(
            f"target_modules={target_modules!r} matched no nn.Linear/Conv1D in the model. "
            "A list entry must equal a module name or its last dotted parts (e.g. 'q_proj'); "
            "a string is a regex that must match the whole name. See model.named_modules()."
        )
    # Freeze first: the LoRA parameters created below are then the only trainable ones.
    for p in model.parameters():
        p.requires_grad = False
    for name in targets:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, use_rslora))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer into its base weight."""
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge, then put the plain base layers back: a normal model with the update baked in."""
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        _replace(model, name, layer.base)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counted like peft (shared weights once)."""
    trainable = total = 0
    for p in model.parameters():  # parameters() already de-duplicates tied weights
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def trainable_fraction(model: nn.Module) -> float:
    """Share of parameters that train, between 0 and 1."""
    trainable, total = trainable_parameters(model)
    return trainable / total


def format_trainable(model: nn.Module) -> str:
    """The exact line peft's print_trainable_parameters() prints."""
    t, a = trainable_parameters(model)
    return f"trainable params: {t:,d} || all params: {a:,d} || trainable%: {100 * t / a:.4f}"


def print_trainable_parameters(model: nn.Module) -> None:
    """Print the trainable-parameter report, character for character like peft's."""
    print(format_trainable(model))


def lora_param_count(in_features: int, out_features: int, r: int) -> int:
    """Parameters LoRA adds to one in->out linear layer: r * (in + out)."""
    return r * (in_features + out_features)


def _llama_linear_shapes(config) -> dict[str, tuple[int, int]]:
    # Module names and (in, out) of a Llama-style decoder, read from the config alone.
    h, heads = config.hidden_size, config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    per_layer = {
        "self_attn.q_proj": (h, heads * head_dim),
        "self_attn.k_proj": (h, kv * head_dim),
        "self_attn.v_proj": (h, kv * head_dim),
        "self_attn.o_proj": (heads * head_dim, h),
        "mlp.gate_proj": (h, config.intermediate_size),
        "mlp.up_proj": (h, config.intermediate_size),
        "mlp.down_proj": (config.intermediate_size, h),
    }
    shapes = {f"model.layers.{i}.{k}": v for i in range(config.num_hidden_layers) for k, v in per_layer.items()}
    shapes["lm_head"] = (h, config.vocab_size)
    return shapes


def params_from_config(config) -> int:
    """Parameters of a transformers model built from `config`, counted on the meta device (no memory used)."""

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters()


def lora_params_for_model(model_or_config, target_modules: str | list[str], r: int) -> int:
    """Parameters LoRA would add: walks a model, or reads a Llama-style config without building it."""
    if isinstance(model_or_config, nn.Module):
        shapes = {n: (m.in_features, m.out_features) for n, m in lora_layers(model_or_config).items()}
        for name, m in model_or_config.named_modules():
            inside_lora = any(name.startswith(n + ".") for n in shapes)  # a wrapped base, already counted
            if isinstance(m, (nn.Linear, Conv1D)) and not inside_lora:
                w = m.weight
                shapes[name] = tuple(w.shape) if isinstance(m, Conv1D) else (w.shape[1], w.shape[0])
    else:
        shapes = _llama_linear_shapes(model_or_config)
    return sum(lora_param_count(i, o, r) for name, (i, o) in shapes.items() if _matches(name, target_modules))


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Hand-written LoRA modules by name: ours, or any module holding `lora_A`/`lora_B` as Parameters."""
    return {
        n: m for n, m in model.named_modules()
        if isinstance(getattr(m, "lora_A", None), nn.Parameter) and isinstance(getattr(m, "lora_B", None), nn.Parameter)
    }  # fmt: skip


@torch.no_grad()
def copy_lora_from_peft(our_model: nn.Module, peft_model: nn.Module, adapter: str = "default") -> None:
    """Copy peft's A and B into our (or a learner's) LoRA layers, so both models hold identical adapters."""
    ours = adapter_layers(our_model)
    theirs = {}
    for name, m in peft_model.named_modules():
        if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) and adapter in m.lora_A:
            # peft wraps the model twice: PeftModel.base_model (LoraModel).model (ours).
            theirs[name.removeprefix("base_model.model.")] = m
    if set(ours) != set(theirs):
        only_ours, only_peft = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        raise ValueError(f"LoRA layers differ: only in ours {only_ours}, only in peft {only_peft}")
    for name, layer in ours.items():
        layer.lora_A.copy_(theirs[name].lora_A[adapter].weight)
        layer.lora_B.copy_(theirs[name].lora_B[adapter].weight)
        scaling = getattr(layer, "scaling", None)  # a learner's layer may compute it on the fly
        if scaling is not None and scaling != theirs[name].scaling[adapter]:
            warnings.warn(f"{name}: scaling differs (ours {scaling}, peft {theirs[name].scaling[adapter]}).")


# --- the reference answers of notebook 02's exercises (the notebook falls back to them while one is unsolved) ------
def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                 alpha: float, r: int) -> torch.Tensor:
    """The frozen linear layer plus the scaled low-rank path: x W^T + b + (alpha / r) x A^T B^T."""
    return nn.functional.linear(x, weight, bias) + (x @ A.T @ B.T) * (alpha / r)


def init_lora_weights(in_features: int, out_features: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B): A (r x in) drawn like nn.Linear's weight (kaiming_uniform_, a = sqrt(5)), B (out x r) zero."""
    A = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    return A, torch.zeros(out_features, r)


def inject_by_pattern(model: nn.Module, pattern: str, wrap) -> nn.Module:
    """Freeze `model` and replace every nn.Linear whose full name matches `pattern` (re.fullmatch) by `wrap(linear)`;
    ValueError when nothing matched."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]
    if not names:
        raise ValueError(f"pattern {pattern!r} matched no nn.Linear module")
    for p in model.parameters():
        p.requires_grad = False
    for name in names:
        _replace(model, name, wrap(model.get_submodule(name)))
    return model


def peft_lora_parts(peft_layer: nn.Module, adapter: str = "default"):
    """(weight, bias, A, B, scaling) of one adapter of a peft LoRA layer."""
    base = peft_layer.base_layer
    return (base.weight, base.bias, peft_layer.lora_A[adapter].weight, peft_layer.lora_B[adapter].weight,
            peft_layer.scaling[adapter])


def rank_one_cost(model: nn.Module, targets: Iterable[str]) -> int:
    """LoRA parameters per unit of rank on the nn.Linear modules whose names end in one of `targets` (peft's rule
    for a list): the sum of in + out over them."""
    targets = list(targets)
    return sum(m.in_features + m.out_features for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets))


def lora_config_for_budget(model: nn.Module, targets: Iterable[str], budget: int):
    """A peft LoraConfig on `targets` with the largest rank whose adapters fit in `budget` parameters
    (lora_alpha = 2 r, no dropout, task CAUSAL_LM); ValueError when even rank 1 does not fit or nothing matches."""
    targets = list(targets)
    per_rank = rank_one_cost(model, targets)
    if per_rank == 0:
        raise ValueError(f"target modules {targets} match no nn.Linear of the model")
    r = budget // per_rank
    if r < 1:
        raise ValueError(f"a budget of {budget:,} parameters does not fit rank 1 on {targets} ({per_rank:,})")
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
