"""Shared fixtures: the real default tokenizer, and tiny models built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One core per xdist worker and per kernel it starts: two workers each running 2 OpenMP threads
    # plus their notebook kernels oversubscribe a 2-core machine and run about ten times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (real chat template, real vocabulary)."""
    from course_lib.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def tiny_llama(tokenizer):
    """A 2-layer Llama with random weights and the default tokenizer's vocabulary: fast, shape-true."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def course():
    """One nbgrader course holding every solution notebook, shared by all grading tests."""
    from course_lib import grading

    built = grading.Course(SOLUTIONS)
    yield built
    built.cleanup()


def edited_solution(stem: str, grade_id: str, old: str, new: str, folder: Path) -> Path:
    """A copy of a solution notebook with one typical mistake put into the cell `grade_id`."""
    import json

    nb = json.loads((REPO / "solutions" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(cells) == 1, f"{stem} has no single cell {grade_id}"
    source = "".join(cells[0]["source"])
    assert old in source, f"{old!r} is not in {stem}/{grade_id}"
    cells[0]["source"] = source.replace(old, new)
    path = Path(folder) / f"{stem}.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path
