"""Shared fixtures of every test folder: the real default tokenizer, a tiny Llama, the nbgrader course.

Helpers that are not fixtures (paths, notebook metadata) live in tests/helpers.py.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.helpers import SOLUTIONS

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# notebook 01 writes the course data that 03-06 read: into a folder of this run, never the tester's home
os.environ.setdefault("COURSE_DATA", tempfile.mkdtemp(prefix="course-data-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One core per xdist worker and per kernel it starts: two workers each running 2 OpenMP threads
    # plus their notebook kernels oversubscribe a 2-core machine and run about ten times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (real chat template, real vocabulary)."""
    from course_lib.core.models import load_tokenizer

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


@pytest.fixture
def tied_llama(tiny_llama):
    """The tiny Llama with its output layer tied to the embeddings, as in every SmolLM2, and weights of a trained
    model's scale (its logits reach about ±6): for checks of exported files, where rounding must show."""
    import copy

    import torch

    model = copy.deepcopy(tiny_llama)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights ten times the init's, so that logits are as large as a trained model's
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.2, generator=generator)
    return model.eval()


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    """One nbgrader course holding every solution notebook, shared by all grading tests of a worker; the xdist
    workers of one run share the reference solutions' reports, so each reference runs once, not once a worker."""
    from course_lib.instructor import grading

    run = tmp_path_factory.getbasetemp()
    shared = run.parent if os.environ.get("PYTEST_XDIST_WORKER") else run
    built = grading.Course(SOLUTIONS, references=shared / "references")
    yield built
    built.cleanup()

