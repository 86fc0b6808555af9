"""Notebook 03's QLoRA adapter, kept in the course cache so that notebook 06 can merge the very adapter 03 trained.

A QLoRA run on the CPU takes minutes; 06 should not repeat it. 03 saves its adapter with a record of how the base
was loaded (which weights, compute dtype, double quantization): merging into the dequantized NF4 base is only
exact when the base is quantized again exactly as it was during training.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel

from course_lib.core.models import cache_dir, resolve
from course_lib.qlora.bnb import load_qlora_base

RECORD = "course_run.json"


def handoff_dir(profile: str = "full") -> Path:
    """Where notebook 03 keeps the QLoRA adapter of a profile's run: <course cache>/runs/03-qlora-<profile> (a quick
    smoke run never replaces the full one)."""
    return cache_dir() / "runs" / f"03-qlora-{profile}"


@dataclass(frozen=True)
class SavedQLoRA:
    """A saved QLoRA adapter and how its 4-bit base was loaded during training."""

    folder: str
    base: str  # the course name (or folder) the base was loaded from
    weights: str  # where that name resolved: the converted folder offline, the hub id online
    compute_dtype: str  # "float32", "bfloat16", ...
    double_quant: bool
    profile: str
    steps: int
    exact_match: float | None = None  # of the unmerged QLoRA model on the first `test_rows` test rows, if measured
    test_rows: int | None = None
    max_new_tokens: int | None = None  # the decoding it was measured with (greedy, chat_generate)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype as a torch dtype."""
        return getattr(torch, self.compute_dtype)


def save_qlora_run(peft_model, base: str, compute_dtype, profile: str, steps: int, double_quant: bool = True,
                   exact_match: float | None = None, test_rows: int | None = None, max_new_tokens: int | None = None,
                   folder: str | Path | None = None) -> SavedQLoRA:
    """Save a trained QLoRA adapter (safetensors) with its record, replacing the previous one at once.

    `exact_match`, `test_rows` and `max_new_tokens`: what the unmerged model scored, on how many of the course
    data's test rows, with how many new tokens, so that a later notebook can score the merges the same way.
    """
    target = Path(folder) if folder is not None else handoff_dir(profile)
    target.parent.mkdir(parents=True, exist_ok=True)
    saved = SavedQLoRA(str(target), str(base), str(resolve(str(base))[0]), str(compute_dtype).replace("torch.", ""),
                       bool(double_quant), profile, int(steps), exact_match, test_rows, max_new_tokens)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        (tmp / RECORD).write_text(json.dumps(asdict(saved), indent=1))
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)  # a reader sees the old run or the new one, never half of one
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return saved


def find_qlora_run(base: str = "default", profile: str = "full", compute_dtype: str | None = "float32",
                   folder: str | Path | None = None) -> SavedQLoRA | None:
    """The adapter 03 saved, if there is one for these weights (same resolved source), this profile and, when
    given, this compute dtype; None otherwise."""
    source = Path(folder) if folder is not None else handoff_dir(profile)
    try:
        saved = SavedQLoRA(**json.loads((source / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not (source / "adapter_model.safetensors").is_file():
        return None
    if saved.weights != str(resolve(str(base))[0]) or saved.profile != profile:
        return None  # trained on other weights (the hub, a larger model) or in a quick profile
    if compute_dtype is not None and saved.compute_dtype != compute_dtype:
        return None
    return SavedQLoRA(**{**asdict(saved), "folder": str(source)})


def load_qlora_run(saved: SavedQLoRA, device: str | None = None):
    """(the unmerged QLoRA model, tokenizer): the base quantized exactly as in training, with the saved adapter."""
    model, tokenizer = load_qlora_base(saved.base, compute_dtype=saved.dtype, device=device,
                                       double_quant=saved.double_quant, prepare=False)
    model = PeftModel.from_pretrained(model, saved.folder)
    model.eval()
    return model, tokenizer
