"""The course's default way to fine-tune with LoRA / QLoRA: the textbook maths, without the textbook's waste.

    from course_lib.fastpath import FastSettings, train_fast
    result = train_fast(model, tokenizer, conversations, FastSettings(steps=50))     # fast path (default)
    result = train_fast(model, tokenizer, conversations, FastSettings(recipe=True))  # plain Trainer recipe

Both paths attach the same LoRA adapters, see the same examples per optimizer step, and minimise the same
token-weighted loss, so their loss curves agree; the fast path just spends the GPU's time on real tokens:

* padding-free packing that keeps example boundaries (`fast_packing`): no padding is computed at all;
* varlen flash attention on packed rows (`fast_ops.varlen_attention`): no attention across examples;
* the loss only on the tokens that are learned, with a chunked linear cross-entropy (no full fp32 logits);
* a fused LoRA layer (`fast_lora`): scale and add ride on the matmul, half the activation traffic of peft's;
* bf16 end to end (adapters too) with fp32 master weights and a fused AdamW, or paged 8-bit AdamW for QLoRA;
* no LoRA dropout (its random masks cost a pass over every activation and barely regularise short runs);
* Liger's Triton kernels for RMSNorm/SwiGLU/RoPE when the `liger-kernel` package is installed (GPU only);
* memory planned against a limit: QLoRA's dequantized weights cached in spare memory first, then gradient
  checkpointing on only as many layers as the rest demands; `torch.compile` only when asked (unmeasured:
  on an H200 a 30-step run had not finished after 150 s);
* q/k/v and gate/up as one LoRA group each (`fast_lora.group_lora`): their shared input read once;
* adapters, gradients and fp32 masters in one flat buffer each: the optimizer step is a handful of kernels;
* each micro-batch's forward and backward replayed as a CUDA graph (`fast_graphs`), padded to one of a few sizes
  chosen from the run's plan: the host no longer sets the pace.

Measured on an H200 (tests/benchmarks/README.md), same data: 58,300 real tokens/s for LoRA on SmolLM2-1.7B
(41 % MFU), 5.0x to 6.5x the recipe (which varied from 9,000 to 11,600 tokens/s between runs), about 9x for QLoRA
at a 6.7 GiB peak, over 20x on SmolLM2-135M, with the same held-out loss on the course task.
On a CPU everything still runs (fp32, per-example attention), which is what CI tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

from .fast_ops import (
    MasterWeights, apply_liger, forward_backward, liger_available, make_adamw, packed_kwargs,
    register_attention,
)
from .fast_lora import cache_dense_weights, fuse_lora, group_lora, unfuse_lora
from .fast_packing import pack_rows, plan_step, step_batches

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class FastSettings:
    """How to fine-tune: the optimisation (same for both paths) and the fast path's engineering switches."""

    # the optimisation: both paths honour these
    steps: int = 50
    batch_size: int = 8  # examples per optimizer step (the recipe: micro_batch_size × accumulation)
    learning_rate: float = 2e-3
    warmup_steps: int = 5
    schedule: str = "linear"  # any transformers scheduler name: linear, cosine, constant_with_warmup, ...
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    max_length: int = 256  # longer examples are truncated
    seed: int = 0
    shuffle: bool = True
    # which path
    recipe: bool = False  # True: the textbook Trainer recipe (padding to max_length, micro-batches, plain AdamW)
    micro_batch_size: int = 8  # recipe only: examples per forward pass; accumulation = batch_size // this
    # fast path switches ("auto" decides from the device and the model)
    max_tokens: int | None = None  # micro-batch token budget; None: a whole step if memory allows
    memory_limit_gib: float | None = None  # GPU memory to stay under (default: 85 % of the GPU)
    gradient_checkpointing: bool | float | str = "auto"  # auto: only as many layers as memory demands
    fused_lora: bool = True  # run LoRA layers through fast_lora (needs dropout 0)
    grouped_lora: bool = True  # and q/k/v, gate/up of a layer as one group: their shared input read once
    dense_cache: bool = True  # 4-bit base: keep dequantized weights in whatever memory the limit leaves spare
    optimizer: str = "auto"  # "fused" AdamW, "paged8bit" (bitsandbytes), "plain", or auto
    liger: bool | str = "auto"
    compile: bool | str = False  # torch.compile each decoder layer (dynamic shapes; turns Liger off); on an H200
    # a 30-step run of the 135M shape had not finished after 150 s, so it has no measured speed
    cuda_graphs: bool | str = "auto"  # replay each micro-batch's forward+backward as a CUDA graph (fast_graphs);
    # auto: on a GPU with flash attention and no dropout. True on a CPU runs the same padded shapes without graphs
    max_graphs: int = 8  # at most this many graph sizes; micro-batches are padded up to the nearest
    log_every: int = 10  # show the loss every this many steps (each read waits for the GPU; all steps are kept)
    time_from_step: int | None = None  # benchmark: time steady-state throughput from this step on

    @classmethod
    def textbook(cls, **changes) -> "FastSettings":
        """The plain recipe as most tutorials write it: Trainer + peft, pad to 512, 8 × 4 examples, dropout 0.05."""
        base = dict(recipe=True, batch_size=32, micro_batch_size=8, max_length=512, dropout=0.05,
                    learning_rate=2e-4, warmup_steps=0)
        return cls(**{**base, **changes})

    def replace(self, **changes) -> "FastSettings":
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class FastResult:
    """What a run leaves: the model (with adapters), the loss per step, and the throughput it ran at."""

    model: object
    history: list[dict]  # {"step", "loss", "tokens"} per optimizer step
    seconds: float
    tokens: int  # real (non-padding) tokens trained on
    path: str  # "fast" or "recipe"
    details: dict = field(default_factory=dict)  # what the fast path chose: budget, kernels, peak memory, ...

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.history]

    @property
    def tokens_per_second(self) -> float:
        """Real tokens per second over the timed part of the run (all of it unless time_from_step was set)."""
        timed = self.details.get("timed_tokens", self.tokens)
        seconds = self.details.get("timed_seconds", self.seconds)
        return timed / seconds if seconds else float("nan")


# ---------------------------------------------------------------------------------------------------- data


def to_rows(data: Sequence, tokenizer, max_length: int) -> list[dict]:
    """Tokenized rows {"input_ids", "labels"} from chats (lists of messages) or already tokenized rows."""
    from .data import tokenize_chat

    rows = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "input_ids" in item:
            ids = list(item["input_ids"])[:max_length]
            labels = list(item.get("labels", item["input_ids"]))[:max_length]
            row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        elif isinstance(item, (list, tuple)) and item and all(isinstance(m, dict) and "role" in m for m in item):
            row = tokenize_chat(item, tokenizer, max_length=max_length)
        else:
            raise ValueError(f"training item {i} is neither a chat (a list of messages) nor a tokenized row: {item!r:.80}")
        if not any(label != -100 for label in row["labels"][1:]):
            raise ValueError(f"training item {i} has no token to learn: its answer is missing or was cut off by "
                             f"max_length={max_length}")
        rows.append(row)
    if not rows:
        raise ValueError("no training conversations given")
    return rows


# ---------------------------------------------------------------------------------------------------- model


def is_4bit(model) -> bool:
    """True for a model whose linear layers are bitsandbytes 4-bit (a QLoRA base)."""
    if getattr(model, "is_loaded_in_4bit", False):
        return True
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


def attach_lora(model, settings: FastSettings):
    """Wrap `model` with LoRA adapters (seeded, so both paths start from the same adapters); a PeftModel is kept."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    torch.manual_seed(settings.seed)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config, autocast_adapter_dtype=False)


def compute_dtype(model):
    """The dtype the model computes in: its embedding's (4-bit layers store uint8, but compute in this)."""
    return model.get_input_embeddings().weight.dtype


def activation_bytes(config) -> tuple[float, float]:
    """Bytes one token leaves for the backward pass in one decoder layer: (layer kept, layer checkpointed).

    Kept: about 8 hidden-sized and 3 intermediate-sized bf16 tensors (norm inputs and outputs, q, k, v, the
    attention output, gate, up and their product), with a 25 % margin; checkpointed: only the layer's input.
    """
    h, inter = config.hidden_size, config.intermediate_size
    return 1.25 * 2 * (8 * h + 3 * inter), 2.0 * h


def plan_memory(config, tokens: int, available: float, max_length: int) -> tuple[int, float]:
    """Micro-batch tokens and the fraction of layers to checkpoint so the activations fit in `available` bytes.

    Checkpointing costs a second forward pass through the layers it covers, so checkpoint as few layers as
    the memory allows; if even checkpointing every layer does not fit `tokens`, shrink the micro-batch.
    """
    layers = config.num_hidden_layers
    kept, checkpointed = activation_bytes(config)
    if layers * kept * tokens <= available:
        return tokens, 0.0
    all_checkpointed = (layers * checkpointed + kept) * tokens  # + the one layer being recomputed
    if all_checkpointed > available:
        fitting = int(available / (layers * checkpointed + kept)) // 256 * 256
        return max(max_length, fitting), 1.0
    spare = available - all_checkpointed
    keep = min(layers, int(spare / ((kept - checkpointed) * tokens)))
    return tokens, (layers - keep) / layers


def set_checkpointing(model, how, preserve_rng: bool = True) -> float:
    """Turn gradient checkpointing on for all layers (True), a leading fraction of them (a float), or none.

    preserve_rng=False skips saving the random state for the recomputation: right when nothing random runs (no
    dropout), and needed for CUDA graphs, which cannot read the generator's state while capturing.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fraction = 1.0 if how is True else 0.0 if how is False else float(how)
    if fraction <= 0:
        return 0.0
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                      "preserve_rng_state": preserve_rng})
    layers = list(base.get_decoder().layers)
    keep = round(fraction * len(layers))
    for layer in layers[keep:]:  # the last layers' activations are freed first in backward: keep them
        layer.gradient_checkpointing = False
    return keep / len(layers)


# ---------------------------------------------------------------------------------------------------- training


def train_fast(model, tokenizer, conversations: Sequence, settings: FastSettings | None = None,
               progress: bool = True, desc: str = "training") -> FastResult:
    """Fine-tune `model` with LoRA on chat conversations: the fast path, or the textbook recipe if settings.recipe."""
    settings = settings or FastSettings()
    rows = to_rows(conversations, tokenizer, settings.max_length)  # bad data fails before the model is touched
    if settings.recipe:
        from .fast_recipe import train_recipe

        return train_recipe(model, tokenizer, rows, settings, progress=progress, desc=desc)
    return _train_packed(model, rows, settings, progress=progress, desc=desc)


def _choose(value, auto):
    return auto if value == "auto" else value


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; `step` is where it was seen, `history` the steps before it."""

    def __init__(self, message: str, step: int, history: list[dict]):
        super().__init__(message)
        self.step = step
        self.history = history


def unsupported_reason(model) -> str | None:
    """Why the fast path cannot train `model` (None when it can): what it would silently get wrong otherwise."""
    import torch

    config = getattr(model, "config", None)
    for unsupported in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, unsupported, None):
            return (f"the fast path computes the loss from the hidden states and does not apply {unsupported}; "
                    f"use the recipe for this model")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "bias", None) is not None:
        return "the fast path expects an output layer without bias; use the recipe for this model"
    if compute_dtype(model) == torch.float16:
        return "fp16 weights need loss scaling, which the fast path does not do; load the model in bf16 or fp32"
    return None


def _train_packed(model, rows: list[dict], settings: FastSettings, progress: bool, desc: str) -> FastResult:
    import torch

    from .runtime import quiet

    quiet()
    device = next(model.parameters()).device
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(reason.replace("use the recipe", "use FastSettings(recipe=True)"))
    four_bit = is_4bit(model)
    if four_bit:
        from .qlora import unpack_cpu_weights

        unpack_cpu_weights(model)  # the same bitsandbytes CPU packing that finetune_qlora undoes
    peft_model = attach_lora(model, settings)
    base = peft_model.get_base_model()
    dtype = compute_dtype(base)
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != dtype:  # adapters compute in the model's dtype (bf16 on a GPU)
            param.data = param.data.to(dtype)
    details: dict = {"dtype": str(dtype).replace("torch.", ""), "4bit": four_bit}
    previous_attention = base.config._attn_implementation
    try:
        _speed_up(peft_model, settings, device, details)
        plan = list(step_batches(len(rows), settings.batch_size, settings.steps, settings.seed, settings.shuffle))
        max_tokens = _plan_memory(peft_model, rows, plan, settings, device, details)
        history, seconds, tokens = _run(peft_model, rows, plan, max_tokens, settings, device, details, progress, desc)
    finally:  # the model leaves as it came, plus trained adapters: peft's forward, its own attention, no caches
        unfuse_lora(peft_model)
        base.set_attn_implementation(previous_attention)
        if details.get("checkpointed_layers"):
            base.gradient_checkpointing_disable()
    if device.type == "cuda":
        details["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        details["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    peft_model.eval()
    return FastResult(model=peft_model, history=history, seconds=seconds, tokens=tokens, path="fast", details=details)


def _speed_up(peft_model, settings: FastSettings, device, details: dict) -> None:
    """Fused LoRA layers, Liger kernels, packed attention and (if asked) compiled layers."""
    base = peft_model.get_base_model()
    on_gpu = device.type == "cuda"
    details["fused_lora_layers"] = fuse_lora(peft_model) if settings.fused_lora else 0
    details["lora_groups"] = group_lora(peft_model) if settings.fused_lora and settings.grouped_lora else 0
    compiling = bool(_choose(settings.compile, False)) and on_gpu
    # Liger's autograd functions broke torch.compile's tracer (torch 2.11): compiled layers use plain PyTorch ops
    llama = getattr(base.config, "model_type", None) == "llama"  # Liger's patch here is the Llama one
    use_liger = _choose(settings.liger, on_gpu) and on_gpu and llama and not compiling and liger_available()
    details["liger"] = apply_liger(base) if use_liger else []
    base.set_attn_implementation(register_attention())
    if compiling:
        for layer in base.get_decoder().layers:
            layer.compile(dynamic=True)
        details["compiled"] = True


def _plan_memory(peft_model, rows, plan, settings: FastSettings, device, details: dict) -> int:
    """Fit the run under the memory limit: dense-weight cache (4-bit), checkpointed layers, micro-batch tokens."""
    import torch

    base = peft_model.get_base_model()
    longest = max(sum(len(rows[i]["input_ids"]) for i in step) for step in plan)
    tokens = min(settings.max_tokens or longest, longest)
    fraction = 0.0
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        in_use = torch.cuda.memory_allocated(device)
        limit = settings.memory_limit_gib * 2**30 if settings.memory_limit_gib else 0.85 * (free + in_use)
        n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        # fp32 master, its gradient, two Adam moments (the 8-bit optimizer needs less), and the loss's chunks
        reserve = n_train * 16 + 0.75 * 2**30 + 6 * tokens * base.config.hidden_size
        available = limit - in_use - reserve
        if details["4bit"] and details["fused_lora_layers"] and settings.dense_cache:
            kept, checkpointed = activation_bytes(base.config)  # first buy back the dequantization time
            floor = (base.config.num_hidden_layers * checkpointed + kept) * tokens
            used = cache_dense_weights(peft_model, available - floor, compute_dtype(base))
            details["dense_cache_gib"] = used / 2**30
            available -= used
        tokens, fraction = plan_memory(base.config, tokens, available, settings.max_length)
        details["memory_limit_gib"] = limit / 2**30
    details["checkpointed_layers"] = set_checkpointing(peft_model, _choose(settings.gradient_checkpointing, fraction),
                                                       preserve_rng=bool(settings.dropout))
    details["max_tokens"] = max_tokens = max(tokens, settings.max_length)
    return max_tokens


def _run(peft_model, rows, plan, max_tokens: int, settings: FastSettings, device, details: dict, progress: bool,
         desc: str) -> tuple[list[dict], float, int]:
    """The training loop: packed micro-batches, token-weighted loss, fp32-master optimizer step."""
    import torch
    from transformers import get_scheduler

    base = peft_model.get_base_model()
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    on_gpu = device.type == "cuda"
    kind = _choose(settings.optimizer, ("paged8bit" if details["4bit"] else "fused") if on_gpu else "plain")
    details["optimizer"] = kind
    master = MasterWeights(peft_model.parameters(), make_adamw(kind, settings.learning_rate, settings.weight_decay))
    scheduler = get_scheduler(settings.schedule, master.optimizer, num_warmup_steps=settings.warmup_steps,
                              num_training_steps=settings.steps)
    groups = [plan_step(rows, indices, max_tokens) for indices in plan]  # every micro-batch of the run, as rows
    bar = _progress_bar(progress, settings.steps, desc)
    step_losses, step_tokens, step_norms, step_lrs = [], [], [], []
    timed_start = timed_tokens = None
    peft_model.train()
    started = time.perf_counter()
    try:
        if on_gpu:  # the peak includes capturing the graphs: their memory stays reserved while they replay
            torch.cuda.reset_peak_memory_stats(device)
        static = _static_steps(decoder, head, groups, settings, device, details)
        for step, micro_rows in enumerate(groups, start=1):
            if settings.time_from_step is not None and step == settings.time_from_step:
                if on_gpu:
                    torch.cuda.synchronize(device)
                timed_start, timed_tokens = time.perf_counter(), 0
            micro = [pack_rows(group) for group in micro_rows]
            n_learned = sum(b.label_tokens for b in micro)
            if static is not None:
                static.begin_step(n_learned)
                for batch in micro:
                    static.run(batch)
                loss_sum = static.loss.clone()
            else:
                loss_sum = torch.zeros((), device=device)
                for batch in micro:
                    batch = batch.to(device)
                    loss_sum += forward_backward(decoder, head, batch.input_ids, batch.position_ids,
                                                 batch.target_index, batch.targets, 1 / n_learned,
                                                 **packed_kwargs(batch))
            step_lrs.append(scheduler.get_last_lr()[0])  # the rate this step uses, as the Trainer logs it
            step_norms.append(master.clip_and_step(settings.max_grad_norm))  # norm before clipping
            scheduler.step()
            master.zero_grad()
            step_losses.append(loss_sum / n_learned)
            step_tokens.append(sum(b.tokens for b in micro))
            if timed_tokens is not None:
                timed_tokens += step_tokens[-1]
            if step % settings.log_every == 0 or step == settings.steps:
                loss = float(step_losses[-1])  # waits for the GPU: only every log_every steps
                if not math.isfinite(loss):
                    history = _history(step_losses, step_tokens, step_norms, step_lrs)
                    first = next((row["step"] for row in history if not math.isfinite(row["loss"])), step)
                    raise NonFiniteLoss(f"the loss became {loss} at step {first}; lower the learning rate", first,
                                        [row for row in history if row["step"] < first])
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if bar is not None:
                bar.update(1)
        if on_gpu:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        if timed_start is not None:
            details["timed_seconds"] = time.perf_counter() - timed_start
            details["timed_tokens"] = timed_tokens
    finally:
        if bar is not None:
            bar.close()
        master.release()
        if details.get("graphs", {}).get("graphs"):
            details["graphs"] = {**details["graphs"], **static.summary()}
    return _history(step_losses, step_tokens, step_norms, step_lrs), seconds, sum(step_tokens)


def graphs_reason(settings: FastSettings, device, details: dict) -> str | None:
    """Why a run cannot replay CUDA graphs (None when it can): each reason would break capture or change results."""
    from .fast_ops import _flash_capable, _varlen_fn

    if device.type != "cuda":
        return "not on a CUDA GPU"
    if settings.dropout:
        return "LoRA dropout draws random masks (graphs would replay the same ones)"
    if details.get("compiled"):
        return "torch.compile'd layers"
    if _varlen_fn() is None or not _flash_capable(device) or details.get("dtype") not in ("bfloat16", "float16"):
        return "no flash varlen attention here (the per-example fallback reads lengths on the host)"
    return None


def _static_steps(decoder, head, groups, settings: FastSettings, device, details: dict):
    """The fixed-shape micro-batches of `fast_graphs`, captured as CUDA graphs where they can be; None: run eagerly."""
    import torch

    from .fast_graphs import StaticSteps, shape_of

    wanted = _choose(settings.cuda_graphs, device.type == "cuda")
    if not wanted:
        details["graphs"] = {"graphs": 0, "why": "switched off"}
        return None
    reason = graphs_reason(settings, device, details)
    if reason and device.type == "cuda":
        details["graphs"] = {"graphs": 0, "why": reason}
        return None
    shapes = [shape_of(group) for step in groups for group in step]
    static = StaticSteps(decoder, head, shapes, max_graphs=settings.max_graphs, capture=device.type == "cuda")
    try:
        static.capture_all([group for step in groups for group in step])
    except Exception as err:  # a kernel that cannot be captured: train eagerly, and say why
        torch.cuda.synchronize(device)
        details["graphs"] = {"graphs": 0, "why": f"capture failed: {type(err).__name__}: {err}"[:300]}
        return None
    details["graphs"] = static.summary()
    return static


def _history(losses, tokens, norms, lrs) -> list[dict]:
    """One row per optimizer step, {"step", "loss", "learning_rate", "grad_norm", "tokens"}: one GPU read for all."""
    import torch

    if not losses:
        return []
    losses = torch.stack([loss.float() for loss in losses]).tolist()
    norms = torch.stack([torch.as_tensor(norm).float() for norm in norms]).tolist()
    return [{"step": i + 1, "loss": loss, "learning_rate": float(lr), "grad_norm": norm, "tokens": n}
            for i, (loss, norm, lr, n) in enumerate(zip(losses, norms, lrs, tokens))]


def _progress_bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    from .runtime import widgets_enabled

    return tqdm(total=total, desc=desc, leave=True, disable=not widgets_enabled())
