"""Predict the peak memory of fine-tuning (full, LoRA, QLoRA) from a model config, and measure it.

The planner counts bytes the way PyTorch holds them during a training step:

- **weights**: every parameter in its storage dtype; for QLoRA the 4-bit linears, their block constants,
  and the parameters `prepare_model_for_kbit_training` casts to fp32 (embeddings, norms, an untied head);
- **gradients**: one per trainable parameter, in that parameter's dtype;
- **optimizer**: AdamW keeps two states per trainable parameter (in its dtype); 8-bit AdamW one byte each
  plus a float32 scale per 256 values (bitsandbytes keeps tensors under 4096 values in 32 bits);
- **activations**: what autograd saves for the backward pass, counted tensor by tensor for the
  transformers Llama implementation (checked with `torch.autograd.graph.saved_tensors_hooks`), plus the
  log-softmax of the logits and the two gradient buffers of the loss, which are the peak for small models;
- **overhead**: the CUDA context (which `torch.cuda.max_memory_allocated` does not see), cuBLAS workspaces,
  and on the CPU the allocations a first forward/backward pass makes inside torch.

Gradients and activations are not all alive at once: activations are freed as the backward pass walks down
the layers while gradients appear. The planner takes the larger of the two moments, "start of backward"
(all activations, no gradient yet) and "end of backward" (all gradients), and its breakdown shows what is
alive at that peak, so the five parts add up to the total. `all_gradients` and `all_activations` keep the
full sizes.

`validate()` measures the same setups (see `measure_peak`) and prints predicted against measured.
Run it with `python -m course_lib.memory validate [--device cuda]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

GiB = 1024**3
MiB = 1024**2
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "bf16", "fp16", "mixed")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "sgd")
COMPONENTS = ("weights", "gradients", "optimizer", "activations", "overhead")

# --- constants of the implementations we model (each checked by a test or by validate()) ----------------
QUANT_BLOCK = 64  # bitsandbytes' default 4-bit block size
DOUBLE_QUANT_BLOCK = 256  # blocks of block constants in double quantization
OPTIM_8BIT_BLOCK = 256  # bitsandbytes 8-bit optimizers: one float32 scale per 256 state values
OPTIM_8BIT_MIN_SIZE = 4096  # smaller tensors keep 32-bit states
CUDA_CONTEXT = 512 * MiB  # CUDA context + kernels of torch, cuBLAS, cuDNN; not seen by max_memory_allocated
CUDA_WORKSPACE = 64 * MiB  # cuBLAS/cuBLASLt workspaces and allocator rounding, seen by max_memory_allocated
CPU_WORKSPACE = 48 * MiB  # thread pools, oneDNN scratch and glibc arenas a first training step touches
TOKEN_MISC = 16  # input ids and labels (int64) per token


def _bytes(dtype: str) -> int:
    return {"fp32": 4, "bf16": 2, "fp16": 2, "mixed": 4}[dtype]


# --- the model's shape ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-style decoder that decide its memory."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """Read a transformers config (Llama, Mistral, Qwen2, SmolLM and other Llama-style decoders)."""
        needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [name for name in needed if getattr(config, name, None) is None]
        if missing:
            raise ValueError(f"the memory planner knows Llama-style decoder configs; "
                             f"{type(config).__name__} has no {', '.join(missing)}")
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_layers=config.num_hidden_layers,
            num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(config, "attention_bias", False)),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int, bool]]:
        """(in_features, out_features, has_bias) of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim, self.attention_bias), "k_proj": (h, self.kv_dim, self.attention_bias),
            "v_proj": (h, self.kv_dim, self.attention_bias), "o_proj": (self.q_dim, h, self.attention_bias),
            "gate_proj": (h, i, self.mlp_bias), "up_proj": (h, i, self.mlp_bias), "down_proj": (i, h, self.mlp_bias),
        }

    def parameter_tensors(self) -> list[tuple[str, int, bool]]:
        """(kind, numel, quantizable) of every parameter tensor: 'linear' weights are the 4-bit candidates."""
        out: list[tuple[str, int, bool]] = [("embedding", self.vocab_size * self.hidden_size, False)]
        for _ in range(self.num_layers):
            for fan_in, fan_out, bias in self.linears().values():
                out.append(("linear", fan_in * fan_out, True))
                if bias:
                    out.append(("bias", fan_out, False))
            out += [("norm", self.hidden_size, False), ("norm", self.hidden_size, False)]
        out.append(("norm", self.hidden_size, False))
        if not self.tied_embeddings:
            out.append(("head", self.vocab_size * self.hidden_size, False))
        return out

    @property
    def num_parameters(self) -> int:
        """All parameters, counting tied embeddings once (as `model.num_parameters()` does)."""
        return sum(n for _, n, _ in self.parameter_tensors())

    @property
    def linear_parameters(self) -> int:
        """Weights of the decoder layers' linear layers: what 4-bit quantization shrinks."""
        return sum(n for kind, n, _ in self.parameter_tensors() if kind == "linear")

    def lora_parameters(self, r: int, targets: Sequence[str]) -> int:
        """Adapter parameters: r * (in + out) for every targeted linear layer of every decoder layer."""
        return self.num_layers * sum(r * (fi + fo) for name, (fi, fo, _) in self.linears().items() if name in targets)


def shape_of(config) -> ModelShape:
    """A ModelShape from a config object, a ModelShape, or a course/hub model name (config read locally)."""
    if isinstance(config, ModelShape):
        return config
    if isinstance(config, str):
        from transformers import AutoConfig

        from .models import resolve

        path, extra = resolve(config)
        config = AutoConfig.from_pretrained(path, **extra)
    return ModelShape.from_config(config)


# --- the estimate -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of one training setup, with what is alive at the peak."""

    setup: dict
    breakdown: dict  # component -> bytes alive at the peak; sums to total_bytes
    details: dict  # finer items -> bytes (weights split by kind, activations per part, ...)
    total_params: int
    trainable_params: int
    all_gradients: int  # every gradient at once (end of backward)
    all_activations: int  # every saved activation at once (start of backward)
    peak_at: str  # "start of backward" or "end of backward"
    context_bytes: int = 0  # part of overhead the framework allocator never sees (CUDA context)
    paged_bytes: int = 0  # part of optimizer state in paged (unified) memory, invisible to the allocator
    assumptions: tuple = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GiB

    @property
    def allocated_bytes(self) -> int:
        """What torch's allocator reports at the peak (max_memory_allocated; RSS growth on CPU)."""
        return self.total_bytes - self.context_bytes - self.paged_bytes

    def __getattr__(self, name):  # est.weights, est.activations, ... read the breakdown
        if name in COMPONENTS:
            return self.breakdown[name]
        raise AttributeError(name)

    def summary(self) -> str:
        """A few lines: the setup, each component in GiB, the total and when the peak happens."""
        s = self.setup
        head = (f"{s['method']} | {s['precision']} | {s['optimizer']} | batch {s['batch_size']} x {s['seq_len']}"
                + (f" | r={s['r']}" if s["method"] != "full" else "")
                + (" | grad. checkpointing" if s["gradient_checkpointing"] else "") + f" | {s['device']}")
        lines = [head, f"  parameters {self.total_params / 1e6:,.1f}M, trainable {self.trainable_params / 1e6:,.2f}M"]
        for name in COMPONENTS:
            lines.append(f"  {name:<12}{self.breakdown[name] / GiB:8.3f} GiB")
        lines.append(f"  {'total':<12}{self.total_gib:8.3f} GiB  (peak at {self.peak_at})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain numbers, for JSON."""
        out = asdict(self)
        out["total_bytes"] = self.total_bytes
        out["allocated_bytes"] = self.allocated_bytes
        return out


def _check(method, precision, optimizer, batch_size, seq_len, r, targets) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if method != "full":
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive integer, got {r!r}")
        unknown = [t for t in targets if t not in ALL_LINEAR]
        if unknown or not targets:
            raise ValueError(f"targets must be names among {', '.join(ALL_LINEAR)} (or 'all-linear'), got {targets!r}")
    if method == "qlora" and precision == "mixed":
        raise ValueError("QLoRA's precision is its compute dtype: 'bf16', 'fp16' or 'fp32' (not 'mixed')")


def weight_bytes_qlora(shape: ModelShape, double_quant: bool = True, block: int = QUANT_BLOCK) -> dict[str, int]:
    """Bytes of a model loaded in 4-bit NF4 and prepared for k-bit training, by kind."""
    linear = shape.linear_parameters
    n_linear = shape.num_layers * len(shape.linears())
    blocks = sum(math.ceil(n / block) for kind, n, _ in shape.parameter_tensors() if kind == "linear")
    if double_quant:
        # one uint8 per block, then per tensor: float32 scales of 256-block groups, a float32 offset,
        # and the 256-entry float32 code book of the 8-bit second level
        groups = sum(math.ceil(math.ceil(n / block) / DOUBLE_QUANT_BLOCK)
                     for kind, n, _ in shape.parameter_tensors() if kind == "linear")
        constants = blocks + 4 * groups + n_linear * (4 + 256 * 4)
    else:
        constants = 4 * blocks  # one float32 absmax per block
    other = shape.num_parameters - linear  # embeddings, norms, biases, untied head: cast to fp32 by peft
    return {"4-bit linear weights": linear // 2 + linear % 2, "quantization constants": constants,
            "fp32 embeddings, norms, head": 4 * other}


def optimizer_bytes(numels: Iterable[int], optimizer: str, state_dtype_bytes: int) -> int:
    """Optimizer state for trainable tensors of these sizes."""
    total = 0
    for n in numels:
        if optimizer == "sgd":
            continue
        if optimizer == "adamw" or n < OPTIM_8BIT_MIN_SIZE:
            total += 2 * n * (state_dtype_bytes if optimizer == "adamw" else 4)
        else:  # two uint8 states, each with one float32 scale per 256 values
            total += 2 * (n + 4 * math.ceil(n / OPTIM_8BIT_BLOCK))
    return total


def activation_bytes_per_token(shape: ModelShape, method: str, precision: str, targets: Sequence[str], r: int,
                               gradient_checkpointing: bool = False) -> dict[str, float]:
    """Bytes autograd saves per token: one decoder layer, and the head (final norm, logits' log-softmax).

    Counted for transformers' Llama with SDPA attention, tensor by tensor:
    - each RMSNorm keeps its input in fp32 (it upcasts) and 1/rms; the normalized input too when its weight trains;
    - q and k after RoPE, v, the attention output and the log-sum-exp (fp32, per head) for SDPA;
    - the MLP keeps gate and up outputs and SiLU(gate);
    - a linear keeps its input when its weight or an adapter on it trains. Inputs are shared (q/k/v read one
      tensor) unless a cast makes private copies: an adapter (fp32) under bf16 autocast, or autocast of fp32
      inputs in mixed precision;
    - an adapter keeps its r-dim middle activation.
    """
    h, i, q, kv, a = shape.hidden_size, shape.intermediate_size, shape.q_dim, shape.kv_dim, shape.num_heads
    autocast = precision in ("bf16", "fp16", "mixed")
    s = 2 if autocast else 4  # matmul outputs
    full = method == "full"
    lora = set(targets) if method != "full" else set()
    needs = {name: full or name in lora for name in ALL_LINEAR}
    normed = (4 if precision in ("fp32", "mixed") else 2) * h if full else 0

    norm = 4 * h + 4 + normed
    attention = s * (2 * q + 2 * kv) + 4 * a
    mlp = (4 if method == "qlora" and autocast else s) * 3 * i
    inputs = 0
    for group, dim in ((("q_proj", "k_proj", "v_proj"), h), (("o_proj",), q), (("gate_proj", "up_proj"), h),
                       (("down_proj",), i)):
        n = sum(needs[name] for name in group)
        if n == 0:
            continue
        casting = (method != "full" and autocast) or (precision == "mixed" and group[0] in ("q_proj", "gate_proj"))
        if casting:
            inputs += n * 2 * dim
        elif group[0] != "o_proj":  # o_proj's input is the attention output, already counted
            inputs += s * dim
    adapters = len(lora) * r * (2 if autocast else 4)
    layer = 2 * norm + attention + mlp + inputs + adapters

    head_input = (2 if precision == "mixed" else s) * h if full else 0
    head = norm + head_input + 4 * shape.vocab_size + TOKEN_MISC
    resid = 2 if precision in ("bf16", "fp16") and method != "qlora" else 4  # qlora: embeddings are fp32
    return {"layer": layer, "head": head, "checkpoint": resid * h,
            "layer (recomputed, with its gradients)": 2 * layer}


def autocast_copies(shape: ModelShape, method: str, precision: str, r: int, targets: Sequence[str]) -> int:
    """Bytes of 16-bit weight copies autocast makes in the forward pass and autograd keeps until backward."""
    if precision == "fp32":
        return 0
    adapters = 2 * shape.lora_parameters(r, targets) if method != "full" else 0
    head = 2 * shape.vocab_size * shape.hidden_size
    if precision == "mixed":  # every fp32 weight used in a matmul, including the (tied) head
        return 2 * shape.linear_parameters + head + adapters
    if method == "qlora":  # peft cast the head to fp32
        return head + adapters
    return adapters


def estimate(config, method: str = "lora", *, batch_size: int, seq_len: int, r: int = 16,
             targets: Sequence[str] | str = "all-linear", precision: str | None = None, optimizer: str = "adamw",
             gradient_checkpointing: bool = False, device: str = "cuda", double_quant: bool = True) -> MemoryEstimate:
    """Predict the peak memory of training `config` with `method`, broken down into the five components.

    config: a transformers config, a ModelShape, or a model name (its config is read locally).
    method: 'full', 'lora' or 'qlora'. precision: 'fp32', 'bf16', 'fp16' (weights in 16 bits with autocast, what
    the Trainer does with bf16=True on a bf16 model) or 'mixed' (fp32 weights, bf16 autocast); for QLoRA the
    compute dtype. Default: bf16 on cuda, fp32 on cpu. optimizer: 'adamw', 'adamw_8bit', 'paged_adamw_8bit', 'sgd'.
    """
    shape = shape_of(config)
    targets = tuple(ALL_LINEAR) if targets == "all-linear" else tuple(targets)
    precision = precision or ("bf16" if device == "cuda" else "fp32")
    _check(method, precision, optimizer, batch_size, seq_len, r, targets)
    tokens = batch_size * seq_len
    tensors = shape.parameter_tensors()
    total_params = shape.num_parameters
    details: dict[str, int] = {}

    # weights
    if method == "qlora":
        details.update(weight_bytes_qlora(shape, double_quant))
    else:
        details["base weights"] = _bytes(precision) * total_params
    lora_params = shape.lora_parameters(r, targets) if method != "full" else 0
    if lora_params:
        details["adapters (fp32)"] = 4 * lora_params
    weights = sum(details.values())

    # gradients and optimizer state
    if method == "full":
        trainable = [n for _, n, _ in tensors]
        grad_bytes = _bytes(precision)
    else:
        trainable = [n for _ in range(shape.num_layers) for name, (fi, fo, _) in shape.linears().items()
                     if name in targets for n in (r * fi, r * fo)]  # lora_A (r x in) and lora_B (out x r)
        grad_bytes = 4  # peft keeps adapters in fp32
    trainable_params = sum(trainable)
    all_gradients = grad_bytes * trainable_params
    opt = optimizer_bytes(trainable, optimizer, grad_bytes)
    details["optimizer state"] = opt

    # activations
    per_token = activation_bytes_per_token(shape, method, precision, targets, r, gradient_checkpointing)
    copies = autocast_copies(shape, method, precision, r, targets)
    if gradient_checkpointing:
        saved = tokens * (shape.num_layers * per_token["checkpoint"] + per_token["head"])
        # the backward pass recomputes one layer at a time; that layer's activations come back with their grads
        recompute = tokens * per_token["layer (recomputed, with its gradients)"]
    else:
        saved = tokens * (shape.num_layers * per_token["layer"] + per_token["head"])
        recompute = 0
    loss_grads = 8 * tokens * shape.vocab_size  # fp32 gradients of the log-softmax output and of the logits
    details.update({"saved activations": saved, "autocast weight copies": copies,
                    "loss gradient buffers": loss_grads, "recomputed layer": recompute})
    all_activations = saved + copies

    # the two candidate peaks: start of backward (activations + loss buffers) and end of backward (all grads)
    head_grad = grad_bytes * shape.vocab_size * shape.hidden_size if method == "full" else 0
    start = all_activations + max(loss_grads, recompute) + head_grad
    embedding_grad = grad_bytes * shape.vocab_size * shape.hidden_size if method == "full" else 0
    end = all_gradients + embedding_grad  # the embedding's dense gradient, before it is added into .grad
    if start >= end:
        peak_at, gradients, activations = "start of backward", head_grad, start - head_grad
    else:
        peak_at, gradients, activations = "end of backward", end, 0

    # overhead
    context = CUDA_CONTEXT if device == "cuda" else 0
    overhead = context + (CUDA_WORKSPACE if device == "cuda" else CPU_WORKSPACE)
    if method == "qlora":  # a 4-bit linear dequantizes its weight to the compute dtype for each matmul
        biggest = max(fi * fo for fi, fo, _ in shape.linears().values())
        overhead += 2 * biggest * (4 if precision == "fp32" else 2)
    paged = opt if optimizer.startswith("paged") and device == "cuda" else 0

    setup = {"method": method, "precision": precision, "optimizer": optimizer, "batch_size": batch_size,
             "seq_len": seq_len, "r": r if method != "full" else None, "targets": list(targets) if method != "full" else None,
             "gradient_checkpointing": gradient_checkpointing, "device": device, "double_quant": double_quant}
    return MemoryEstimate(
        setup=setup,
        breakdown={"weights": weights, "gradients": gradients, "optimizer": opt, "activations": activations,
                   "overhead": overhead},
        details=details, total_params=total_params, trainable_params=trainable_params,
        all_gradients=all_gradients, all_activations=all_activations, peak_at=peak_at,
        context_bytes=context, paged_bytes=paged, assumptions=tuple(assumptions(method, precision, optimizer)),
    )


def assumptions(method: str, precision: str, optimizer: str) -> list[str]:
    """The modelling assumptions behind an estimate, in words."""
    out = [
        "transformers Llama-style decoder with SDPA attention and no padding mask; one sequence length for the batch",
        "the loss is computed over the whole vocabulary in fp32 (log-softmax output plus two gradient buffers)",
        "peak = weights + optimizer state + the larger of (activations at the start of backward, all gradients)",
    ]
    if precision in ("bf16", "fp16"):
        out.append(f"weights stored in {precision}, autocast {precision} (Trainer with {precision}=True)")
    if precision == "mixed":
        out.append("fp32 master weights with bf16 autocast: the bf16 weight copies live until the backward pass")
    if method != "full":
        out.append("peft keeps adapters, their gradients and optimizer state in fp32")
    if method == "qlora":
        out.append("NF4 with double quantization; prepare_model_for_kbit_training casts embeddings and norms to fp32")
    if optimizer == "adamw":
        out.append("AdamW (fused): two states per trainable parameter in its dtype, no temporaries")
    elif "8bit" in optimizer:
        out.append("8-bit AdamW: two uint8 states plus a float32 scale per 256 values (32-bit below 4096 values)")
    if optimizer.startswith("paged"):
        out.append("paged optimizer state lives in CUDA unified memory: counted in the total, not by the allocator")
    return out


# --- the "how much VRAM" table ------------------------------------------------------------------------------
def llama_sizes() -> dict:
    """LlamaConfigs with the published sizes of Llama 2 7B, 13B and 70B, built locally (no hub)."""
    from transformers import LlamaConfig

    def make(h, i, layers, heads, kv):
        return LlamaConfig(vocab_size=32000, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=False)

    return {"7B": make(4096, 11008, 32, 32, 32), "13B": make(5120, 13824, 40, 40, 40),
            "70B": make(8192, 28672, 80, 64, 8)}


TABLE_SETUPS = {
    "full (mixed, AdamW)": dict(method="full", precision="mixed", optimizer="adamw"),
    "full (bf16, 8-bit AdamW)": dict(method="full", precision="bf16", optimizer="adamw_8bit"),
    "LoRA (bf16, r=16)": dict(method="lora", precision="bf16", optimizer="adamw"),
    "QLoRA (NF4, r=16, paged 8-bit)": dict(method="qlora", precision="bf16", optimizer="paged_adamw_8bit"),
}


def vram_table(batch_size: int = 1, seq_len: int = 2048, gradient_checkpointing: bool = True) -> list[dict]:
    """Rows of predicted GiB for each published Llama size and each setup in TABLE_SETUPS."""
    rows = []
    for size, config in llama_sizes().items():
        row = {"model": size, "params": ModelShape.from_config(config).num_parameters}
        for label, setup in TABLE_SETUPS.items():
            est = estimate(config, batch_size=batch_size, seq_len=seq_len, r=16,
                           gradient_checkpointing=gradient_checkpointing, device="cuda", **setup)
            row[label] = est.total_gib
        rows.append(row)
    return rows


def print_vram_table(batch_size: int = 1, seq_len: int = 2048, gradient_checkpointing: bool = True) -> None:
    """Print the table and the assumptions behind it."""
    rows = vram_table(batch_size, seq_len, gradient_checkpointing)
    labels = list(TABLE_SETUPS)
    print(f"{'model':<6}{'params':>8}  " + "  ".join(f"{label:>31}" for label in labels))
    for row in rows:
        print(f"{row['model']:<6}{row['params'] / 1e9:>7.1f}B  " + "  ".join(f"{row[l]:>27.1f} GiB" for l in labels))
    print(f"\nAssumptions: batch {batch_size} x {seq_len} tokens, gradient checkpointing "
          f"{'on' if gradient_checkpointing else 'off'}, LoRA/QLoRA r=16 on all linear layers, one GPU, CUDA context "
          f"{CUDA_CONTEXT // MiB} MiB included; Llama 2 shapes (vocab 32000, untied head, 70B with 8 KV heads).")
    seen = []
    for setup in TABLE_SETUPS.values():
        for line in assumptions(**setup):
            if line not in seen:
                seen.append(line)
    for line in seen:
        print(f"- {line}")


# --- measuring ---------------------------------------------------------------------------------------------
VALIDATION_SIZES = {
    # real SmolLM2-135M weights (the course model), and a larger config with random weights (SmolLM2-360M's shape)
    "135M": {"model": "default"},
    "360M": {"config": dict(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                            num_attention_heads=15, num_key_value_heads=5, head_dim=64, tie_word_embeddings=True)},
}


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class PeakMemory:
    """Measure the peak memory a block of code adds: `with PeakMemory(device) as m: ...`, then `m.peak_bytes`.

    CUDA: torch.cuda.max_memory_allocated() above what was allocated at the start. CPU: the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs) above its size at the start, with glibc told to
    give freed tensors back at once so that the peak follows live tensors. Where Linux does not let us reset the
    peak (another OS, a sandbox), `peak_bytes` stays None rather than a wrong number.
    """

    def __init__(self, device: str = "cpu", preload: bool = True):
        self.device, self.preload = str(device), preload
        self.peak_bytes: int | None = None
        self._start = 0

    def __enter__(self) -> "PeakMemory":
        if self.preload:
            # libraries a first training step imports lazily would otherwise count as training memory
            import peft  # noqa: F401
            import transformers.trainer  # noqa: F401
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start = None
            if self._can_reset():
                _glibc_returns_freed_memory()
                start = _rss_kib("VmRSS") * 1024
                try:
                    _reset_peak_rss()
                except OSError:  # os.access cannot see every rule: a Landlock sandbox refuses the write itself
                    return self
                self._start = start
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        elif self._start is not None:
            self.peak_bytes = _rss_kib("VmHWM") * 1024 - self._start

    @staticmethod
    def _can_reset() -> bool:
        return os.access("/proc/self/clear_refs", os.W_OK) and os.access("/proc/self/status", os.R_OK)


def _glibc_returns_freed_memory() -> None:
    """Tell glibc to map every allocation over 64 KiB on its own and unmap it when freed (Linux with glibc only)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from malloc.h
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 0)
    libc.malloc_trim(0)


def _load_for_method(path: str, method: str, precision: str, device: str, r: int, targets, gradient_checkpointing):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "mixed": torch.float32}[precision]
    if method == "qlora":
        from .qlora import load_4bit, add_lora

        model = load_4bit(path, compute_dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing)
        return add_lora(model, r=r, targets=list(targets))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                 task_type="CAUSAL_LM"))
        if gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def _own_memory(model) -> None:
    """Copy parameters and buffers that alias the memory-mapped checkpoint into ordinary memory.

    from_pretrained maps the safetensors file and may keep tensors pointing into it; while one does, every page of
    the file that loading touched stays in the resident set and would be counted as if it were training memory.
    """
    import gc

    import torch

    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if type(param).__name__ != "Params4bit":  # 4-bit weights were freshly quantized into new memory
                    param.data = param.data.clone()
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.clone()
    gc.collect()


def _make_optimizer(params, optimizer: str, device: str):
    import torch

    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-5, fused=True)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=1e-5)


def _measure_here(spec: dict) -> dict:
    """Run in a fresh process: load, reset the peak, train a few steps on random tokens, report the peak."""
    import contextlib

    import torch

    from .runtime import quiet

    quiet()
    device = spec["device"]
    torch.manual_seed(0)
    # import everything loading will need first, so that the baseline holds the libraries and not the model
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    if spec["method"] == "qlora" or "8bit" in spec["optimizer"]:
        import bitsandbytes  # noqa: F401
    baseline = _rss_kib("VmRSS") * 1024 if device == "cpu" else 0
    started = time.perf_counter()
    model = _load_for_method(spec["path"], spec["method"], spec["precision"], device, spec["r"], spec["targets"],
                             spec["gradient_checkpointing"])
    model.config.use_cache = False
    model.train()
    if device == "cpu":
        _own_memory(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(params, spec["optimizer"], device)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (spec["batch_size"], spec["seq_len"]), device=device)
    autocast = (torch.autocast(device, dtype=torch.bfloat16 if spec["precision"] != "fp16" else torch.float16)
                if spec["precision"] != "fp32" else contextlib.nullcontext())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_alloc = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        start_alloc = _rss_kib("VmRSS") * 1024 - baseline
    losses = []
    for _ in range(spec["steps"]):
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss  # drop the outputs: the Trainer keeps only the loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
    else:
        peak = _rss_kib("VmHWM") * 1024 - baseline
        reserved = peak
    return {"peak": peak, "reserved": reserved, "after_load": start_alloc, "losses": losses,
            "seconds": time.perf_counter() - started,
            "params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in params)}


def measure_peak(path: str, method: str, *, batch_size: int, seq_len: int, r: int = 16,
                 targets: Sequence[str] = ALL_LINEAR, precision: str = "fp32", optimizer: str = "adamw",
                 gradient_checkpointing: bool = False, device: str = "cpu", steps: int = 3, timeout: float = 900) -> dict:
    """Measure the peak memory of a few training steps of the model in `path`, in a fresh Python process.

    GPU: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), from after loading to after the last
    optimizer step. CPU: tracemalloc cannot see torch's allocations (they bypass Python's allocator), and torch has
    no CPU allocator statistics, so we read the process's peak resident set size (VmHWM, reset through
    /proc/self/clear_refs after loading) minus its size before loading. glibc would keep freed tensors in its heap
    and inflate that number, so the child pins glibc's mmap threshold at 64 KiB: every tensor gets its own
    mapping, returned to the system when freed, and RSS follows the live tensors.
    """
    spec = dict(path=path, method=method, batch_size=batch_size, seq_len=seq_len, r=r, targets=list(targets),
                precision=precision, optimizer=optimizer, gradient_checkpointing=gradient_checkpointing,
                device=device, steps=steps)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_ARENA_MAX="2",
               PYTHONWARNINGS="ignore")
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run([sys.executable, "-m", "course_lib.memory", "_measure", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {method} on {device} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def random_checkpoint(config_kwargs: dict, folder: str) -> str:
    """Save a Llama with random weights (bf16, safetensors) built from config kwargs; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    torch.manual_seed(0)
    config = LlamaConfig(**config_kwargs)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def validation_setups(device: str) -> list[dict]:
    """The setups validate() measures: full, LoRA and QLoRA as the course runs them on this device."""
    if device == "cuda":
        return [dict(method="full", precision="bf16", optimizer="adamw"),
                dict(method="full", precision="mixed", optimizer="adamw"),
                dict(method="lora", precision="bf16", optimizer="adamw"),
                dict(method="qlora", precision="bf16", optimizer="paged_adamw_8bit"),
                dict(method="qlora", precision="bf16", optimizer="paged_adamw_8bit", gradient_checkpointing=True)]
    return [dict(method="full", precision="fp32", optimizer="adamw"),
            dict(method="lora", precision="fp32", optimizer="adamw"),
            dict(method="qlora", precision="fp32", optimizer="adamw"),
            dict(method="qlora", precision="fp32", optimizer="adamw", gradient_checkpointing=True)]


def validate(device: str = "cpu", sizes: Sequence[str] = ("135M", "360M"), batch_size: int | None = None,
             seq_len: int | None = None, workdir: str | None = None, setups: list[dict] | None = None,
             progress: bool = True) -> list[dict]:
    """Predict and measure each setup on each size; print a table with the error of every prediction."""
    import tempfile

    from transformers import AutoConfig

    from .models import resolve

    batch_size = batch_size or (8 if device == "cuda" else 4)
    seq_len = seq_len or (512 if device == "cuda" else 128)
    workdir = workdir or tempfile.mkdtemp(prefix="course-memory-")
    rows = []
    header = f"{'model':<6}{'setup':<34}{'predicted':>11}{'measured':>11}{'error':>8}  peak at"
    print(f"peak memory on {device}, batch {batch_size} x {seq_len} tokens, "
          f"{'max_memory_allocated' if device == 'cuda' else 'peak RSS growth'}")
    print(header)
    for size in sizes:
        what = VALIDATION_SIZES[size]
        if "model" in what:
            path = resolve(what["model"])[0]
        else:
            path = random_checkpoint(what["config"], os.path.join(workdir, size))
        config = AutoConfig.from_pretrained(path)
        for setup in setups or validation_setups(device):
            setup = dict(setup)
            gc = setup.pop("gradient_checkpointing", False)
            est = estimate(config, batch_size=batch_size, seq_len=seq_len, r=16, device=device,
                           gradient_checkpointing=gc, **setup)
            got = measure_peak(path, batch_size=batch_size, seq_len=seq_len, r=16, device=device,
                               gradient_checkpointing=gc, **setup)
            predicted = est.allocated_bytes
            error = (predicted - got["peak"]) / got["peak"]
            label = f"{setup['method']} {setup['precision']} {setup['optimizer']}" + (" +GC" if gc else "")
            row = {"model": size, "setup": label, "predicted": predicted, "measured": got["peak"], "error": error,
                   "peak_at": est.peak_at, "estimate": est.to_dict(), "measurement": got}
            rows.append(row)
            print(f"{size:<6}{label:<34}{predicted / GiB:>9.3f}Gi{got['peak'] / GiB:>9.3f}Gi{100 * error:>+7.1f}%  "
                  f"{est.peak_at}", flush=True)
    worst = max(abs(row["error"]) for row in rows)
    print(f"largest error {100 * worst:.1f}% (goal: within 15%)")
    return rows


def plot_breakdown(estimates: dict, ax=None, title: str = "predicted peak memory by component"):
    """Stacked bars: one per labelled estimate, one colour per component (GiB)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.6))
    labels = list(estimates)
    bottom = [0.0] * len(labels)
    colors = {"weights": "#2a7ab9", "gradients": "#e07b39", "optimizer": "#4c9a2a", "activations": "#b94a6c",
              "overhead": "#999999"}
    for name in COMPONENTS:
        values = [estimates[label].breakdown[name] / GiB for label in labels]
        ax.bar(labels, values, bottom=bottom, label=name, color=colors[name])
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:.2f} GiB", ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="GiB", title=title, ylim=(0, max(bottom) * 1.18))
    ax.legend(fontsize=8, loc="upper right")
    return ax


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m course_lib.memory validate|table`."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.memory")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="predicted vs measured peak memory")
    v.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    v.add_argument("--sizes", default="135M,360M")
    v.add_argument("--batch-size", type=int)
    v.add_argument("--seq-len", type=int)
    v.add_argument("--json", help="write the rows here")
    t = sub.add_parser("table", help="the 7B/13B/70B table")
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--seq-len", type=int, default=2048)
    m = sub.add_parser("_measure")
    m.add_argument("spec")
    args = parser.parse_args(argv)
    if args.command == "_measure":
        print(json.dumps(_measure_here(json.loads(args.spec))))
    elif args.command == "table":
        print_vram_table(args.batch_size, args.seq_len)
    else:
        rows = validate(args.device, args.sizes.split(","), args.batch_size, args.seq_len)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
