"""The output layer on scored positions only, and generation batches sized by tokens, against what they replace.

Each pair runs in the same process, alternating (baseline, new, baseline, new, ...), on the default model and the
course task, and the script prints the new/old speed ratio from the medians:

- `train()` (the Trainer) with the stock `Trainer` against `ScoredLogitsTrainer`: notebook 04's shape, steps of 2
  conversations with a validation pass of 16 every 5 steps; the losses must agree;
- `metrics.perplexity` and `teacher_forced.score_answers` with every logit against scored positions only;
- `chat_generate` at its old fixed batch of 16 (`prompting_baselines` 3-shot at its old 8) against batches sized by
  tokens; the replies must agree.

    python tests/benchmarks/cpu_evaluation.py --out tests/benchmarks/cpu_evaluation_2core.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import Trainer

from course_lib.core import tasks
from course_lib.core.models import load_causal_lm
from course_lib.data import course_data
from course_lib.data.tokenize import tokenize_chat
from course_lib.evaluation import metrics, prompting, teacher_forced
from course_lib.evaluation.generate import chat_generate
from course_lib.training import scored_logits, trainer
from course_lib.training.config import TrainConfig
from course_lib.training.methods import apply_method


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def pair(name: str, old, new, repeats: int) -> dict:
    """Median seconds of `old` and `new`, run alternately; their last results, for the caller to compare."""
    seconds = {"old": [], "new": []}
    results = {}
    for _ in range(repeats):
        for key, fn in (("old", old), ("new", new)):
            took, results[key] = timed(fn)
            seconds[key].append(round(took, 2))
    row = {"name": name, "old_s": seconds["old"], "new_s": seconds["new"],
           "speedup": round(statistics.median(seconds["old"]) / statistics.median(seconds["new"]), 3)}
    print(f"{name}: old {seconds['old']} s, new {seconds['new']} s, {row['speedup']}x", flush=True)
    return row | {"results": results}


def trainer_pair(tokenizer, splits, repeats: int, steps: int) -> dict:
    train_chats = [tasks.to_messages(e) for e in splits["train"]]
    val_chats = [tasks.to_messages(e) for e in splits["validation"][:16]]
    config = TrainConfig(max_steps=steps, per_device_batch_size=2, learning_rate=2e-3, eval_strategy="steps",
                         eval_steps=5, seed=0)

    def run(trainer_class):
        def go():
            trainer.ScoredLogitsTrainer = trainer_class
            model = apply_method(load_causal_lm(dtype=torch.float32)[0], "lora")
            result = trainer.train(model, tokenizer, train_chats, config, eval_data=val_chats, progress=False)
            return [h["loss"] for h in result.history] + [h["eval_loss"] for h in result.eval_history]
        return go

    scored = trainer.ScoredLogitsTrainer
    row = pair(f"train(): {steps} steps of 2, validation of 16 every 5", run(Trainer), run(scored), repeats)
    trainer.ScoredLogitsTrainer = scored
    old, new = row.pop("results").values()
    row["largest_loss_difference"] = max(abs(a - b) for a, b in zip(old, new))
    return row


def evaluation_pair(model, tokenizer, splits, repeats: int) -> dict:
    rows = [tokenize_chat(tasks.to_messages(e), tokenizer) for e in splits["test"]]
    keeps = scored_logits.keeps_logits

    def run(keep: bool):
        def go():
            scored_logits.keeps_logits = keeps if keep else (lambda model: False)
            try:
                return (metrics.perplexity(model, rows, batch_size=8, progress=False).mean_nll,
                        teacher_forced.score_answers(model, rows).nll_sum)
            finally:
                scored_logits.keeps_logits = keeps
        return go

    row = pair(f"perplexity + score_answers on {len(rows)} test chats", run(False), run(True), repeats)
    old, new = row.pop("results").values()
    row["largest_relative_difference"] = max(abs(a - b) / abs(a) for a, b in zip(old, new))
    return row


def generation_pairs(model, tokenizer, splits, repeats: int) -> list[dict]:
    test = splits["test"]
    prompts = [tasks.prompt_messages(e) for e in test]
    zero = pair(f"chat_generate, {len(prompts)} prompts, 48 new tokens: batch 16 against by tokens",
                lambda: chat_generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=16, progress=False),
                lambda: chat_generate(model, tokenizer, prompts, max_new_tokens=48, progress=False), repeats)
    few = pair(f"prompting_baselines 3-shot, {len(test) // 2} prompts: batch 8 against by tokens",
               lambda: prompting.prompting_baselines(model, tokenizer, test[: len(test) // 2], splits["train"],
                                                     shots=(3,), batch_size=8, progress=False)[3].replies,
               lambda: prompting.prompting_baselines(model, tokenizer, test[: len(test) // 2], splits["train"],
                                                     shots=(3,), progress=False)[3].replies, repeats)
    for row in (zero, few):
        old, new = row.pop("results").values()
        row["same_replies"] = f"{sum(a == b for a, b in zip(old, new))}/{len(old)}"
    return [zero, few]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_causal_lm()
    model.eval()
    splits = course_data.splits(n_train=400, n_val=50, n_test=96)
    rows = [trainer_pair(tokenizer, splits, args.repeats, args.steps), evaluation_pair(model, tokenizer, splits,
                                                                                     args.repeats)]
    rows += generation_pairs(model, tokenizer, splits, args.repeats)
    report = {"torch_threads": torch.get_num_threads(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
