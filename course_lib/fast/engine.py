"""The GPU fast path for LoRA and QLoRA: the textbook maths, without the textbook's waste. `finetune_lora` and
`finetune_qlora` call it on CUDA.

    from course_lib.fast.engine import train_fast
    from course_lib.fast.settings import FastSettings
    result = train_fast(model, tokenizer, conversations, FastSettings(steps=50))     # fast path (default)
    result = train_fast(model, tokenizer, conversations, FastSettings(recipe=True))  # plain Trainer recipe

Both paths attach the same LoRA adapters, see the same examples per optimizer step, and minimise the same
token-weighted loss, so their loss curves agree; the fast path just spends the GPU's time on real tokens:

* padding-free packing that keeps example boundaries (`fast.packing`): no padding is computed at all;
* varlen flash attention on packed rows (`fast.ops.varlen_attention`): no attention across examples; where flash
  varlen is missing (a T4, a CPU) the row's examples go through SDPA side by side, padded
  (`fast.ops.padded_attention`);
* the loss only on the tokens that are learned, with a chunked linear cross-entropy (no full fp32 logits);
* a fused LoRA layer (`fast.lora`): scale and add ride on the matmul, half the activation traffic of peft's;
* bf16 end to end (adapters too) with fp32 master weights and a fused AdamW, or paged 8-bit AdamW for QLoRA;
  fp16 (a T4) the same way, with dynamic loss scaling (`fast.ops.LossScale`, torch's GradScaler rules);
* no LoRA dropout (its random masks cost a pass over every activation and barely regularise short runs);
* Liger's Triton kernels for RMSNorm/SwiGLU/RoPE when the `liger-kernel` package is installed (GPU only);
* one example longer than checkpointing fits: layer inputs in host memory, MLP recomputed in chunks (`fast.longctx`);
* memory planned against a limit: a 4-bit base's dequantized weights cached in spare memory first, then gradient
  checkpointing on only as many layers as the rest demands; the CUDA graphs' memory pool is measured after capture
  and counted against the limit (cache dropped or more layers checkpointed, then captured again);
  `torch.compile` only when asked (it has no measured speed: tests/benchmarks/README.md);
* q/k/v and gate/up as one LoRA group each (`fast.lora.group_lora`): their shared input read once;
* adapters, gradients and fp32 masters in one flat buffer each: the optimizer step is a handful of kernels;
* each micro-batch's forward and backward replayed as a CUDA graph (`fast.graphs`), padded to one of a few sizes
  chosen from the run's plan: the host no longer sets the pace.

A 4-bit base trains here too: `finetune_qlora` takes this path on a GPU. The measured speed-ups live in
tests/benchmarks/README.md. On a CPU everything still runs (fp32 or fp16, padded SDPA attention), which is what CI
tests.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from transformers import get_scheduler

from course_lib.core.progress import progress_bar
from course_lib.core.results import NonFiniteLossError, TrainResult
from course_lib.core.runtime import gpu_has_bf16, quiet, widgets_enabled
from course_lib.data.tokenize import to_rows
from course_lib.fast.baseline import train_recipe
from course_lib.fast.graphs import StaticSteps, shape_of
from course_lib.fast.longctx import offload_layers, restore_layers
from course_lib.fast.lora import (
    attach_lora,
    cache_dense_weights,
    drop_dense_weights,
    fuse_lora,
    group_lora,
    unfuse_lora,
)
from course_lib.fast.ops import (
    LIGER_KERNELS,
    MasterWeights,
    apply_liger,
    flash_varlen_usable,
    forward_backward,
    liger_available,
    make_adamw,
    packed_kwargs,
    register_attention,
)
from course_lib.fast.packing import pack_rows, plan_step, step_batches
from course_lib.fast.settings import FastSettings
from course_lib.qlora.bnb import is_4bit, model_compute_dtype, to_compute_dtype, unpack_cpu_weights
from course_lib.qlora.memory import layers_to_uncheckpoint, packed_activation_bytes, plan_checkpointing

# ---------------------------------------------------------------------------------------------------- model


def set_checkpointing(model, how, preserve_rng: bool = True) -> float:
    """Turn gradient checkpointing on for all layers (True), a leading fraction of them (a float), or none.

    preserve_rng=False skips saving the random state for the recomputation: right when nothing random runs (no
    dropout), and needed for CUDA graphs, which cannot read the generator's state while capturing.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fraction = 1.0 if how is True else 0.0 if how is False else float(how)
    if fraction <= 0:
        if any(getattr(layer, "gradient_checkpointing", False) for layer in base.get_decoder().layers):
            base.gradient_checkpointing_disable()
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
               progress: bool = True, desc: str = "training") -> TrainResult:
    """Fine-tune `model` with LoRA on chat conversations: the fast path, or the textbook recipe if settings.recipe."""
    settings = settings or FastSettings()
    rows = to_rows(conversations, tokenizer, settings.max_length)  # bad data fails before the model is touched
    if settings.recipe:

        return train_recipe(model, tokenizer, rows, settings, progress=progress, desc=desc)
    return _train_packed(model, rows, settings, progress=progress, desc=desc)


def _choose(value, auto):
    return auto if value == "auto" else value


def unsupported_reason(model) -> str | None:
    """Why the fast path cannot train `model` (None when it can): what it would silently get wrong otherwise."""

    config = getattr(model, "config", None)
    for unsupported in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, unsupported, None):
            return (f"the fast path computes the loss from the hidden states and does not apply {unsupported}; "
                    f"use the recipe for this model")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "bias", None) is not None:
        return "the fast path expects an output layer without bias; use the recipe for this model"
    placed = {str(where) for where in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(placed) > 1:
        return (f"the model is spread over {', '.join(sorted(placed))} (its device_map), and the fast path trains on "
                f"one device; use the recipe for this model")
    device = next(model.parameters()).device
    if emulated_bf16(device, model_compute_dtype(model)):
        return ("the model computes in bf16, which this GPU only emulates (compute capability below 8.0, such as a "
                "T4): load it in float16 for the fast path's fp16 with loss scaling (load_causal_lm and load_4bit do "
                "on such a GPU); use the recipe for this model")
    return None


def emulated_bf16(device, dtype) -> bool:
    """True for bf16 on a CUDA GPU without bf16 arithmetic of its own (a T4): slow, and no kernel here expects it."""
    return device.type == "cuda" and dtype == torch.bfloat16 and not gpu_has_bf16(device)


def _train_packed(model, rows: list[dict], settings: FastSettings, progress: bool, desc: str) -> TrainResult:

    quiet()
    device = next(model.parameters()).device
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(reason.replace("use the recipe", "use FastSettings(recipe=True)"))
    four_bit = is_4bit(model)
    if four_bit:
        unpack_cpu_weights(model)  # the same bitsandbytes CPU packing that finetune_qlora undoes
        to_compute_dtype(model)  # prepare_model_for_kbit_training's fp32 embeddings and norms back to the 4-bit dtype
    peft_model = attach_lora(model, settings)
    base = peft_model.get_base_model()
    dtype = model_compute_dtype(base)
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != dtype:  # adapters compute in the model's dtype (bf16 on a GPU)
            param.data = param.data.to(dtype)
    details: dict = {"dtype": str(dtype).replace("torch.", ""), "4bit": four_bit}
    previous_attention = base.config._attn_implementation
    undo: list = []  # what _speed_up changed beyond the model's own modules (Liger's patches)
    try:
        _speed_up(peft_model, settings, device, details, undo)
        plan = list(step_batches(len(rows), settings.batch_size, settings.steps, settings.seed, settings.shuffle))
        max_tokens = _plan_memory(peft_model, rows, plan, settings, device, details)
        history, seconds, tokens = _run(peft_model, rows, plan, max_tokens, settings, device, details, progress, desc)
    finally:  # the model leaves as it came, plus trained adapters: peft's forward, its own attention, no caches
        for restore in undo:
            restore()
        unfuse_lora(peft_model)
        if details.get("offloaded_layers"):
            restore_layers(peft_model)
        base.set_attn_implementation(previous_attention)
        if details.get("checkpointed_layers"):
            base.gradient_checkpointing_disable()
    if device.type == "cuda":
        details["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        details["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    peft_model.eval()
    return TrainResult(model=peft_model, history=history, seconds=seconds, global_step=len(history), path="fast",
                       details=details, tokens=tokens)


def _speed_up(peft_model, settings: FastSettings, device, details: dict, undo: list) -> None:
    """Fused LoRA layers, Liger kernels, packed attention and (if asked) compiled layers; `undo` gets the way back."""
    base = peft_model.get_base_model()
    on_gpu = device.type == "cuda"
    details["fused_lora_layers"] = fuse_lora(peft_model) if settings.fused_lora else 0
    details["lora_groups"] = group_lora(peft_model) if settings.fused_lora and settings.grouped_lora else 0
    compiling = bool(_choose(settings.compile, False)) and on_gpu
    # Liger's autograd functions broke torch.compile's tracer (torch 2.11): compiled layers use plain PyTorch ops
    llama = getattr(base.config, "model_type", None) == "llama"  # Liger's patch here is the Llama one
    details["liger"] = []
    if _choose(settings.liger, on_gpu) and llama and not compiling and liger_available(device):
        try:
            undo.append(apply_liger(base))
            details["liger"] = LIGER_KERNELS
        except Exception as err:  # a liger-kernel release this code does not know: PyTorch's own kernels then
            details["liger_why"] = f"{type(err).__name__}: {err}"[:300]
    base.set_attn_implementation(register_attention(flash=settings.flash_varlen))
    flash = settings.flash_varlen and flash_varlen_usable(device, model_compute_dtype(base))
    details["attention"] = "flash varlen" if flash else "padded SDPA"
    if compiling:
        for layer in base.get_decoder().layers:
            layer.compile(dynamic=True)
        details["compiled"] = True


def _plan_memory(peft_model, rows, plan, settings: FastSettings, device, details: dict) -> int:
    """Fit the run under the memory limit: dense-weight cache (4-bit), checkpointed layers, micro-batch tokens."""

    base = peft_model.get_base_model()
    longest = max(sum(len(rows[i]["input_ids"]) for i in step) for step in plan)
    tokens = min(settings.max_tokens or longest, longest)
    fraction = 0.0
    if device.type == "cuda":
        torch.cuda.empty_cache()  # blocks cached from earlier work (a previous run's graphs) count as free, not used
        free, _ = torch.cuda.mem_get_info(device)
        in_use = torch.cuda.memory_allocated(device)
        limit = settings.memory_limit_gib * 2**30 if settings.memory_limit_gib else 0.85 * (free + in_use)
        n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        # fp32 master, its gradient, two Adam moments (the 8-bit optimizer needs less), and the loss's chunks
        reserve = n_train * 16 + 0.75 * 2**30 + 6 * tokens * base.config.hidden_size
        available = limit - in_use - reserve
        kept, checkpointed = packed_activation_bytes(base.config)
        if details["4bit"] and details["fused_lora_layers"] and settings.dense_cache:
            # first buy back the dequantization time
            floor = (base.config.num_hidden_layers * checkpointed + kept) * tokens
            used = cache_dense_weights(peft_model, available - floor, model_compute_dtype(base))
            details["dense_cache_gib"] = used / 2**30
            available -= used
        example = max(len(row["input_ids"]) for row in rows)
        too_long = (base.config.num_hidden_layers * checkpointed + kept) * example > available
        offload = _choose(settings.offload, too_long)
        if not offload:
            tokens, fraction = plan_checkpointing(base.config, tokens, available, settings.max_length)
        details["memory_limit_gib"] = limit / 2**30
    else:
        offload = settings.offload is True
    if offload:  # one example longer than checkpointing fits: inputs to host memory, MLP in chunks
        details["offloaded_layers"] = offload_layers(peft_model, settings.mlp_chunk_tokens)
        fraction = 0.0
    details["checkpointed_layers"] = set_checkpointing(peft_model, _choose(settings.gradient_checkpointing, fraction),
                                                       preserve_rng=bool(settings.dropout))
    details["max_tokens"] = max_tokens = max(tokens, settings.max_length)
    return max_tokens


def _run(peft_model, rows, plan, max_tokens: int, settings: FastSettings, device, details: dict, progress: bool,
         desc: str) -> tuple[list[dict], float, int]:
    """The training loop: packed micro-batches, token-weighted loss, fp32-master optimizer step."""

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
        static = _static_steps(peft_model, groups, settings, device, details)
        if progress and details["graphs"].get("why", "").startswith("capture failed"):  # slower, but it trains: say so
            print(f"{desc}: no CUDA graphs, training without them ({details['graphs']['why']})")
        for step, micro_rows in enumerate(groups, start=1):
            if settings.time_from_step is not None and step == settings.time_from_step:
                if on_gpu:
                    torch.cuda.synchronize(device)
                timed_start, timed_tokens = time.perf_counter(), 0
            micro = [pack_rows(group) for group in micro_rows]
            n_learned = sum(b.label_tokens for b in micro)
            backward_scale = master.backward_scale(n_learned)
            if static is not None:
                static.begin_step(backward_scale)
                for batch in micro:
                    static.run(batch)
                loss_sum = static.loss.clone()
            else:
                loss_sum = torch.zeros((), device=device)
                for batch in micro:
                    batch = batch.to(device)
                    loss_sum += forward_backward(decoder, head, batch.input_ids, batch.position_ids,
                                                 batch.target_index, batch.targets, backward_scale,
                                                 **packed_kwargs(batch))
            step_lrs.append(scheduler.get_last_lr()[0])  # the rate this step uses, as the Trainer logs it
            step_norms.append(master.clip_and_step(settings.max_grad_norm))  # norm before clipping
            if master.stepped:  # as the Trainer: a step skipped for fp16 overflow leaves the schedule where it was
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
                    raise NonFiniteLossError(f"the loss became {loss} at step {first}; lower the learning rate", first,
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
        if master.loss_scale is not None:  # fp16: how often the loss scale had to back off
            details["loss_scale"] = {"skipped_steps": master.loss_scale.skipped,
                                     "final_scale": float(master.loss_scale.scale)}
        if details.get("graphs", {}).get("graphs"):
            details["graphs"] = {**details["graphs"], **static.summary()}
    return _history(step_losses, step_tokens, step_norms, step_lrs), seconds, sum(step_tokens)


def graphs_reason(settings: FastSettings, device, details: dict) -> str | None:
    """Why a run cannot replay CUDA graphs (None when it can): each reason would break capture or change results."""

    if device.type != "cuda":
        return "not on a CUDA GPU"
    if settings.dropout:
        return "LoRA dropout draws random masks (graphs would replay the same ones)"
    if details.get("compiled"):
        return "torch.compile'd layers"
    if details.get("offloaded_layers"):
        return "layer inputs offloaded to host memory (copies a graph would replay into freed buffers)"
    return None


def _static_steps(peft_model, groups, settings: FastSettings, device, details: dict):
    """The fixed-shape micro-batches of `fast.graphs`, captured as CUDA graphs where they can be; None: run eagerly."""

    wanted = _choose(settings.cuda_graphs, device.type == "cuda")
    if not wanted:
        details["graphs"] = {"graphs": 0, "why": "switched off"}
        return None
    reason = graphs_reason(settings, device, details)
    if reason and device.type == "cuda":
        details["graphs"] = {"graphs": 0, "why": reason}
        return None
    base = peft_model.get_base_model()
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    shapes = [shape_of(group) for step in groups for group in step]
    static = StaticSteps(decoder, head, shapes, max_graphs=settings.max_graphs, capture=device.type == "cuda")
    samples = [group for step in groups for group in step]
    try:
        static.capture_all(samples)
        if device.type == "cuda" and details.get("memory_limit_gib"):
            _fit_graphs_under_limit(static, peft_model, samples, device, details)
    except Exception as err:  # a kernel that cannot be captured: train eagerly, and say why
        torch.cuda.synchronize(device)
        details["graphs"] = {"graphs": 0, "why": f"capture failed: {type(err).__name__}: {err}"[:300]}
        return None
    details["graphs"] = static.summary()
    return static


STEP_MARGIN_GIB = 0.25  # what the optimizer step adds after capture (8-bit Adam states, clipping's temporaries)


def _fit_graphs_under_limit(static: StaticSteps, peft_model, samples, device, details: dict) -> None:
    """Count the graphs' memory pool against the limit: the plan estimates activations, the capture measures them.

    Where the peak of reserved memory (warm-up and capture included) overshoots the limit, give memory back and
    capture again: first a 4-bit base's dense-weight cache, then activations (a quarter more of the layers
    checkpointed each time). A run with nothing left to give keeps its graphs and says by how much it is over.
    Where it lands under the limit by more than a layer's activations, it checkpoints fewer layers (once).
    """
    limit = details["memory_limit_gib"] * 2**30
    for _ in range(4):
        over = torch.cuda.max_memory_reserved(device) + STEP_MARGIN_GIB * 2**30 - limit
        if over <= 0:
            details.pop("over_limit_gib", None)
            _use_headroom(static, peft_model, samples, device, details, limit)
            return
        details["over_limit_gib"] = over / 2**30
        checkpointed = details.get("checkpointed_layers", 0.0)
        if not details.get("dense_cache_gib") and checkpointed >= 1.0:
            return
        static.release()
        if details.get("dense_cache_gib"):
            freed = drop_dense_weights(peft_model, over)
            details["dense_cache_gib"] = max(0.0, details["dense_cache_gib"] - freed / 2**30)
        else:
            details["checkpointed_layers"] = set_checkpointing(peft_model, min(1.0, checkpointed + 0.25),
                                                               preserve_rng=False)
        _capture_again(static, samples, device, details)


def _capture_again(static: StaticSteps, samples, device, details: dict) -> None:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    static.capture_all(samples)
    details["recaptured"] = details.get("recaptured", 0) + 1


def _use_headroom(static: StaticSteps, peft_model, samples, device, details: dict, limit: float) -> None:
    """Checkpoint fewer layers where the measured peak left room for them; back to the plan if that overshoots.

    The plan prices activations with a margin and the capture measures them: on the 1.7B QLoRA shape under 7.5 GiB
    the plan checkpointed 23 of 24 layers and the measured peak sat 2.3 GiB under the limit.
    """
    base = peft_model.get_base_model()  # (offloaded runs never get here: they replay no graphs)
    layers = base.config.num_hidden_layers
    before = details.get("checkpointed_layers", 0.0)
    spare = limit - torch.cuda.max_memory_reserved(device) - STEP_MARGIN_GIB * 2**30
    give = layers_to_uncheckpoint(base.config, spare, details["max_tokens"], round(before * layers))
    if not give:
        return
    static.release()
    details["checkpointed_layers"] = set_checkpointing(peft_model, before - give / layers, preserve_rng=False)
    _capture_again(static, samples, device, details)
    if torch.cuda.max_memory_reserved(device) + STEP_MARGIN_GIB * 2**30 > limit:  # the margin was not enough
        static.release()
        details["checkpointed_layers"] = set_checkpointing(peft_model, before, preserve_rng=False)
        _capture_again(static, samples, device, details)
    else:
        details["uncheckpointed_layers"] = give


def _history(losses, tokens, norms, lrs) -> list[dict]:
    """One row per optimizer step, {"step", "loss", "learning_rate", "grad_norm", "tokens"}: one GPU read for all."""

    if not losses:
        return []
    losses = torch.stack([loss.float() for loss in losses]).tolist()
    norms = torch.stack([torch.as_tensor(norm).float() for norm in norms]).tolist()
    return [{"step": i + 1, "loss": loss, "learning_rate": float(lr), "grad_norm": norm, "tokens": n}
            for i, (loss, norm, lr, n) in enumerate(zip(losses, norms, lrs, tokens))]


def _progress_bar(progress: bool, total: int, desc: str):
    if not progress:
        return None

    return progress_bar(total=total, desc=desc, leave=True, disable=not widgets_enabled())
