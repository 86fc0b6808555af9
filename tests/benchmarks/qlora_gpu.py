"""QLoRA and the memory planner on a GPU: what notebook 03 does there, as one script.

    python tests/benchmarks/qlora_gpu.py [--steps 60] [--out DIR] [--check-hash HEX] [--skip-validate]

1. (optional) checks that the default model converted on this machine is the one the course uses elsewhere
   (a hash of every tensor), so the numbers below are about the same weights;
2. `course_lib.qlora.memory_check.validate(device="cuda")`: predicted vs measured peak memory (torch.cuda.max_memory_allocated)
   for full / LoRA / QLoRA on SmolLM2-135M (real weights) and a 360M config (random weights);
3. the notebook's QLoRA run: the default model in 4-bit NF4 with bf16 compute, paged 8-bit AdamW, the course task,
   exact match before and after, measured peak training memory next to the planner's prediction.
Prints a short table last; writes JSON under --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time


def tensor_hash(folder: str) -> str:
    """sha256 over every tensor (name and float32 bytes, sorted by name) of a safetensors checkpoint."""
    from safetensors.torch import load_file

    state = load_file(os.path.join(folder, "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def qlora_run(steps: int, batch_size: int, n_test: int) -> dict:
    """The notebook's section 6 on this device."""
    import torch

    import course_lib
    from course_lib.core import tasks
    from course_lib.data.tokenize import to_rows
    from course_lib.evaluation.generate import chat_generate
    from course_lib.evaluation.metrics import exact_match_report
    from course_lib.qlora import memory, memory_check
    from course_lib.qlora.bnb import footprint, load_qlora_base
    from course_lib.training import finetune
    from course_lib.training.finetune import LoraSettings, finetune_qlora

    session = course_lib.start("full", seed=0)
    device = session.device.type
    started = time.perf_counter()
    model, tokenizer = load_qlora_base("default")
    load_s = time.perf_counter() - started
    splits = tasks.make_splits(n_train=400, n_val=50, n_test=n_test, seed=0)
    prompts = [tasks.prompt_messages(e) for e in splits["test"]]
    references = [e.answer for e in splits["test"]]
    before = exact_match_report(chat_generate(model, tokenizer, prompts, max_new_tokens=64, progress=False), references)
    settings = LoraSettings(steps=steps, batch_size=batch_size, seed=0)
    conversations = [tasks.to_messages(e) for e in splits["train"]]
    seen = {}
    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's wrapper
            bits = getattr(getattr(inner, "args", None), "optim_bits", 32)
            paged = " paged" if getattr(inner, "is_paged", False) else ""
            seen["optimizer"] = f"{type(inner).__module__}.{type(inner).__name__} ({bits}-bit{paged})"

    original = finetune.train

    def train_with_spy(*args, callbacks=(), **kwargs):
        return original(*args, callbacks=[*callbacks, Spy()], **kwargs)

    finetune.train = train_with_spy
    try:
        with memory_check.PeakMemory(device) as measured:
            result = finetune_qlora(model, tokenizer, conversations, settings, progress=False)
    finally:
        finetune.train = original
    after = exact_match_report(chat_generate(result.model, tokenizer, prompts, max_new_tokens=64, progress=False),
                               references)
    longest = max(len(r["input_ids"]) for r in to_rows(conversations, tokenizer, settings.max_length))
    predicted = memory.estimate(model.config, "qlora", batch_size=batch_size, seq_len=longest, r=settings.r,
                                targets=settings.target_modules, precision="bf16" if device == "cuda" else "fp32",
                                device=device, optimizer="paged_adamw_8bit" if device == "cuda" else "adamw",
                                gradient_checkpointing=True)
    training_part = predicted.allocated_bytes - predicted.breakdown["weights"]  # the weights were there before
    sizes = footprint(result.model)  # with the adapters
    return {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "load_seconds": load_s, "train_seconds": result.seconds, "steps": result.global_step,
        "first_loss": result.losses[0], "last_loss": result.losses[-1], "optimizer": seen.get("optimizer"),
        "before": before.accuracy, "after": after.accuracy, "n_test": n_test,
        "weights_measured": sum(sizes.values()), "weights_predicted": predicted.breakdown["weights"],
        "training_measured": measured.peak_bytes, "training_predicted": training_part, "longest_row": longest,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--check-hash")
    parser.add_argument("--skip-validate", action="store_true")
    args = parser.parse_args()

    from course_lib.core.models import resolve
    from course_lib.qlora import memory_check

    path = resolve("default")[0]
    if args.check_hash:
        found = tensor_hash(path)
        print(f"default model tensors: {'same as expected' if found == args.check_hash else 'DIFFERENT: ' + found}",
              flush=True)
    rows = []
    if not args.skip_validate:
        rows = memory_check.validate("cuda", ("135M", "360M"))
        with open(os.path.join(args.out, "validate_cuda.json"), "w") as f:
            json.dump(rows, f, indent=1, default=str)
    run = qlora_run(args.steps, args.batch_size, args.n_test)
    with open(os.path.join(args.out, "qlora_gpu.json"), "w") as f:
        json.dump(run, f, indent=1)
    mib = 2**20
    print(f"\nQLoRA on {run['device']}: {run['steps']} steps (batch {args.batch_size}) in {run['train_seconds']:.0f} s, "
          f"optimizer {run['optimizer']}, loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}")
    print(f"exact match on {run['n_test']} held-out examples: {run['before']:.0%} -> {run['after']:.0%}")
    print(f"weights: measured {run['weights_measured'] / mib:.0f} MiB, predicted {run['weights_predicted'] / mib:.0f} MiB")
    error = (run["training_predicted"] - run["training_measured"]) / run["training_measured"]
    print(f"training peak above the weights: measured {run['training_measured'] / mib:.0f} MiB, "
          f"predicted {run['training_predicted'] / mib:.0f} MiB ({100 * error:+.0f}%), longest row {run['longest_row']}")
    if rows:
        print("\nplanner validation (max_memory_allocated):")
        for row in rows:
            print(f"  {row['model']:<5} {row['setup']:<36} predicted {row['predicted'] / 2**30:6.3f} GiB  "
                  f"measured {row['measured'] / 2**30:6.3f} GiB  {100 * row['error']:+6.1f}%")


if __name__ == "__main__":
    main()
