"""Catastrophic forgetting: what fine-tuning on one task costs the model everywhere else, on a fixed general probe.

The probe ships with the package (`course_lib/data/general_probe.json`, written for the course): a few paragraphs
of everyday English, scored as plain text (perplexity over every token), and short general questions with one
right answer, scored as chats (perplexity of the reference answer). `forgetting_sweep` fine-tunes a fresh model
per setting (LoRA or full fine-tuning; rank, learning rate, steps) on the task and measures, before and after,
the task (answer loss and greedy exact match on held-out chats) and the probe. The learning rate is constant after
a short warm-up, so the measurements a run takes at its checkpoints (`Setting.steps`) are what shorter runs with
the same settings would give.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

import pandas as pd
from transformers import TrainerCallback

from course_lib.data.tokenize import tokenize_chat
from course_lib.evaluation.metrics import perplexity
from course_lib.evaluation.teacher_forced import score_answers
from course_lib.training.config import TrainConfig
from course_lib.training.methods import apply_method, count_parameters
from course_lib.training.trainer import train

PROBE_FILE = "general_probe.json"
METHODS = ("lora", "full")


def load_probe() -> dict:
    """The shipped probe: {'paragraphs': [text, ...], 'questions': [{'question', 'answer'}, ...]}."""
    return json.loads(resources.files("course_lib.data").joinpath(PROBE_FILE).read_text(encoding="utf-8"))


@dataclass
class Probe:
    """The probe tokenized for one tokenizer: text rows (every token scored) and question rows (the answer scored)."""

    text_rows: list[dict]
    question_rows: list[dict]


def build_probe(tokenizer, max_length: int = 256) -> Probe:
    """Tokenize the probe: each paragraph as plain text, each question as a one-turn chat with its reference answer."""
    probe = load_probe()
    text_rows = []
    for paragraph in probe["paragraphs"]:
        ids = tokenizer(paragraph, add_special_tokens=False)["input_ids"][:max_length]
        text_rows.append({"input_ids": ids, "labels": list(ids)})
    question_rows = [tokenize_chat([{"role": "user", "content": q["question"]},
                                    {"role": "assistant", "content": q["answer"]}], tokenizer, max_length=max_length)
                     for q in probe["questions"]]
    return Probe(text_rows, question_rows)


def measure(model, probe: Probe, task_rows: Sequence[dict]) -> dict:
    """Task answer loss and greedy exact match on tokenized held-out task rows, and the probe's two perplexities."""
    task = score_answers(model, task_rows)
    return {"task_loss": task.loss, "task_exact": task.exact_match,
            "probe_text_ppl": perplexity(model, probe.text_rows, progress=False).perplexity,
            "probe_qa_ppl": score_answers(model, probe.question_rows).perplexity}


@dataclass(frozen=True)
class Setting:
    """One fine-tuning run of the sweep, measured after each number of optimizer steps in `steps`."""

    name: str
    method: str = "lora"  # "lora" or "full"
    learning_rate: float = 2e-3
    steps: tuple[int, ...] = (10,)
    r: int = 8  # LoRA rank (alpha = 2 r, as the course's LoRA runs); ignored for full fine-tuning

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Setting {self.name!r}: method must be one of {METHODS}, got {self.method!r}")
        if not self.steps or any(s < 1 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"Setting {self.name!r}: steps must be increasing positive step counts, got {self.steps}")
        if not 0 < self.learning_rate < 1 or self.r < 1:
            raise ValueError(f"Setting {self.name!r}: learning_rate must be in (0, 1) and r >= 1")


class _MeasureAt(TrainerCallback):
    """Measures the model at the given global steps, during training."""

    def __init__(self, steps: Sequence[int], measure_now: Callable[[], dict]):
        self.steps, self.measure_now = set(steps), measure_now
        self.found: dict[int, dict] = {}
        self.spent = 0.0  # seconds spent measuring, kept out of the training time

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            started = time.perf_counter()
            self.found[state.global_step] = self.measure_now()
            self.spent += time.perf_counter() - started


def forgetting_sweep(make_model: Callable, tokenizer, train_conversations: Sequence, test_conversations: Sequence,
                     settings: Sequence[Setting], batch_size: int = 4, warmup_steps: int = 2, max_length: int = 256,
                     seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Fine-tune a fresh `make_model()` per setting on the task chats; a table of the task and probe, before and after.

    One row for the base model, then one per setting and checkpoint. Columns: setting, method, r, learning_rate,
    steps, trainable (parameters), task_loss, task_exact, probe_text_ppl, probe_qa_ppl, their change in % against
    the base model (text_change_%, qa_change_%), task_gain (base task loss minus task loss), seconds (training).
    """
    if not settings:
        raise ValueError("give at least one Setting")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f"setting names must differ, got {names}")
    probe = build_probe(tokenizer, max_length)
    task_rows = [tokenize_chat(c, tokenizer, max_length=max_length) for c in test_conversations]
    model = make_model()
    base = measure(model, probe, task_rows)
    rows = [{"setting": "base model", "method": "-", "r": None, "learning_rate": None, "steps": 0, "trainable": 0,
             **base, "seconds": 0.0}]
    del model
    for setting in settings:
        model = apply_method(make_model(), setting.method, seed=seed, lora_r=setting.r, lora_alpha=2 * setting.r)
        trainable, _ = count_parameters(model)
        meter = _MeasureAt(setting.steps, lambda: measure(model, probe, task_rows))
        config = TrainConfig(max_steps=max(setting.steps), per_device_batch_size=batch_size,
                             learning_rate=setting.learning_rate, schedule="constant",
                             warmup_steps=min(warmup_steps, max(setting.steps) - 1), weight_decay=0.0,
                             max_length=max_length, seed=seed)
        result = train(model, tokenizer, train_conversations, config, callbacks=[meter], progress=progress,
                       desc=setting.name)
        per_step = (result.seconds - meter.spent) / max(setting.steps)
        for step in setting.steps:
            rows.append({"setting": setting.name, "method": setting.method,
                         "r": setting.r if setting.method == "lora" else None, "learning_rate": setting.learning_rate,
                         "steps": step, "trainable": trainable, **meter.found[step],
                         "seconds": round(per_step * step, 1)})
        del model
    table = pd.DataFrame(rows)
    table["task_gain"] = base["task_loss"] - table["task_loss"]
    table["text_change_%"] = 100 * (table["probe_text_ppl"] / base["probe_text_ppl"] - 1)
    table["qa_change_%"] = 100 * (table["probe_qa_ppl"] / base["probe_qa_ppl"] - 1)
    return table


def plot_forgetting(table: pd.DataFrame, title: str = "what the task gained, what the model forgot"):
    """Probe perplexity over the base model's (log scale) against task gain, one point per `forgetting_sweep` row."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    times = FuncFormatter(lambda value, _: f"x{value:g}")
    markers = {"-": ("black", "*", "base model"), "lora": ("tab:blue", "o", "LoRA"),
               "full": ("tab:red", "s", "full fine-tuning")}
    for ax, column, label in zip(axes, ("text_change_%", "qa_change_%"),
                                 ("general text: perplexity / base", "general questions: answer ppl / base")):
        ratio = 1 + table[column] / 100  # a log scale shows x0.8 and x80 on one plot
        for method, (color, marker, name) in markers.items():
            part = table["method"] == method
            ax.scatter(table.loc[part, "task_gain"], ratio[part], color=color, marker=marker, s=60, label=name)
        for index, row in table.iterrows():
            if row["steps"]:
                ax.annotate(f"{row['setting']} @{row['steps']}", (row["task_gain"], ratio[index]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        ax.axhline(1, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(times)
        if ratio.max() / ratio.min() < 10:  # within a decade every minor tick needs its label; beyond, x2 and x5 do
            ax.yaxis.set_minor_formatter(times)
        else:
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"x{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set(xlabel="task gain (base task loss - task loss)", ylabel=f"{label} (log scale)")
    axes[0].legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
