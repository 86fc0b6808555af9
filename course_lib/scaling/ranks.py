"""Run a training function on several processes from a notebook, and bring back what each rank returned.

`run_on_ranks(train, args, num_processes=2)` forks `num_processes` copies of the kernel (as
`accelerate.notebook_launcher` does), sets the variables `torch.distributed` and `accelerate` read (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT...), calls `train(*args)` in each, and returns one plain dict per rank: what
`train` returned, with a model replaced by a checksum of its trainable weights and tensors by lists, plus the
world size that rank's process group really had. Forking (not spawning) lets a function defined in a notebook run
as it is, with no file to write.

`accelerate.notebook_launcher` itself refuses to start once bitsandbytes is imported (peft imports it), so the
course uses this small launcher instead; it is the same mechanism.

Also here: the tiny model and text rows of notebook 07's exercise, and the reference training loop
(`reference_train`), which the notebook falls back to while the exercise is not written.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig

from course_lib.core import tasks
from course_lib.data.tokenize import pad_batch
from course_lib.scaling.distributed import _checksum, free_port

# The 2-layer Llama of the exercise: real vocabulary, random weights, a few hundred microseconds per step.
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_model(vocab_size: int, pad_token_id: int, seed: int = 0):
    """A 2-layer Llama with random weights (the same ones for the same seed), ready to train in full."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=64, tie_word_embeddings=True,
                         pad_token_id=pad_token_id, **TINY)
    model = AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model


def text_rows(tokenizer, n: int, seq_len: int = 32, seed: int = 0) -> list[list[int]]:
    """`n` rows of token ids (a task sentence and its JSON answer), at most `seq_len` tokens each."""
    return [tokenizer(f"{e.text} {e.answer_json()}", truncation=True, max_length=seq_len)["input_ids"]
            for e in tasks.make_examples(n, seed=seed)]


def collate_for(pad_token_id: int) -> Callable[[list[list[int]]], dict]:
    """A collate function: right padding, attention mask, labels = input ids with padding set to -100."""

    def collate(rows: list[list[int]]) -> dict:
        return pad_batch([{"input_ids": r, "attention_mask": [1] * len(r), "labels": r} for r in rows], pad_token_id)

    return collate


def reference_train(make_model: Callable, train_rows: Sequence, eval_rows: Sequence, collate: Callable,
                    batch_size: int = 2, epochs: int = 2, lr: float = 1e-2) -> dict:
    """The exercise's reference: one process's part of a data-parallel training with `accelerate`."""
    accelerator = Accelerator(cpu=True)
    model = make_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    train_loader = DataLoader(list(train_rows), batch_size=batch_size, shuffle=False, collate_fn=collate)
    eval_loader = DataLoader(list(eval_rows), batch_size=1, shuffle=False, collate_fn=collate)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    losses = []
    model.train()
    for _ in range(epochs):
        for batch in train_loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
    model.eval()
    eval_losses = []
    with torch.no_grad():
        for batch in eval_loader:
            loss = model(**batch).loss
            eval_losses += accelerator.gather_for_metrics(loss[None]).tolist()
    return {"model": accelerator.unwrap_model(model), "losses": losses, "eval_losses": eval_losses}


# ------------------------------------------------------------------------------------------ the launcher


def weights_checksum(model) -> dict[str, float]:
    """The sum of each trainable tensor (float64), by name: equal checksums mean equal weights."""
    return _checksum((name, p) for name, p in model.named_parameters() if p.requires_grad)


def _plain(value: Any) -> Any:
    """What a rank hands back: models become weight checksums, tensors lists; the rest must be JSON data."""
    if isinstance(value, torch.nn.Module):
        return {"weights": weights_checksum(value)}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _world_size() -> int:
    """The size of the process group this process really joined (1 when it joined none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank_main(rank: int, function: Callable, args: tuple, num_processes: int, port: int, folder: str,
               threads: int) -> None:
    """One forked process: the environment accelerate reads, the call, its result written as JSON."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(num_processes),
                      LOCAL_WORLD_SIZE=str(num_processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    if torch.cuda._is_in_bad_fork():
        # The parent used CUDA (a notebook on a GPU runtime), and a forked process cannot: any CUDA call here fails
        # with "initialization error", even the optimizer's check for graph capture. These ranks run on the CPU (gloo).
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.cuda.is_available = lambda: False
        torch.cuda.device_count = lambda: 0
    # accelerate keeps its state in class-level singletons: one built earlier in the parent (any Accelerator made
    # in the notebook or the test session) would be inherited by the fork and say "1 process, no group"
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    out = Path(folder) / f"rank{rank}.json"
    try:
        returned = function(*args)
        result = {"rank": rank, "world_size": _world_size(), "returned": _plain(returned)}
        out.write_text(json.dumps(result))
    except BaseException as error:  # noqa: BLE001 - the parent reports it
        (Path(folder) / f"rank{rank}.error").write_text(f"{type(error).__name__}: {error}\n\n{traceback.format_exc()}")
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_on_ranks(function: Callable, args: tuple = (), num_processes: int = 2, threads: int = 1,
                 timeout: float = 120.0) -> list[dict]:
    """Call `function(*args)` in `num_processes` forked processes; one dict per rank, in rank order.

    Each dict holds `rank`, `world_size` (of the process group the rank joined) and `returned` (what the function
    returned, as plain data). A rank that raises makes this raise a RuntimeError with that rank's error; ranks still
    running after `timeout` seconds (one waiting for a peer that never comes) are stopped with a TimeoutError.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    with tempfile.TemporaryDirectory(prefix="course-ranks-") as folder:
        try:
            context = mp.start_processes(rank_main, args=(function, args, num_processes, free_port(), folder, threads),
                                         nprocs=num_processes, start_method="fork", join=False)
            deadline = time.monotonic() + timeout
            while not context.join(timeout=0.2):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        if process.is_alive():
                            process.kill()
                    raise TimeoutError(f"the processes were still running after {timeout:.0f} s (is one rank "
                                       "waiting for a collective the other never calls?)")
        except TimeoutError:
            raise
        except Exception as error:  # noqa: BLE001 - say which rank failed and why
            errors = sorted(Path(folder).glob("rank*.error"))
            detail = errors[0].read_text() if errors else str(error)
            raise RuntimeError(f"a process failed ({errors[0].stem if errors else 'unknown rank'}): "
                               f"{detail.splitlines()[0] if detail else error}\n{detail}") from None
        return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(num_processes)]
