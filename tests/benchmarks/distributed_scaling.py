"""Benchmark: tokens/s of course_lib.scaling.distributed on 1 and N processes, and the scaling efficiency.

    python tests/benchmarks/distributed_scaling.py                 # GPUs: 1 and 2 GPUs, DDP+LoRA and FSDP+full
    python tests/benchmarks/distributed_scaling.py --cpu           # tiny shapes on CPU cores (gloo): checks it runs
    python tests/benchmarks/distributed_scaling.py --out results.json

Weak scaling: every process keeps the same per-device batch, so N processes do N times the work per step;
efficiency = tokens/s on N / (N x tokens/s on 1), goal 0.9 (a 1.8x speed-up on 2 GPUs). The models are the
SmolLM2 shapes with random weights (no download; the speed of a step does not depend on the weights' values),
trained on random tokens of a fixed length, every token counted. Each run is a fresh `accelerate launch`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from course_lib.scaling.distributed import RunConfig, launch, scaling_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", action="store_true", help="tiny model on CPU processes (gloo)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--arch", default="smollm2-1.7b")
    parser.add_argument("--out", help="write every run's RunResult here as JSON")
    args = parser.parse_args()
    if args.cpu:
        common = dict(model="random:tiny", data="random", seq_len=64, steps=6, warmup_steps=2, cpu=True)
        plans = [RunConfig(strategy="ddp", method="lora", per_device_batch=4, **common),
                 RunConfig(strategy="fsdp", method="full", per_device_batch=4, **common)]
    else:
        common = dict(model=f"random:{args.arch}", data="random", seq_len=1024)
        plans = [RunConfig(strategy="ddp", method="lora", per_device_batch=8, steps=25, warmup_steps=5, **common),
                 RunConfig(strategy="fsdp", method="full", per_device_batch=8, steps=20, warmup_steps=5, **common)]
    results = []
    for plan in plans:
        for n in (1, args.processes):
            started = time.perf_counter()
            try:
                result = launch(n, plan, progress=False)
            except RuntimeError as error:  # keep the other runs: one failure should not cost the whole lease
                print(f"FAILED {plan.strategy}/{plan.method} on {n}: {error}", flush=True)
                continue
            results.append(result)
            print(f"{plan.strategy}/{plan.method} on {n}: {result.tokens_per_s:,.0f} tokens/s, "
                  f"peak {result.peak_memory_gb or 0:.1f} GB, loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, "
                  f"identical={result.weights_identical}, launch {time.perf_counter() - started:.0f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"\n{results[0].device if results else '?'}, {results[0].model if results else ''}")
    print(f"{'strategy':10} {'proc':>4} {'tokens/s':>12} {'speed-up':>9} {'efficiency':>10} {'peak GB':>8} "
          f"{'trainable':>12}")
    for row, r in zip(scaling_rows(results), results):
        print(f"{row['strategy'] + '/' + row['method']:10} {row['processes']:>4} {row['tokens/s']:>12,.0f} "
              f"{row['speed-up']:>8.2f}x {row['efficiency']:>10.0%} {row['peak GB'] or 0:>8.1f} {r.n_trainable:>12,}")


if __name__ == "__main__":
    main()
