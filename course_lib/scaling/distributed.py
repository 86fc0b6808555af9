"""Training on several processes with `accelerate`: DDP for LoRA, FSDP for full fine-tuning.

Every process runs this same file (`accelerate launch` starts them); each gets its own slice of every
global batch, and the processes agree on the gradients before each optimizer step:

- **DDP** (`--strategy ddp`): every process holds the whole model; gradients are averaged with an
  all-reduce. With LoRA only the adapters' gradients travel, so this is cheap and scales well.
- **FSDP** (`--strategy fsdp`, full fine-tuning): parameters, gradients and optimizer states are sharded,
  each process keeps 1/N of them and gathers a layer's weights only while it computes that layer
  (PyTorch's FSDP2, `fully_shard`, applied per decoder layer as accelerate's FSDP plugin does).

Run it from a terminal, on GPUs or (gloo) on CPU cores:

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no -m course_lib.scaling.distributed --strategy ddp --method lora --steps 20

or from Python / a notebook with `launch(num_processes=2, strategy="ddp", ...)`, which does exactly that
in a subprocess, shows a progress bar, and returns the run's `RunResult`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list
from peft import LoraConfig, get_peft_model
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig

from course_lib.core import tasks
from course_lib.core.models import ALL_LINEAR, load_causal_lm, load_tokenizer
from course_lib.core.progress import progress_bar
from course_lib.core.runtime import gpu_has_bf16, quiet
from course_lib.data.tokenize import pad_batch, tokenize_chat

MARK = "@@course_lib.distributed "  # prefixes the lines the launcher parses; everything else is the workers' log

# Architectures of the course's models, for throughput runs with random weights where the weights cannot be
# downloaded (the speed of a step does not depend on the values of the weights).
ARCHITECTURES: dict[str, dict] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32),
}
SMOLLM2_VOCAB = 49152


@dataclass
class RunConfig:
    """One distributed run: what to train, how, and for how long."""

    strategy: str = "ddp"  # "ddp" or "fsdp"
    method: str = "lora"  # "lora" or "full"
    model: str = "default"  # a course model, a folder, or "random:<architecture>" (random weights, for speed)
    data: str = "task"  # "task" (the course's JSON task) or "random" (random tokens of seq_len, for speed)
    steps: int = 10
    per_device_batch: int = 4
    seq_len: int = 256  # random data: tokens per row; task data: the truncation limit
    learning_rate: float | None = None  # None: 2e-3 for LoRA, 1e-4 for full fine-tuning
    lora_r: int = 16
    warmup_steps: int = 1  # steps left out of the tokens/s measurement (allocation, kernel selection)
    seed: int = 0
    cpu: bool = False  # force the CPU (gloo) even where a GPU is available
    output: str | None = None  # write the RunResult here as JSON
    save: str | None = None  # save the trained adapter / model here (safetensors)

    def check(self) -> None:
        """Raise a clear error for a combination that cannot run."""
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy is {self.strategy!r}; expected 'ddp' or 'fsdp'")
        if self.method not in ("lora", "full"):
            raise ValueError(f"method is {self.method!r}; expected 'lora' or 'full'")
        if self.strategy == "fsdp" and self.method == "lora":
            raise ValueError("use strategy='ddp' for LoRA: the adapters are a few MB, so sharding them saves "
                             "nothing; FSDP pays off when the weights, gradients and Adam states are large")
        if self.data not in ("task", "random"):
            raise ValueError(f"data is {self.data!r}; expected 'task' or 'random'")
        for name in ("steps", "per_device_batch", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps); got {self.warmup_steps} with steps={self.steps}")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-3 if self.method == "lora" else 1e-4


@dataclass
class RunResult:
    """What a distributed run measured."""

    strategy: str
    method: str
    world_size: int
    device: str
    model: str
    n_params: int
    n_trainable: int
    per_device_batch: int
    global_batch: int
    steps: int
    # {"step", "loss", "seconds", "tokens"} per optimizer step: the loss of the whole global batch; the seconds from
    # the batch in hand to the synchronised loss (forward, backward, gradient exchange, optimizer; not loading)
    history: list[dict]
    tokens_per_s: float  # non-padding tokens of all processes together, warm-up steps left out
    seconds: float
    peak_memory_gb: float | None  # the largest on any GPU; None on CPU
    weights_identical: bool | None  # DDP: every rank ended with the same trainable weights; None for FSDP
    weights_checksum: dict[str, float] = field(default_factory=dict)  # sum of each trained tensor (rank 0's view)

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.history]

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------ inside each process


def _build_model(config: RunConfig, device, dtype):
    """The model (same initial weights on every rank) and, for task data, its tokenizer."""

    torch.manual_seed(config.seed)  # FSDP does not broadcast rank 0's weights: every rank must build the same ones
    tokenizer = None
    if config.data == "task" or not config.model.startswith("random:"):

        tokenizer = load_tokenizer("default" if config.model.startswith("random:") else config.model)
    if config.model.startswith("random:"):
        arch = config.model.split(":", 1)[1]
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
        vocab = len(tokenizer) if tokenizer is not None else SMOLLM2_VOCAB
        llama = LlamaConfig(vocab_size=vocab, max_position_embeddings=max(2048, config.seq_len),
                            tie_word_embeddings=True, rope_theta=100000.0, **ARCHITECTURES[arch])
        if tokenizer is not None:
            llama.pad_token_id = tokenizer.pad_token_id
        with torch.device(device):  # initialise on the device: a 1.7B model takes long to initialise on a CPU
            model = AutoModelForCausalLM.from_config(llama, dtype=dtype)
    else:

        model, tokenizer = load_causal_lm(config.model, dtype=dtype, device=str(device))
    model.config.use_cache = False
    model.train()
    return model, tokenizer


def _rows(config: RunConfig, tokenizer, n_rows: int, vocab_size: int) -> list[dict]:
    """`n_rows` training rows, the same on every rank (each rank then takes its slice of every batch)."""
    if config.data == "random":

        generator = torch.Generator().manual_seed(config.seed + 1)
        ids = torch.randint(0, vocab_size, (n_rows, config.seq_len), generator=generator).tolist()
        return [{"input_ids": row, "attention_mask": [1] * len(row), "labels": list(row)} for row in ids]

    examples = tasks.make_examples(n_rows, seed=config.seed)
    return [tokenize_chat(tasks.to_messages(e), tokenizer, max_length=config.seq_len) for e in examples]


def _collate(pad_token_id: int):

    def collate(rows: list[dict]) -> dict:
        return {k: torch.tensor(v) for k, v in pad_batch(rows, pad_token_id, "right").items()}

    return collate


def _decoder_layers(model) -> list:
    """The repeated blocks FSDP shards one by one (the classes transformers marks as not to be split)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return layers


def _checksum(named) -> dict[str, float]:
    """The sum of each tensor (in float64), by name: equal checksums mean equal weights, up to rounding."""
    return {name: tensor.detach().double().sum().item() for name, tensor in named}


def train_distributed(config: RunConfig, log=None) -> RunResult:
    """The training loop every process runs; returns the same RunResult on every rank."""

    config.check()
    quiet()
    use_cpu = config.cpu or not torch.cuda.is_available()
    on_gpu = not use_cpu
    bf16 = on_gpu and gpu_has_bf16()
    # bf16 autocast on a GPU, except when FSDP shards the model: its own mixed-precision policy casts the
    # gathered weights once per layer instead (one process runs the plain model, so it autocasts too).
    sharded = config.strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1
    mixed = "bf16" if bf16 and not sharded else "no"
    # split_batches: the loader yields global batches and each rank takes its slice, so a run on N processes
    # sees exactly the batches a run on one process sees: the results are comparable.
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    world = accelerator.num_processes
    device = accelerator.device
    # LoRA: the frozen base can live in bf16 (only the fp32 adapters are trained); full fine-tuning keeps fp32
    # master weights and computes in bf16 through FSDP's policy.
    dtype = torch.bfloat16 if bf16 and config.method == "lora" else torch.float32
    model, tokenizer = _build_model(config, device, dtype)

    if config.method == "lora":

        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, lora_dropout=0.0,
                                                 target_modules=list(ALL_LINEAR), task_type="CAUSAL_LM"))
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    global_batch = config.per_device_batch * world
    rows = _rows(config, tokenizer, config.steps * global_batch, model.config.vocab_size)
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0
    loader = DataLoader(rows, batch_size=global_batch, shuffle=False, collate_fn=_collate(pad_id))

    if config.strategy == "fsdp" and world > 1:

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        for layer in _decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        # The optimizer must see the sharded parameters, so it is built after sharding. The model itself is not
        # passed to prepare(): accelerate would wrap it in DDP on top (its FSDP plugin only runs on accelerators).
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        optimizer, loader = accelerator.prepare(optimizer, loader)
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    history = []
    started = time.perf_counter()
    for step, batch in enumerate(loader, start=1):
        step_start = time.perf_counter()
        labels = batch["labels"]
        # Each rank sums its token losses and divides by the token count of the *global* batch (times the
        # number of ranks, since DDP and FSDP average gradients): the gradient is then exactly the one a single
        # process would compute on the whole batch, however the answer tokens fall between the ranks.
        local_count = (labels[:, 1:] != -100).sum()
        global_count = accelerator.reduce(local_count.clone(), reduction="sum")
        with accelerator.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                     ignore_index=-100, reduction="sum")
        loss = token_loss * world / global_count.clamp(min=1)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()  # .item() syncs the GPU
        tokens = accelerator.reduce(batch["attention_mask"].sum(), reduction="sum").item()
        seconds = time.perf_counter() - step_start
        history.append({"step": step, "loss": mean_loss, "seconds": seconds, "tokens": tokens})
        if accelerator.is_main_process and log is not None:
            log({"event": "step", "step": step, "steps": config.steps, "loss": mean_loss,
                 "tokens_per_s": tokens / seconds})
    total = time.perf_counter() - started
    timed = history[config.warmup_steps:]
    tokens_per_s = sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed)

    identical, checksum = _final_weights(accelerator, model, config)
    peak = None
    if on_gpu:
        peak_local = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=device)
        peak = accelerator.gather(peak_local).max().item()
    if config.save:
        _save(accelerator, model, config)
    result = RunResult(
        strategy=config.strategy, method=config.method, world_size=world,
        device=torch.cuda.get_device_name(device) if on_gpu
        else (f"cpu ({world} processes, gloo)" if world > 1 else "cpu (1 process)"),
        model=config.model, n_params=n_params, n_trainable=n_trainable, per_device_batch=config.per_device_batch,
        global_batch=global_batch, steps=len(history), history=history, tokens_per_s=tokens_per_s, seconds=total,
        peak_memory_gb=peak, weights_identical=identical, weights_checksum=checksum,
    )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if world == 1:  # called in-process (a test, a notebook): let a later Accelerator start from scratch

        AcceleratorState._reset_state(reset_partial_state=True)
    return result


def _final_weights(accelerator, model, config: RunConfig) -> tuple[bool | None, dict[str, float]]:
    """DDP: whether all ranks hold the same trainable weights; and a checksum of the trained weights, by name."""

    if config.strategy == "fsdp" and accelerator.num_processes > 1:

        trained = [name for name, p in model.named_parameters() if p.requires_grad]
        # Gather the full weights (collective: every rank takes part); only rank 0 receives them.
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        checksum = _checksum((name, state[name]) for name in trained) if accelerator.is_main_process else {}
        return None, _broadcast_object(accelerator, checksum)
    unwrapped = accelerator.unwrap_model(model)
    checksum = _checksum((n, p) for n, p in unwrapped.named_parameters() if p.requires_grad)
    if accelerator.num_processes == 1:
        return True, checksum
    mine = torch.tensor(list(checksum.values()), dtype=torch.float64, device=accelerator.device)
    everyone = accelerator.gather(mine[None])  # (ranks, tensors)
    identical = bool(torch.equal(everyone.min(dim=0).values, everyone.max(dim=0).values))
    return identical, checksum


def _broadcast_object(accelerator, value):

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _save(accelerator, model, config: RunConfig) -> None:
    """Save the adapter (LoRA) or the full model (FSDP gathers it on rank 0) as safetensors."""
    if config.strategy == "fsdp" and accelerator.num_processes > 1:

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if accelerator.is_main_process:
            model.save_pretrained(config.save, state_dict=state, safe_serialization=True)
    elif accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(config.save, safe_serialization=True)
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------ the launcher


def free_port() -> int:
    """A TCP port nobody listens on now, for the processes' rendezvous (so parallel runs do not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_args(config: RunConfig) -> list[str]:
    """The command-line arguments that recreate `config` in the worker processes."""
    args = []
    defaults = RunConfig()
    for f in fields(RunConfig):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        else:
            args += [flag, str(value)]
    return args


def launch_command(num_processes: int, config: RunConfig, port: int | None = None) -> list[str]:
    """The `accelerate launch` command that runs `config` on `num_processes` processes."""
    # `--multi_gpu` starts one process per slot through torchrun, on CPUs too (accelerate's `--cpu` alone starts
    # one process unless MPI is installed); each process then picks gloo on CPU and NCCL on GPUs.
    launcher = ["--multi_gpu", "--num_processes", str(num_processes), "--main_process_port", str(port or free_port())] \
        if num_processes > 1 else ["--num_processes", "1"]
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "course_lib.scaling.distributed", *to_args(config)]


def terminal_command(num_processes: int, config: RunConfig) -> str:
    """The same command as `launch_command`, as a person types it in a terminal."""
    words = launch_command(num_processes, config, port=29500)[3:]
    split = words.index("-m")
    return " ".join(["accelerate launch", *words[:split]]) + " \\\n    " + " ".join(words[split:])


def failure_excerpt(log: list[str], lines: int = 40) -> str:
    """What a failed launch printed that explains it: the first traceback (a rank's own error; torchrun's summary
    after it names only the exit codes), then the last lines."""
    first = next((i for i, line in enumerate(log) if line.startswith("Traceback (most recent call last)")), None)
    if first is None or first >= len(log) - lines:
        return "".join(log[-lines:])
    return "".join(log[first : first + lines]) + "...\n" + "".join(log[-lines // 2:])


def launch(num_processes: int = 2, config: RunConfig | None = None, progress: bool = True,
           timeout: float | None = None, threads: int | None = None, **options) -> RunResult:
    """Run a distributed training with `accelerate launch` in a subprocess; a progress bar follows its steps.

    On CPU each process runs `threads` threads (default: the cores divided between the processes); give runs
    you compare the same `threads`, so that N processes use N times the cores of one.
    """

    config = config or RunConfig(**options)
    config.check()
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    gpus = _cuda_device_count()
    if gpus and not config.cpu and num_processes > gpus:
        raise ValueError(f"{num_processes} processes need {num_processes} GPUs and this machine has {gpus}: "
                         "run fewer processes, or pass cpu=True to run them on CPU cores")
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if config.cpu or not gpus:
        # Share the cores between the processes instead of letting each start one thread per core.
        env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // num_processes))
        # A CPU run has no use for the GPUs: hide them. With them visible, a 2-process CPU run on a one-GPU machine
        # trained to the end and then failed on rank 1 (H200, 2026-12-03; its error was not kept).
        env["CUDA_VISIBLE_DEVICES"] = ""
    # The repository root (where course_lib lives) must be importable in the workers, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH")]))
    command = launch_command(num_processes, config)
    bar = progress_bar(total=config.steps, desc=f"{config.strategy}/{config.method} on {num_processes}",
                       disable=not progress)
    result, log = None, []
    # its own session, so that a timeout stops the ranks too, not only the launcher
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        deadline = time.monotonic() + timeout if timeout else None
        for line in _lines_until(proc, deadline):
            if line is None:
                _kill_session(proc)
                raise TimeoutError(f"the distributed run took longer than {timeout:.0f} s")
            if line.startswith(MARK):
                event = json.loads(line[len(MARK):])
                if event["event"] == "step":
                    bar.update(1)
                    bar.set_postfix(loss=f"{event['loss']:.3f}", tok_s=f"{event['tokens_per_s']:.0f}")
                elif event["event"] == "result":
                    result = RunResult.from_dict(event["result"])
            else:
                log.append(line)
        proc.wait()
    bar.close()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"`accelerate launch` failed (exit status {proc.returncode}):\n{failure_excerpt(log)}")
    return result


_END = object()  # the reader thread's last item: the pipe is closed


def _lines_until(proc: subprocess.Popen, deadline: float | None):
    """The process's output lines, then None if `deadline` (time.monotonic()) passes first.

    A reader thread, because a rank that hangs prints nothing: reading the pipe directly would wait past any deadline
    (a DDP test hung 11 minutes on a 600 s timeout with one of its two ranks gone).
    """
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(_END)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            yield None
            return
        if line is _END:
            return
        yield line


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill the launcher and every rank it started (they share its session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _cuda_device_count() -> int:

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def scaling_rows(results: list[RunResult]) -> list[dict]:
    """Throughput per run against the first run of the same strategy: speed-up and scaling efficiency."""
    rows, base = [], {}
    for r in results:
        key = (r.strategy, r.method)
        base.setdefault(key, r)
        one = base[key]
        speedup = r.tokens_per_s / one.tokens_per_s
        rows.append({"strategy": r.strategy, "method": r.method, "processes": r.world_size,
                     "tokens/s": r.tokens_per_s, "speed-up": speedup,
                     "efficiency": speedup * one.world_size / r.world_size, "peak GB": r.peak_memory_gb})
    return rows


def plot_throughput(results: list[RunResult], title: str = "tokens per second", ax=None):
    """Tokens/s per run, with the ideal (linear) scaling from each strategy's smallest run as a dashed mark."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.2))
    rows = scaling_rows(results)
    labels = [f"{r['strategy']}/{r['method']}\n{r['processes']} proc" for r in rows]
    bars = ax.bar(labels, [r["tokens/s"] for r in rows], color="#2a7ab9")
    ax.bar_label(bars, labels=[f"{r['tokens/s']:.0f}\n({r['efficiency']:.0%})" for r in rows], fontsize=8)
    for i, r in enumerate(rows):
        ideal = r["tokens/s"] / r["efficiency"]
        ax.plot([i - 0.4, i + 0.4], [ideal, ideal], "k--", lw=1)
    ax.set(ylabel="tokens/s (all processes)", title=title)
    ax.margins(y=0.25)
    return ax


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (notebooks display it with IPython.display.Markdown); floats get thousands separators."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.scaling.distributed", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = RunConfig()
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "learning_rate":
            parser.add_argument(flag, type=float, default=None)
        elif f.name in ("output", "save"):
            parser.add_argument(flag, default=None)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of each process under `accelerate launch`."""
    args = _parser().parse_args(argv)
    config = RunConfig(**vars(args))

    def log(event: dict) -> None:
        print(MARK + json.dumps(event), flush=True)

    result = train_distributed(config, log=log)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        log({"event": "result", "result": asdict(result)})
        if config.output:
            Path(config.output).write_text(json.dumps(asdict(result), indent=1))
        else:
            print(f"{result.strategy}/{result.method} on {result.world_size} process(es): "
                  f"{result.tokens_per_s:.0f} tokens/s, loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
