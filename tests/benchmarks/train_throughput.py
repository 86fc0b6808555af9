"""Benchmark: the textbook LoRA/QLoRA recipe against course_lib's fast path, same model shape, data and seed.

    python tests/benchmarks/train_throughput.py               # GPU: LoRA 1.7B, QLoRA 1.7B, LoRA 135M
    python tests/benchmarks/train_throughput.py --cpu         # tiny shapes, seconds on a CPU (CI checks it runs)
    python tests/benchmarks/train_throughput.py --curves      # also: loss curves of both paths on the course task
    python tests/benchmarks/train_throughput.py --switch --cpu  # finetune_lora on this CPU: default vs Trainer

Models are random-initialised with the published SmolLM2-1.7B / SmolLM2-135M shapes (LlamaConfig built here, no
download). Data: random token ids with instruction-style lengths (lognormal, median 180, clipped to 16-512), every
token learned (the fast path gains nothing from prompt masking here). Throughput counts real tokens only: the
recipe's padding does not count. MFU counts the model FLOPs a LoRA step needs (frozen weights: forward and input
gradient; adapters: forward, input and weight gradients; causal attention over each example's own length), not
recomputation, over the GPU's dense bf16 peak.

The recipe: Hugging Face Trainer + peft, padding="max_length" 512, batch 8 x accumulation 4, LoRA r16 alpha 32
dropout 0.05 on all linear layers, bf16, plain AdamW (QLoRA: NF4 + double quantization, prepare_model_for_kbit_training).
The fast path: course_lib.fast.engine.train_fast with its defaults and the same 32 examples per optimizer step.
Each GPU run is a fresh subprocess, so peak memory and kernel patches of one run never leak into the next.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SHAPES = {  # published SmolLM2 configurations (Llama architecture, tied embeddings)
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=49152, rope_theta=130000.0, max_position_embeddings=8192),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, rope_theta=10000.0, max_position_embeddings=512),
}
METHODS = {  # name: (shape, 4-bit base)
    "LoRA 1.7B": ("1.7b", False),
    "QLoRA 1.7B": ("1.7b", True),
    "LoRA 135M": ("135m", False),
}
T4_METHODS = {"LoRA 1.7B": ("1.7b", False), "LoRA 360M": ("360m", False)}  # --t4: fp16, no flash varlen, 15 GiB
T4_GIB = 15.0  # a T4's memory as Colab gives it
CPU_METHODS = {"LoRA tiny": ("tiny", False), "QLoRA tiny": ("tiny", True)}
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


# ---------------------------------------------------------------------------------------------------- data and model


def lengths(n: int, seed: int, median: float = 180, sigma: float = 0.6, low: int = 16, high: int = 512) -> list[int]:
    """Instruction-style example lengths: lognormal around `median`, clipped to [low, high]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), low, high).astype(int).tolist()


def synthetic_rows(n: int, vocab: int, seed: int, **length_kw) -> list[dict]:
    """Random-token training rows with instruction-style lengths; every token is learned."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    rows = []
    for length in lengths(n, seed, **length_kw):
        ids = rng.integers(0, vocab, length).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": list(ids)})
    return rows


def llama_config(shape: str):
    """A LlamaConfig with SmolLM2's published sizes."""
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape], rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=2,
                       bos_token_id=1, eos_token_id=2)


def build_model(shape: str, four_bit: bool, device: str, cache: Path, fp16: bool = False):
    """A seeded random model of `shape` in bf16 on `device` (fp32 on CPU, fp16 if asked); NF4 double-quantized when
    four_bit."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM

    dtype = torch.float16 if fp16 else torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(shape)).to(dtype)
    if not four_bit:
        return model
    folder = cache / f"random-{shape}"
    if not (folder / "config.json").exists():  # both paths load the same saved weights through bitsandbytes
        model.save_pretrained(folder)
    del model
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype,
                                                device_map={"": device})


class _Tok:
    """Just enough tokenizer for the recipe's padding collator on random-token data."""

    pad_token_id = 2
    padding_side = "right"

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt", **_):
        import torch

        width = max_length if padding == "max_length" else max(len(f["input_ids"]) for f in features)
        ids = [list(f["input_ids"]) + [self.pad_token_id] * (width - len(f["input_ids"])) for f in features]
        mask = [list(f["attention_mask"]) + [0] * (width - len(f["attention_mask"])) for f in features]
        out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        if "labels" in features[0]:
            out["labels"] = torch.tensor([list(f["labels"]) for f in features])
        return out


# ---------------------------------------------------------------------------------------------------- FLOPs


def flops_per_token(shape: str, r: int, mean_context: float) -> float:
    """Model FLOPs per trained token of a LoRA step on all linear layers (no recomputation counted)."""
    c = SHAPES[shape]
    h, i, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    linears = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    frozen = sum(a * b for a, b in linears) * layers + v * h  # + the (tied, frozen) output layer
    lora = sum(r * (a + b) for a, b in linears) * layers
    attention = layers * 3 * 4 * q * mean_context  # QK^T and AV forward, backward twice that
    return 4 * frozen + 6 * lora + attention


def mean_context(lens: list[int]) -> float:
    """Average number of keys a token attends to under causal attention within its own example."""
    return sum(n * (n + 1) / 2 for n in lens) / sum(lens)


def peak_flops() -> float | None:
    """The GPU's dense bf16 peak, from its name (None where unknown)."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    if "H100" in name and "PCIe" in name:
        return 756e12
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


# ---------------------------------------------------------------------------------------------------- one run


def run_one(method: str, path: str, args, overrides: dict | None = None) -> dict:
    """Train one method on one path and return its measurements."""
    import torch

    from course_lib.fast.engine import train_fast
    from course_lib.fast.settings import FastSettings

    shape, four_bit = {**METHODS, **T4_METHODS, **CPU_METHODS}[method]
    device = "cpu" if args.cpu else "cuda"
    cache = Path(args.cache)
    if args.t4:  # a T4 stand-in: its memory is a hard cap for both paths (the allocator refuses past it)
        torch.cuda.set_per_process_memory_fraction(T4_GIB * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    model = build_model(shape, four_bit, device, cache, fp16=args.t4)
    per_step = 32 if not args.cpu else 8
    steps = args.steps or ((6 if args.cpu else 10) if path == "recipe" else (6 if args.cpu else 30))
    warm = 2 if args.cpu else (4 if path == "recipe" else 8)
    rows = synthetic_rows(per_step * steps, SHAPES[shape]["vocab_size"], seed=args.seed,
                          **({"median": 40, "high": 128} if args.cpu else {}))
    common = dict(steps=steps, batch_size=per_step, learning_rate=2e-4, warmup_steps=0, seed=args.seed,
                  time_from_step=warm, shuffle=False)
    if path == "recipe":
        settings = FastSettings.textbook(**common, micro_batch_size=args.recipe_micro_batch or per_step // 4,
                                         max_length=128 if args.cpu else 512)
    else:
        # QLoRA is for small GPUs: hold the fast path to the issue's 8 GiB (7.5 planned, the rest is margin)
        limit = {"memory_limit_gib": 7.5} if four_bit and not args.cpu else {}
        if args.t4:  # no flash varlen on a T4: the padded SDPA attention
            limit = {"memory_limit_gib": T4_GIB - 0.5, "flash_varlen": False}
        settings = FastSettings(**common, max_length=128 if args.cpu else 512, **{**limit, **(overrides or {})})
    result = train_fast(model, _Tok(), rows, settings, progress=False)
    tps = result.tokens_per_second
    flops = flops_per_token(shape, settings.r, mean_context([len(r["input_ids"]) for r in rows]))
    peak = peak_flops()
    if torch.cuda.is_available():  # what the allocator held at most, cached blocks and CUDA-graph pools included
        result.details["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    out = {"method": method, "path": path, "tokens_per_s": tps, "peak_gib": result.details.get("peak_gib"),
           "peak_reserved_gib": result.details.get("peak_reserved_gib"),
           "mfu": tps * flops / peak if peak else None, "final_loss": result.losses[-1] if result.losses else None,
           "steps": steps, "timed_tokens": result.details.get("timed_tokens"),
           "details": {k: v for k, v in result.details.items() if k != "all_losses"}, "overrides": overrides or {}}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def run_isolated(method: str, path: str, args, overrides: dict | None) -> dict:
    """`run_one` in a fresh Python process (clean GPU memory statistics, no kernel patches left behind)."""
    command = [sys.executable, __file__, "--worker", json.dumps([method, path, overrides or {}]),
               "--cache", args.cache, "--seed", str(args.seed)] + (["--steps", str(args.steps)] if args.steps else []) \
        + (["--t4"] if args.t4 else []) + ["--long-from", str(args.long_from), "--long-to", str(args.long_to)] \
        + (["--recipe-micro-batch", str(args.recipe_micro_batch)] if args.recipe_micro_batch else [])
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = time.perf_counter() - started
            return result
    tail = (proc.stdout + proc.stderr)[-3000:]
    return {"method": method, "path": path, "error": tail, "overrides": overrides or {}}


# ---------------------------------------------------------------------------------------------------- long contexts


LONG_LENGTHS = [2048 * 2**k for k in range(8)]  # 2k to 256k tokens


def long_context(method: str, path: str, args) -> dict:
    """The longest single example that trains (2 optimizer steps, batch 1) under a 15 GiB cap, doubling the length.

    Each length gets a fresh model; the first length that runs out of memory ends the search. The recipe is the
    textbook one at batch 1 (QLoRA: prepare_model_for_kbit_training, so checkpointing on); the fast path plans its
    own checkpointing under a 14.5 GiB limit.
    """
    import gc

    import torch

    from course_lib.fast.engine import train_fast
    from course_lib.fast.settings import FastSettings

    shape, four_bit = METHODS[method]
    torch.cuda.set_per_process_memory_fraction(T4_GIB * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    vocab = SHAPES[shape]["vocab_size"]
    tried = []
    for length in [n for n in LONG_LENGTHS if args.long_from <= n <= args.long_to]:
        model = build_model(shape, four_bit, "cuda", Path(args.cache))
        ids = torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(length)).tolist()
        rows = [{"input_ids": ids, "attention_mask": [1] * length, "labels": ids}]
        common = dict(steps=2, batch_size=1, learning_rate=2e-4, warmup_steps=0, max_length=length, shuffle=False)
        settings = FastSettings.textbook(**common, micro_batch_size=1) if path == "recipe" else \
            FastSettings(**common, memory_limit_gib=T4_GIB - 0.5)
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            result = train_fast(model, _Tok(), rows, settings, progress=False)
            ok, error = math.isfinite(result.losses[-1]), None
            details = {k: v for k, v in result.details.items()
                       if k in ("checkpointed_layers", "graphs", "max_tokens", "offloaded_layers")}
        except torch.OutOfMemoryError as err:
            ok, error, details = False, str(err).splitlines()[0][:200], {}
        result = None
        tried.append({"length": length, "ok": ok, "seconds": time.perf_counter() - started, "error": error,
                      "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "details": details})
        print(json.dumps(tried[-1]), file=sys.stderr, flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        if not ok:
            break
    longest = max([t["length"] for t in tried if t["ok"]], default=0)
    return {"method": method, "path": path, "longest": longest, "tried": tried}


# ---------------------------------------------------------------------------------------------------- loss curves


def loss_curves(args) -> dict:
    """Both paths on the default model's real task (JSON extraction), two seeds each: loss per step and held-out loss."""
    import torch

    from course_lib.core import tasks
    from course_lib.fast.engine import train_fast
    from course_lib.fast.settings import FastSettings

    steps, per_step = (args.curve_steps, 32) if not args.cpu else (2, 4)
    splits = tasks.make_splits(n_train=steps * per_step, n_val=64 if not args.cpu else 4, n_test=0, seed=0)
    train = [tasks.to_messages(e) for e in splits["train"]]
    val = [tasks.to_messages(e) for e in splits["validation"]]
    runs = {}
    for path in ("recipe", "fast"):
        for seed in (0, 1):
            model, tokenizer = load_real_model(args)
            common = dict(steps=steps, batch_size=per_step, learning_rate=2e-4, warmup_steps=0, seed=seed)
            settings = (FastSettings.textbook(**common, micro_batch_size=per_step // 4) if path == "recipe"
                        else FastSettings(**common, max_length=512))
            result = train_fast(model, tokenizer, train, settings, progress=False)
            runs[f"{path} seed {seed}"] = {"losses": result.losses,
                                           "val_loss": held_out_loss(result.model, tokenizer, val),
                                           "seconds": result.seconds}
            del model, result
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return runs


def load_real_model(args):
    """The course's default model (SmolLM2-135M-Instruct): from --real-model (a folder or a .gguf file) or course_lib."""
    import torch
    from transformers import AutoModelForCausalLM

    from course_lib.core.models import load_causal_lm, load_tokenizer

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if not args.real_model:
        model, tokenizer = load_causal_lm(dtype=dtype, device=device)
        return model, tokenizer
    source = Path(args.real_model)
    if source.suffix == ".gguf":  # dequantize once, as course_lib does for its cache, then load the safetensors copy
        from course_lib.core.models import _convert_gguf

        converted = Path(args.cache) / "real-model"
        if not (converted / "config.json").exists():
            _convert_gguf(source.parent, source.name, converted)
        source = converted
    tokenizer = load_tokenizer(str(args.real_tokenizer or source))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def held_out_loss(model, tokenizer, conversations, batch: int = 16) -> float:
    """Token-weighted loss on held-out chats through the plain transformers forward (padded batches)."""
    import torch

    from course_lib.data.tokenize import pad_batch, tokenize_chat

    rows = [tokenize_chat(c, tokenizer) for c in conversations]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            b = {k: v.to(device) for k, v in pad_batch(rows[start:start + batch], tokenizer.pad_token_id).items()}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            labels = b["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="sum",
                                                       ignore_index=-100)
            total += float(losses)
            count += int((labels != -100).sum())
    return total / count


def plot_curves(runs: dict, path: Path) -> None:
    """Loss per step of every run, one colour per path, with the held-out losses in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    colours = {"recipe": "#999999", "fast": "#2a7ab9"}
    for name, run in runs.items():
        style = "-" if name.endswith("0") else "--"
        ax.plot(range(1, len(run["losses"]) + 1), run["losses"], style, color=colours[name.split()[0]],
                label=f"{name} (held-out {run['val_loss']:.3f})")
    ax.set(xlabel="optimizer step (32 examples)", ylabel="training loss", yscale="log",
           title="SmolLM2-135M-Instruct, JSON extraction task: recipe vs fast path")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------------- profile


KERNEL_KINDS = (  # (kind, substrings of a kernel's name), first match wins
    ("attention", ("flash", "fmha", "attention")),
    ("matmul", ("gemm", "nvjet", "sm90_xmma", "cutlass", "cublas", "splitkreduce")),
    ("norm, RoPE, SwiGLU (Liger)", ("rms_norm", "rope", "swiglu", "silu")),
    ("loss", ("cross_entropy", "log_softmax", "logsumexp")),
    ("optimizer, clipping", ("multi_tensor", "foreach", "adam", "norm_kernel", "amp_")),
    ("copy, fill", ("copy", "fill", "memset", "memcpy", "cat", "index")),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized")),
)


def kernel_kind(name: str) -> str:
    """A coarse kind for a CUDA kernel's name, for the profile's where-the-time-goes line."""
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def profile_fast(method: str, args, overrides: dict | None = None, steps: int = 6) -> None:
    """torch.profiler over `steps` fast-path steps (after as many warm-up steps): CPU wall vs GPU busy time per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from course_lib.fast.engine import train_fast
    from course_lib.fast.settings import FastSettings

    shape, four_bit = METHODS[method]
    model = build_model(shape, four_bit, "cuda", Path(args.cache))
    rows = synthetic_rows(32 * steps, SHAPES[shape]["vocab_size"], seed=args.seed)
    limit = {"memory_limit_gib": 7.5} if four_bit else {}
    settings = FastSettings(steps=steps, batch_size=32, learning_rate=2e-4, warmup_steps=0, shuffle=False,
                            max_length=512, **{**limit, **(overrides or {})})
    train_fast(model, _Tok(), rows, settings, progress=False)  # warm-up: kernels compiled, allocator primed
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=args.profile_rows > 12) as prof:
        result = train_fast(model, _Tok(), rows, settings, progress=False)
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e3  # ms
    print(f"PROFILE {method} {overrides or {}}: wall {1e3 * result.seconds / steps:.1f} ms/step, GPU busy "
          f"{busy / steps:.1f} ms/step, {len(kernels) / steps:.0f} kernels/step, "
          f"{result.tokens / result.seconds:,.0f} tokens/s (setup included)", flush=True)
    by_kind: dict[str, float] = {}
    for kernel in kernels:
        kind = kernel_kind(kernel.name)
        by_kind[kind] = by_kind.get(kind, 0.0) + kernel.time_range.elapsed_us() / 1e3 / steps
    print("GPU time by kind of kernel, ms/step: " + json.dumps({k: round(v, 2) for k, v in
                                                                sorted(by_kind.items(), key=lambda kv: -kv[1])}))
    print(events.table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))
    print(events.table(sort_by="self_device_time_total", row_limit=args.profile_rows, max_name_column_width=60))
    if args.profile_rows > 12:  # which shapes the time goes to
        by_shape = prof.key_averages(group_by_input_shape=True)
        print(by_shape.table(sort_by="self_device_time_total", row_limit=args.profile_rows, max_name_column_width=40,
                             max_shapes_column_width=90))


# ---------------------------------------------------------------------------------------------------- finetune_lora


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 weights can pay off."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def trained_tokens(conversations, tokenizer, settings) -> int:
    """Real tokens of the examples the fast path draws for `settings` (the Trainer draws as many examples in its own
    seeded order, and counts no tokens: for its row this is the expected count, not an exact one)."""
    from course_lib.data.tokenize import to_rows
    from course_lib.fast.packing import step_batches

    rows = to_rows(conversations, tokenizer, settings.max_length)
    plan = step_batches(len(rows), settings.batch_size, settings.steps, settings.seed, shuffle=True)
    return sum(len(rows[i]["input_ids"]) for step in plan for i in step)


def switch_check(args) -> list[dict]:
    """`train.finetune_lora` on this device with the notebooks' settings, default (auto) and fast=False.

    The course's default model on the course task, as notebook 00 ran it in the full profile (60 steps; now 40): which
    path ran, wall time, real tokens per second, last training loss, held-out loss and exact match on test examples
    before and after. With `--cpu` it runs on the CPU: the default and the Trainer in float32, and in bfloat16 where
    the CPU has bf16 instructions.
    """
    import dataclasses

    import torch

    from course_lib.core import tasks
    from course_lib.core.models import load_causal_lm
    from course_lib.evaluation.generate import chat_generate
    from course_lib.evaluation.metrics import exact_match_report
    from course_lib.training.finetune import LoraSettings, finetune_lora

    splits = tasks.make_splits(n_train=400, n_val=64, n_test=args.switch_test, seed=0)
    train = [tasks.to_messages(e) for e in splits["train"]]
    val = [tasks.to_messages(e) for e in splits["validation"]]
    prompts = [tasks.prompt_messages(e) for e in splits["test"]]
    references = [e.answer for e in splits["test"]]
    settings = LoraSettings(steps=args.switch_steps, batch_size=8, seed=0)
    if args.cpu:  # None shows what the default picks there
        combos = [(torch.float32, None), (torch.float32, False)]
        if cpu_has_bf16():
            combos += [(torch.bfloat16, None), (torch.bfloat16, False)]
    else:
        combos = [(None, None), (None, False), (torch.float32, None), (torch.float32, False)]
    runs = []
    for dtype, fast in combos:
        model, tokenizer = load_causal_lm(dtype=dtype, device="cpu" if args.cpu else None)
        model_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        before = None
        if not runs:
            before = exact_match_report(chat_generate(model, tokenizer, prompts, max_new_tokens=64, progress=False),
                                        references).accuracy
        torch.manual_seed(0)
        result = finetune_lora(model, tokenizer, train, dataclasses.replace(settings, fast=fast), progress=False)
        after = exact_match_report(chat_generate(result.model, tokenizer, prompts, max_new_tokens=64, progress=False),
                                   references).accuracy
        row = {"dtype": model_dtype, "fast": fast, "path": result.path, "why": result.details.get("why"),
               "seconds": result.seconds, "tokens_per_s": trained_tokens(train, tokenizer, settings) / result.seconds,
               "losses": result.losses, "first_loss": result.losses[0], "last_loss": result.losses[-1],
               "mean_last10": sum(result.losses[-10:]) / len(result.losses[-10:]), "val_loss": held_out_loss(result.model, tokenizer, val),
               "exact_before": before, "exact_after": after, "steps": result.global_step,
               "history_keys": sorted(result.history[0])}
        print("SWITCH " + json.dumps(row), flush=True)
        runs.append(row)
        del model, result
        torch.cuda.empty_cache()
    return runs


# ---------------------------------------------------------------------------------------------------- self-check


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def self_check(device: str) -> list[tuple[str, float, float]]:
    """The fast path's pieces against plain references on this device: (what, relative error, tolerance)."""
    import torch

    from course_lib.fast.ops import linear_cross_entropy_sum, packed_kwargs, register_attention, varlen_attention
    from course_lib.fast.packing import pack_rows

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tol = 2e-2 if device == "cuda" else 1e-5
    checks = []
    torch.manual_seed(0)
    lens = [37, 180, 5, 300, 64, 1]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=device)
    variants = [("varlen", dtype, True)] + ([("padded SDPA, fp16", torch.float16, False)] if device == "cuda" else [])
    for label, dt, flash in variants:  # flash varlen where it runs; the T4 path (padded SDPA in fp16) as well
        register_attention(flash=flash)
        for heads, kv_heads in ((32, 32), (9, 3)):
            q = torch.randn(1, heads, sum(lens), 64, device=device, dtype=dt, requires_grad=True)
            k = torch.randn(1, kv_heads, sum(lens), 64, device=device, dtype=dt, requires_grad=True)
            v = torch.randn(1, kv_heads, sum(lens), 64, device=device, dtype=dt, requires_grad=True)
            out, _ = varlen_attention(None, q, k, v, None, scaling=0.125, cu_seq_lens_q=cu, max_length_q=max(lens))
            grad = torch.randn_like(out)
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
            ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
            ref, _ = varlen_attention(None, *ref_in, None, scaling=0.125, cu_seq_lens_q=cu.cpu(),
                                      max_length_q=max(lens))
            rdq, rdk, rdv = torch.autograd.grad(ref, ref_in, grad.double())
            for name, got, want in (("out", out, ref), ("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv)):
                checks.append((f"{label} attention {heads}/{kv_heads} heads: {name}", rel_err(got, want), tol))
    register_attention(flash=True)
    hidden = torch.randn(700, 576, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(49152, 576, device=device, dtype=dtype) * 0.05
    targets = torch.randint(0, 49152, (700,), device=device)
    got = linear_cross_entropy_sum(hidden, weight, targets, chunk=256)
    (g_got,) = torch.autograd.grad(got, hidden)
    h64 = hidden.detach().double().requires_grad_(True)
    want = torch.nn.functional.cross_entropy(h64 @ weight.double().t(), targets, reduction="sum")
    (g_want,) = torch.autograd.grad(want, h64)
    checks += [("linear cross-entropy: loss", rel_err(got, want), tol), ("linear cross-entropy: grad", rel_err(g_got, g_want), tol)]

    model = build_model("135m" if device == "cuda" else "tiny", False, device, Path("/nonexistent"))
    model.config._attn_implementation = "sdpa"
    rows = synthetic_rows(6, model.config.vocab_size, seed=3, **({"median": 60, "high": 128} if device == "cpu" else {}))
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]], device=device)).logits[0] for r in rows])
        model.set_attn_implementation(register_attention())
        batch = pack_rows(rows).to(device)
        hidden = model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, **packed_kwargs(batch))
        packed = model.get_output_embeddings()(hidden.last_hidden_state[0])
    checks.append(("packed vs per-example logits (135M shape)", rel_err(packed.float(), alone.float()), tol))
    return checks


# ---------------------------------------------------------------------------------------------------- table


def table(results: list[dict]) -> str:
    """One row per method: recipe and fast path side by side, and the fast path's speed-up."""
    def fmt(value, spec, unit=""):
        return format(value, spec) + unit if isinstance(value, (int, float)) else "n/a"

    lines = ["| method | recipe tokens/s | recipe peak GiB | recipe MFU | fast tokens/s | fast peak GiB | fast MFU | ratio "
             "| recipe / fast reserved GiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    methods = list(dict.fromkeys(r["method"] for r in results))
    for method in methods:
        recipe = next((r for r in results if r["method"] == method and r["path"] == "recipe"), {})
        for fast in [r for r in results if r["method"] == method and r["path"] == "fast"] or [{}]:
            label = method + (f" {fast['overrides']}" if fast.get("overrides") else "")
            ratio = (fast["tokens_per_s"] / recipe["tokens_per_s"]
                     if fast.get("tokens_per_s") and recipe.get("tokens_per_s") else None)
            lines.append(f"| {label} | {fmt(recipe.get('tokens_per_s'), ',.0f')} | {fmt(recipe.get('peak_gib'), '.1f')} | "
                         f"{fmt(recipe.get('mfu') and 100 * recipe['mfu'], '.1f', '%')} | {fmt(fast.get('tokens_per_s'), ',.0f')} | "
                         f"{fmt(fast.get('peak_gib'), '.1f')} | {fmt(fast.get('mfu') and 100 * fast['mfu'], '.1f', '%')} | "
                         f"{fmt(ratio, '.1f')}x | {fmt(recipe.get('peak_reserved_gib'), '.1f')} / "
                         f"{fmt(fast.get('peak_reserved_gib'), '.1f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU, to check the script works")
    parser.add_argument("--methods", nargs="*", help="subset of methods (default: all)")
    parser.add_argument("--paths", nargs="*", default=["recipe", "fast"])
    parser.add_argument("--variants", default="[{}]", help="JSON list of FastSettings overrides to try on the fast path")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: 10 recipe, 30 fast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curves", action="store_true", help="also train both paths on the course task, 2 seeds")
    parser.add_argument("--curve-steps", type=int, default=24)
    parser.add_argument("--real-model", help="folder or .gguf file of the default model (default: course_lib's)")
    parser.add_argument("--real-tokenizer", help="folder holding the default model's tokenizer (with --real-model .gguf)")
    parser.add_argument("--out", help="folder for results.json and loss_curves.png")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "course-bench"))
    parser.add_argument("--check", action="store_true", help="only check the fast path's kernels against references")
    parser.add_argument("--profile", nargs="*", help="profile fast-path steps of these methods (torch.profiler)")
    parser.add_argument("--profile-rows", type=int, default=12, help="rows of the profile's GPU table (more: by shape)")
    parser.add_argument("--switch", action="store_true",
                        help="finetune_lora on this GPU (with --cpu: on the CPU): auto vs fast=False")
    parser.add_argument("--switch-test", type=int, default=100, help="test examples for --switch's exact match")
    parser.add_argument("--switch-steps", type=int, default=60,
                        help="--switch: optimizer steps (the tables: 60; notebook 00 now 40)")
    parser.add_argument("--t4", action="store_true",
                        help="a T4 stand-in: fp16 weights (the recipe: fp16=True), no flash varlen, 15 GiB cap")
    parser.add_argument("--recipe-micro-batch", type=int, help="the recipe's examples per forward pass (default 8)")
    parser.add_argument("--long", action="store_true",
                        help="the longest single example each path trains at batch 1 under a 15 GiB cap")
    parser.add_argument("--long-from", type=int, default=2048, help="--long: the first length tried")
    parser.add_argument("--long-to", type=int, default=LONG_LENGTHS[-1], help="--long: the last length tried")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.worker:  # one run in this process, result on stdout
        method, path, overrides = json.loads(args.worker)
        args.cpu = False
        run = long_context(method, path, args) if overrides == "long" else run_one(method, path, args, overrides)
        print("RESULT " + json.dumps(run), flush=True)
        return
    if args.long:
        runs = [run_isolated(method, path, args, "long") for method in (args.methods or ["LoRA 1.7B", "QLoRA 1.7B"])
                for path in args.paths]
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "long_context.json").write_text(json.dumps(runs, indent=1))
        print("\n| method | recipe: longest example (tokens) | fast path: longest example (tokens) | ratio |")
        print("| --- | ---: | ---: | ---: |")
        for method in dict.fromkeys(r["method"] for r in runs):
            got = {r["path"]: r.get("longest", 0) for r in runs if r["method"] == method}
            ratio = got.get("fast", 0) / got["recipe"] if got.get("recipe") else float("nan")
            print(f"| {method} | {got.get('recipe', 0):,} | {got.get('fast', 0):,} | {ratio:.1f}x |")
        return

    if args.profile is not None:
        for method in args.profile or list(METHODS):
            for overrides in json.loads(args.variants):
                profile_fast(method, args, overrides)
        return
    if args.switch:
        runs = switch_check(args)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "switch.json").write_text(json.dumps(runs, indent=1))
        print("\n| model dtype | LoraSettings.fast | path ran | seconds | tokens/s | last loss | held-out loss | "
              "exact match |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in runs:
            print(f"| {r['dtype']} | {r['fast']} | {r['path']} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
                  f"{r['mean_last10']:.4f} | {r['val_loss']:.4f} | {r['exact_after']:.0%} |")
        print(f"exact match before training: {runs[0]['exact_before']:.0%}")
        return
    if args.check:
        import torch

        failed = False
        for what, err, tol in self_check("cuda" if torch.cuda.is_available() and not args.cpu else "cpu"):
            failed |= not err <= tol
            print(f"{'ok  ' if err <= tol else 'FAIL'} {what}: relative error {err:.2e} (tolerance {tol:.0e})")
        sys.exit(1 if failed else 0)

    methods = args.methods or list(CPU_METHODS if args.cpu else T4_METHODS if args.t4 else METHODS)
    variants = json.loads(args.variants)
    results = []
    for method in methods:
        for path in args.paths:
            for overrides in (variants if path == "fast" else [None]):
                if args.cpu:  # tiny runs stay in this process: a subprocess would cost more than the run
                    result = run_one(method, path, args, overrides)
                else:
                    result = run_isolated(method, path, args, overrides)
                results.append(result)
                shown = {k: result.get(k) for k in ("method", "path", "tokens_per_s", "peak_gib", "mfu", "final_loss",
                                                    "wall_s", "error", "overrides")}
                print(json.dumps(shown), flush=True)
    output = {"results": results}
    if args.curves:
        output["curves"] = loss_curves(args)
        for name, run in output["curves"].items():
            print(f"{name}: final train loss {run['losses'][-1]:.4f}, held-out loss {run['val_loss']:.4f}, "
                  f"{run['seconds']:.1f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(output, indent=1))
        if args.curves:
            plot_curves(output["curves"], out / "loss_curves.png")
    print()
    print(table(results))
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
