"""Merging a QLoRA adapter, measured: into the dequantized NF4 base it was trained against, or into the original W.

During QLoRA training every forward pass computed `dequant(NF4(W)) x + (alpha/r) B A x`: the adapter learned a
correction to NF4(W), not to W. Merging it into `dequant(NF4(W))` writes that same function out as float32 weights;
merging it into W adds the update to weights the adapter never saw, giving a model nobody evaluated.
`compare_qlora_merges` builds both from the saved adapter and measures each against the unmerged QLoRA model computing
as in training: its logits on fixed prompts and, given an `evaluate` function, the task metric.

One subtlety of the CPU: on processors with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer for a faster
inference kernel the first time it runs in eval mode without gradients, and that kernel keeps the block scales in
bf16. The QLoRA model you *evaluate* there therefore differs a little from the one that was *trained* (float32
scales, the path with gradients); the comparison shows both.
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from transformers import AutoModelForCausalLM

from course_lib.core.models import resolve
from course_lib.deployment.adapters import load_adapter, logits_on, max_abs_logit_diff, merge
from course_lib.qlora.bnb import load_4bit, unpack_cpu_weights

CANDIDATES = ("QLoRA model, computing as in training", "QLoRA model, as evaluated here (inference kernel)",
              "merged into dequantized NF4(W)", "merged into W (float32)")


@dataclass
class MergeCandidate:
    """One model measured against the unmerged QLoRA model on the same batch."""

    name: str
    max_logit_diff: float
    mean_logit_diff: float
    same_top_token: float  # share of real positions whose most likely next token is the QLoRA model's
    metric: float | None = None  # the task metric, when an `evaluate` function was given


def training_path_logits(qlora_model, batch: Mapping) -> torch.Tensor:
    """The 4-bit model's logits computed as during training: float32 block scales, no CPU inference repacking.

    Call it before the model runs in eval mode without gradients: repacking rounds the scales to bf16 for good
    (unpacking quantizes the rounded ones again), and then this warns that the result is only close.
    """
    import bitsandbytes as bnb

    layers = [m for m in qlora_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    allowed = [getattr(m, "support_avx512bf16_for_cpu", False) for m in layers]
    if unpack_cpu_weights(qlora_model):
        warnings.warn("the 4-bit layers had been repacked for bitsandbytes' CPU inference kernel, which rounds block "
                      "scales to bf16: the training path is reproduced only approximately", stacklevel=2)
    try:
        for layer in layers:
            layer.support_avx512bf16_for_cpu = False  # the flag bitsandbytes checks before repacking (0.50)
        return logits_on(qlora_model, batch)
    finally:
        for layer, flag in zip(layers, allowed):
            layer.support_avx512bf16_for_cpu = flag


def _measure(name: str, model, reference: torch.Tensor, batch: Mapping, evaluate) -> MergeCandidate:
    logits = logits_on(model, batch)
    keep = batch["attention_mask"].bool()
    diff = (logits - reference).abs()[keep]
    same = (logits.argmax(-1) == reference.argmax(-1))[keep].float().mean()
    metric = evaluate(model) if evaluate is not None else None
    return MergeCandidate(name, max_abs_logit_diff(logits, reference, batch["attention_mask"]), float(diff.mean()),
                          float(same), metric)


def dequantized_base(base: str | Path = "default", compute_dtype=torch.float32, double_quant: bool = True,
                     device: str | None = None):
    """The base loaded in 4-bit NF4 exactly as the QLoRA run loaded it, then dequantized: NF4(W) in float32."""
    return load_4bit(str(base), compute_dtype=compute_dtype, device=device, double_quant=double_quant,
                     prepare=False).dequantize()


def original_base(base: str | Path = "default", dtype=torch.float32, device: str | None = None):
    """The base's own weights W (a course name or a folder), safetensors only."""
    path, extra = resolve(str(base))
    model = AutoModelForCausalLM.from_pretrained(path, **extra, dtype=dtype, use_safetensors=True)
    return model.to(device or "cpu").eval()


def compare_qlora_merges(qlora_model, adapter_folder: str | Path, batch: Mapping, base: str | Path = "default",
                         compute_dtype=torch.float32, double_quant: bool = True,
                         evaluate: Callable[[object], float] | None = None,
                         unmerged_metric: float | None = None) -> list[MergeCandidate]:
    """The unmerged QLoRA model (computing as in training, and as evaluated here) and its two merges, each measured
    against the first on `batch`.

    `qlora_model` is the model that was trained and evaluated (4-bit base + adapter), `adapter_folder` its saved
    adapter, `base` the course name or folder it was loaded from; `compute_dtype` and `double_quant` must be the
    settings the QLoRA base was loaded with, so that the dequantized base holds the very weights it computed with.
    Rows come in the order of `CANDIDATES`. `unmerged_metric`: the unmerged model's score measured before, with the
    same `evaluate` (a 4-bit model generates slowly on a CPU); without it the unmerged model is evaluated here.
    """
    if "attention_mask" not in batch:
        raise ValueError("batch needs an attention_mask: padded positions must be left out of the comparison")
    qlora_model.eval()
    device = str(next(qlora_model.parameters()).device)
    reference = training_path_logits(qlora_model, batch)
    rows = [MergeCandidate(CANDIDATES[0], 0.0, 0.0, 1.0)]
    evaluated = _measure(CANDIDATES[1], qlora_model, reference, batch, None if unmerged_metric is not None else evaluate)
    if unmerged_metric is not None:
        evaluated.metric = unmerged_metric
    rows.append(evaluated)
    for name, make_base in [(CANDIDATES[2], lambda: dequantized_base(base, compute_dtype, double_quant, device)),
                            (CANDIDATES[3], lambda: original_base(base, compute_dtype, device))]:
        merged = merge(load_adapter(make_base(), adapter_folder))
        rows.append(_measure(name, merged, reference, batch, evaluate))
        del merged
        gc.collect()  # one float32 copy of the model at a time
    return rows
