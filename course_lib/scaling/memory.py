"""Model-state memory per GPU under data parallelism and its sharded variants (ZeRO stages / FSDP).

Mixed-precision Adam keeps about 16 bytes per parameter: 2 for the bf16 weights, 2 for the gradients and 12 for
the optimizer (an fp32 master copy and Adam's two moments; Rajbhandari et al., 2020). DDP keeps all of it on every
GPU; each ZeRO stage shards one more part of it over the N GPUs.
"""

from __future__ import annotations

# Cheapest communication first: each later strategy saves memory by moving more data every step.
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")


def bytes_per_param(strategy: str, gpus: int) -> float:
    """Bytes of model state each of `gpus` GPUs keeps per parameter under `strategy`."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    kept = {"ddp": 16, "zero1": 4 + 12 / gpus, "zero2": 2 + 14 / gpus, "zero3": 16 / gpus}
    if strategy not in kept:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return kept[strategy]


def model_state_gb(n_params: float, gpus: int, strategy: str) -> float:
    """GB (10**9 bytes) of weights, gradients and Adam states per GPU."""
    return n_params * bytes_per_param(strategy, gpus) / 1e9


def cheapest_strategy(n_params: float, gpus: int, gpu_gb: float, activations_gb: float) -> str | None:
    """The first strategy, in order of communication cost, whose model states and activations fit one GPU."""
    for strategy in STRATEGIES:
        if model_state_gb(n_params, gpus, strategy) + activations_gb <= gpu_gb:
            return strategy
    return None
