"""Crash and resume: run training in a child process, kill it with SIGKILL, and continue from its last checkpoint.

A closed Colab tab or a preempted machine kills the Python process without warning: nothing gets flushed,
no `finally` runs. What survives is what the Trainer wrote into `checkpoint-N/`: weights, optimizer and
scheduler states, the RNG states and `trainer_state.json` (step, loss history, callback states). Resuming
from it repeats exactly the run that was never interrupted, which `tests/training/test_resume.py` checks bit for bit.

A run is described by a *spec folder* (initial weights as safetensors, tokenizer, data as JSON, the
TrainConfig, the method) so that a child process, the resumed run and an uninterrupted reference all start
from the same bytes.

    python -m course_lib.training.resume SPEC_FOLDER --output-dir RUN_FOLDER [--step-delay S] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from course_lib.core.models import load_tokenizer
from course_lib.core.results import TrainResult
from course_lib.core.runtime import quiet
from course_lib.training.callbacks import CrashAfterStep, SimulatedCrash, SlowDown
from course_lib.training.config import TrainConfig
from course_lib.training.methods import apply_method
from course_lib.training.trainer import last_checkpoint, train

LOG_NAME = "live_log.jsonl"


def save_spec(folder: str | Path, model, tokenizer, train_data: Sequence, config: TrainConfig,
              eval_data: Sequence | None = None, method: str | None = None, **method_kwargs) -> Path:
    """Write everything a run needs into `folder`: weights (safetensors), tokenizer, data, config and method."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "model", safe_serialization=True)
    tokenizer.save_pretrained(folder / "model")
    spec = {"config": config.to_dict(), "method": method, "method_kwargs": method_kwargs,
            "train_data": list(train_data), "eval_data": list(eval_data) if eval_data is not None else None}
    (folder / "spec.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return folder


def load_spec(folder: str | Path):
    """(model, tokenizer, train_data, eval_data, config) rebuilt from a spec folder, the method applied."""

    folder = Path(folder)
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    config = TrainConfig(**spec["config"])
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    tokenizer = load_tokenizer(str(folder / "model"))
    if spec["method"]:
        model = apply_method(model, spec["method"], seed=config.seed, **spec["method_kwargs"])
    return model, tokenizer, spec["train_data"], spec["eval_data"], config


def run_spec(folder: str | Path, output_dir: str | Path, resume: bool = False, progress: bool = False,
             callbacks: Sequence = (), desc: str = "training") -> TrainResult:
    """Run (or resume) the spec's training in this process, checkpoints going to `output_dir`."""
    model, tokenizer, train_data, eval_data, config = load_spec(folder)
    return train(model, tokenizer, train_data, config.replace(output_dir=str(output_dir)), eval_data=eval_data,
                 resume=resume, callbacks=callbacks, progress=progress, desc=desc)


class LiveLog(TrainerCallback):
    """Appends every log row to a JSON-lines file as it happens, so what a killed run did stays visible."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def read_live_log(output_dir: str | Path) -> list[dict]:
    """The training-loss rows a child run logged before it ended or was killed."""
    path = Path(output_dir) / LOG_NAME
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # the kill can cut the last line in half
            continue
        if "loss" in row:
            rows.append({"step": row["step"], "loss": row["loss"]})
    return rows


def start_run(folder: str | Path, output_dir: str | Path, step_delay: float = 0.0) -> subprocess.Popen:
    """Start the spec's training in a child Python process (same interpreter, same thread count)."""

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "course_lib.training.resume", str(folder), "--output-dir", str(output_dir),
               "--step-delay", str(step_delay), "--threads", str(torch.get_num_threads())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    with (Path(output_dir) / "stderr.txt").open("ab") as errors:  # a file, not a pipe: a full pipe would block the child
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)


@dataclass
class Kill:
    """What a kill left behind."""

    returncode: int
    checkpoint: str | None  # the newest complete checkpoint when the process died
    last_logged_step: int  # how far the process got (from its live log)


def kill_after_step(process: subprocess.Popen, output_dir: str | Path, step: int, timeout: float = 300.0) -> Kill:
    """SIGKILL `process` once it has logged `step` and a checkpoint exists (like closing the tab mid-run)."""
    deadline = time.monotonic() + timeout
    while True:
        logged = read_live_log(output_dir)
        if logged and logged[-1]["step"] >= step and last_checkpoint(output_dir) is not None:
            break
        if process.poll() is not None:
            error = (Path(output_dir) / "stderr.txt").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the training process ended (code {process.returncode}) before step {step}:\n{error}")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"the training process did not reach step {step} in {timeout:.0f} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    logged = read_live_log(output_dir)
    return Kill(process.returncode, last_checkpoint(output_dir), logged[-1]["step"] if logged else 0)


def interrupted_run(folder: str | Path, output_dir: str | Path, kill_at: int, how: str = "sigkill",
                    step_delay: float = 0.0) -> Kill:
    """Start the spec's run and interrupt it once it has logged step `kill_at`: a real SIGKILL of a child process
    (it may get one step further before the signal lands), or (`how="exception"`, cheaper: no second Python to
    start) an exception raised in this process during the next step. The steps after the last checkpoint are lost.
    """

    if how == "sigkill":
        return kill_after_step(start_run(folder, output_dir, step_delay), output_dir, kill_at)
    if how != "exception":
        raise ValueError(f"how must be 'sigkill' or 'exception', got {how!r}")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    try:  # CrashAfterStep raises at the end of step kill_at + 1, before that step is logged or saved
        run_spec(folder, output_dir, callbacks=[LiveLog(Path(output_dir) / LOG_NAME), CrashAfterStep(kill_at + 1)])
    except SimulatedCrash:
        pass
    else:
        raise RuntimeError(f"the run ended before step {kill_at + 1}: choose kill_at below max_steps - 1")
    logged = read_live_log(output_dir)
    return Kill(-1, last_checkpoint(output_dir), logged[-1]["step"] if logged else 0)


def max_weight_difference(a, b) -> float:
    """The largest absolute difference between two models' parameters (0.0: bitwise identical)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys():
        raise ValueError(f"the models have different parameters: {sorted(pa.keys() ^ pb.keys())[:3]}")
    return max(float((pa[n].detach() - pb[n].detach()).abs().max()) for n in pa)


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: run a spec folder's training until it ends (or is killed)."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.training.resume", description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--step-delay", type=float, default=0.0, help="sleep after every step (tests)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (match the parent for bitwise equality)")
    options = parser.parse_args(argv)


    quiet()
    if options.threads:
        torch.set_num_threads(options.threads)
    callbacks = [LiveLog(Path(options.output_dir) / LOG_NAME)]
    if options.step_delay:
        callbacks.append(SlowDown(options.step_delay))
    run_spec(options.folder, options.output_dir, callbacks=callbacks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
