"""The course's one memory planner: predict the peak memory of fine-tuning (full, LoRA, QLoRA) before running.

- `training_memory`: weights, gradients and optimizer state from parameter counts alone (notebook 02's sum);
- `estimate`: the whole training step from a model config, component by component (below);
- `plan_checkpointing`: how many layers the GPU fast path checkpoints to fit a memory limit;
  `layers_to_uncheckpoint`: how many it can give back once the peak is measured.

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

`course_lib.qlora.memory_check` measures the same setups and prints predicted against measured:
`python -m course_lib.qlora.memory_check validate [--device cuda]`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from transformers import AutoConfig, LlamaConfig

from course_lib.core.models import ALL_LINEAR, resolve

GiB = 1024**3
MiB = 1024**2
METHODS = ("full", "lora", "qlora")
PRECISIONS = ("fp32", "bf16", "fp16", "mixed")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
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
        if "8bit" not in optimizer or n < OPTIM_8BIT_MIN_SIZE:  # bitsandbytes keeps small tensors in fp32
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
    compute dtype. Default: bf16 on cuda, fp32 on cpu. optimizer: 'adamw', 'adamw_8bit', 'paged_adamw_8bit', 'paged_adamw_32bit', 'sgd'.
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
    elif optimizer == "paged_adamw_32bit":
        out.append("32-bit AdamW (the QLoRA paper's): two fp32 states per trainable parameter")
    if optimizer.startswith("paged"):
        out.append("paged optimizer state lives in CUDA unified memory: counted in the total, not by the allocator")
    return out


# --- the "how much VRAM" table ------------------------------------------------------------------------------
def llama_sizes() -> dict:
    """LlamaConfigs with the published sizes of Llama 2 7B, 13B and 70B, built locally (no hub)."""

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


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes that training keeps for the model itself; activations come on top and grow with batch x length."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer

    def __str__(self) -> str:
        gib = 2**30
        return (f"weights {self.weights / gib:.2f} GiB + gradients {self.gradients / gib:.2f} GiB + "
                f"optimizer {self.optimizer / gib:.2f} GiB = {self.total / gib:.2f} GiB")


def training_memory(
    total_params: int,
    trainable_params: int,
    weight_bytes: int = 4,
    optimizer_states: int = 2,
    state_bytes: int = 4,
) -> TrainingMemory:
    """Memory for weights, gradients and optimizer state (AdamW keeps 2 states per trainable parameter)."""
    if not 0 <= trainable_params <= total_params:
        raise ValueError(f"trainable_params={trainable_params} must lie between 0 and total_params={total_params}")
    # Only trainable parameters get a gradient and optimizer states; frozen ones cost their weights alone.
    return TrainingMemory(
        weights=total_params * weight_bytes,
        gradients=trainable_params * weight_bytes,
        optimizer=trainable_params * optimizer_states * state_bytes,
    )


# --- the GPU fast path's plan (course_lib.fast): its fused kernels save less than the Trainer's layers counted above
def packed_activation_bytes(config) -> tuple[float, float]:
    """Bytes one token leaves for the backward pass in one fast-path decoder layer: (layer kept, checkpointed).

    Kept: about 8 hidden-sized and 3 intermediate-sized bf16 tensors (norm inputs and outputs, q, k, v, the
    attention output, gate, up and their product), with a 25 % margin; checkpointed: only the layer's input.
    """
    h, inter = config.hidden_size, config.intermediate_size
    return 1.25 * 2 * (8 * h + 3 * inter), 2.0 * h


def plan_checkpointing(config, tokens: int, available: float, max_length: int) -> tuple[int, float]:
    """Micro-batch tokens and the fraction of layers to checkpoint so the activations fit in `available` bytes.

    Checkpointing costs a second forward pass through the layers it covers, so checkpoint as few layers as
    the memory allows; if even checkpointing every layer does not fit `tokens`, shrink the micro-batch.
    """
    layers = config.num_hidden_layers
    kept, checkpointed = packed_activation_bytes(config)
    if layers * kept * tokens <= available:
        return tokens, 0.0
    all_checkpointed = (layers * checkpointed + kept) * tokens  # + the one layer being recomputed
    if all_checkpointed > available:
        fitting = int(available / (layers * checkpointed + kept)) // 256 * 256
        return max(max_length, fitting), 1.0
    spare = available - all_checkpointed
    keep = min(layers, int(spare / ((kept - checkpointed) * tokens)))
    return tokens, (layers - keep) / layers


def layers_to_uncheckpoint(config, spare: float, tokens: int, checkpointed: int) -> int:
    """How many of `checkpointed` layers can keep their activations in `spare` measured bytes (the plan's margin)."""
    kept, input_only = packed_activation_bytes(config)
    return max(0, min(checkpointed, int(spare / ((kept - input_only) * tokens))))


def qlora_state_bytes(n_linear: float, n_other: float, n_adapter: float) -> float:
    """Weights + gradients + AdamW state of a QLoRA model before activations, in bytes: NF4 linears with
    double-quantized constants (4 + 8/64 + 32/(64 * 256) bits each), fp32 embeddings and norms, and fp32 adapters
    with a gradient and two AdamW states each."""
    bits_per_linear = 4 + 8 / QUANT_BLOCK + 32 / (QUANT_BLOCK * 256)
    return n_linear * bits_per_linear / 8 + 4 * n_other + (4 + 4 + 8) * n_adapter
