"""Measure the peak memory of fine-tuning and compare it with the planner's prediction (`qlora.memory.estimate`).

Run it with `python -m course_lib.qlora.memory_check validate [--device cuda]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import peft  # noqa: F401  (loaded up front: a library a first step imports would count as training memory)
import torch
import transformers.models.llama.modeling_llama  # noqa: F401
import transformers.trainer  # noqa: F401
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from course_lib.core.models import ALL_LINEAR, resolve
from course_lib.core.runtime import quiet
from course_lib.qlora.bnb import add_lora, load_4bit, own_memory
from course_lib.qlora.memory import GiB, estimate, print_vram_table

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

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.peak_bytes: int | None = None
        self._start = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):

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

            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        elif self._start is not None:
            self.peak_bytes = _rss_kib("VmHWM") * 1024 - self._start
            _glibc_keeps_freed_memory()

    @staticmethod
    def _can_reset() -> bool:
        return os.access("/proc/self/clear_refs", os.W_OK) and os.access("/proc/self/status", os.R_OK)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from malloc.h


def _mallopt(mmap_threshold: int, trim_threshold: int):
    """Set glibc's two malloc thresholds; the C library, or None where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return libc


def _glibc_returns_freed_memory() -> None:
    """Tell glibc to map every allocation over 64 KiB on its own and unmap it when freed (Linux with glibc only)."""

    libc = _mallopt(64 * 1024, 0)
    if libc is not None:
        libc.malloc_trim(0)


def _glibc_keeps_freed_memory() -> None:
    """Let glibc reuse freed memory again, as its default settles to in a process that frees large blocks."""

    # Mapping and unmapping every tensor over 64 KiB costs page faults at every step: LoRA training steps of 4
    # sequences ran 6-33 % slower under it on 2 cores, and the setting outlived the measured block. glibc's default
    # threshold is dynamic (it rises to the largest block freed, up to 32 MiB on 64-bit, and trims at twice that);
    # mallopt cannot switch that back on, so this sets where it settles.
    _mallopt(32 * 2**20, 64 * 2**20)


def _load_for_method(path: str, method: str, precision: str, device: str, r: int, targets, gradient_checkpointing):

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "mixed": torch.float32}[precision]
    if method == "qlora":

        model = load_4bit(path, compute_dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing)
        return add_lora(model, r=r, targets=list(targets))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "lora":

        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                 task_type="CAUSAL_LM"))
        if gradient_checkpointing:
            model.enable_input_require_grads()
    return model




def _make_optimizer(params, optimizer: str, device: str):

    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-5, fused=True)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=1e-5)


def _measure_here(spec: dict) -> dict:
    """Run in a fresh process: load, reset the peak, train a few steps on random tokens, report the peak."""


    quiet()
    device = spec["device"]
    torch.manual_seed(0)
    if spec["method"] == "qlora" or "8bit" in spec["optimizer"]:
        # loaded before the baseline, so that it holds the libraries and not the model
        import bitsandbytes  # noqa: F401  (heavy and optional: only the 4-bit and 8-bit setups need it)
    baseline = _rss_kib("VmRSS") * 1024 if device == "cpu" else 0
    started = time.perf_counter()
    model = _load_for_method(spec["path"], spec["method"], spec["precision"], device, spec["r"], spec["targets"],
                             spec["gradient_checkpointing"])
    model.config.use_cache = False
    model.train()
    if device == "cpu":
        own_memory(model)
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
    done = subprocess.run([sys.executable, "-m", "course_lib.qlora.memory_check", "_measure", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {method} on {device} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def random_checkpoint(config_kwargs: dict, folder: str) -> str:
    """Save a Llama with random weights (bf16, safetensors) built from config kwargs; returns the folder."""

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
            checkpointing = setup.pop("gradient_checkpointing", False)
            est = estimate(config, batch_size=batch_size, seq_len=seq_len, r=16, device=device,
                           gradient_checkpointing=checkpointing, **setup)
            got = measure_peak(path, batch_size=batch_size, seq_len=seq_len, r=16, device=device,
                               gradient_checkpointing=checkpointing, **setup)
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


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m course_lib.qlora.memory_check validate|table`."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.qlora.memory_check")
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
