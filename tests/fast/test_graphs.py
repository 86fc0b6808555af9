"""CUDA graphs' fixed shapes, checked on a CPU: the padding changes nothing, the buckets pad as little as possible."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from course_lib.core import tasks
from course_lib.fast import engine
from course_lib.fast.engine import graphs_reason, train_fast
from course_lib.fast.graphs import MicroShape, StaticSteps, choose_budgets, learned_tokens, shape_of
from course_lib.fast.lora import attach_lora
from course_lib.fast.ops import linear_cross_entropy_sum, packed_kwargs, register_attention
from course_lib.fast.packing import pack_rows
from course_lib.fast.settings import FastSettings
from tests.helpers import random_rows


def brute_force_padding(sizes, k, align):
    values = sorted({-(-s // align) * align for s in sizes})
    best = None
    for n in range(1, min(k, len(values)) + 1):
        for budgets in itertools.combinations(values, n):
            if budgets[-1] != values[-1]:
                continue
            cost = sum(next(b for b in budgets if b >= s) - s for s in sizes)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_choose_budgets_pads_as_little_as_possible(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = (torch.randint(100, 2000, (40,), generator=g)).tolist()
    budgets = choose_budgets(sizes, 4, align=64)
    assert len(budgets) <= 4 and budgets == sorted(budgets) and all(b % 64 == 0 for b in budgets)
    assert max(sizes) <= budgets[-1]
    cost = sum(next(b for b in budgets if b >= s) - s for s in sizes)
    assert cost == brute_force_padding(sizes, 4, 64)


def test_choose_budgets_edge_cases():
    assert choose_budgets([5], 8) == [64]
    assert choose_budgets([64, 64, 128], 8) == [64, 128]
    assert choose_budgets([1, 2000, 40000], 1) == [40000 + (-40000) % 64]
    assert len(choose_budgets(list(range(1, 100000, 7)), 8)) == 8  # many distinct sizes: coarser alignment, quick
    with pytest.raises(ValueError, match="no micro-batch"):
        choose_budgets([], 4)


def test_learned_tokens_counts_the_loss_rows():
    row = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}
    assert learned_tokens(row) == 2 == pack_rows([row]).label_tokens
    assert shape_of([row, {"input_ids": [5, 6]}]) == MicroShape(tokens=6, examples=2, labels=3, longest=4)


def test_padded_micro_batch_gives_the_unpadded_loss_and_gradients(tiny_llama):
    """Padding tokens are examples of their own and carry no loss: the adapters' gradients do not move."""
    model = attach_lora(tiny_llama, FastSettings(r=4, alpha=8))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    base = model.get_base_model()
    base.set_attn_implementation(register_attention())
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    vocab = base.config.vocab_size
    groups = [random_rows([30, 7, 55], vocab, seed=1, learn_from=3), random_rows([12, 90], vocab, seed=2, learn_from=3)]
    params = [p for p in model.parameters() if p.requires_grad]
    for group in groups:
        batch = pack_rows(group)
        for p in params:
            p.grad = None
        out = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, **packed_kwargs(batch))
        hidden = out.last_hidden_state[0].index_select(0, batch.target_index)
        want_loss = linear_cross_entropy_sum(hidden, head.weight, batch.targets)
        (want_loss / 40).backward()
        want = [p.grad.clone() for p in params]

        for p in params:
            p.grad = torch.zeros_like(p)
        static = StaticSteps(decoder, head, [shape_of(g) for g in groups], max_graphs=1, capture=False)
        bucket = static.bucket_of(batch)
        assert bucket.tokens > batch.tokens and bucket.examples > len(batch.lengths)  # padded: tokens and examples
        static.begin_step(1 / 40)
        static.run(batch)
        assert torch.allclose(static.loss, want_loss.detach(), rtol=1e-5)
        assert all(torch.allclose(p.grad, w, atol=1e-7, rtol=1e-5) for p, w in zip(params, want))
        assert static.summary()["padding_share"] > 0


def sgd(kind, lr, weight_decay, **_):
    """In place of train_fast's AdamW factory: plain SGD, whose step is the gradient times the learning rate."""
    return lambda params: torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def test_static_shapes_train_like_the_eager_path(tiny_llama, tokenizer, monkeypatch):
    """`cuda_graphs=True` on a CPU runs the graphs' padded shapes without capturing: the same run, step by step."""
    conversations = [tasks.to_messages(e) for e in tasks.make_examples(12, seed=3)]
    settings = FastSettings(steps=4, batch_size=6, learning_rate=1e-2, warmup_steps=0, max_length=128,
                            max_tokens=400, max_graphs=2)  # several micro-batches a step, two sizes for them all
    start = copy.deepcopy(tiny_llama)

    def both_paths():
        eager = train_fast(copy.deepcopy(start), tokenizer, conversations, settings.replace(cuda_graphs=False),
                           progress=False)
        static = train_fast(copy.deepcopy(start), tokenizer, conversations, settings.replace(cuda_graphs=True),
                            progress=False)
        return eager, static

    eager, static = both_paths()  # AdamW, as train_fast trains
    assert eager.details["graphs"]["graphs"] == 0
    summary = static.details["graphs"]
    assert summary["graphs"] == 2 and summary["captured"] is False and 0 < summary["padding_share"] < 0.5
    assert static.losses == pytest.approx(eager.losses, rel=1e-5)
    assert [r["grad_norm"] for r in static.history] == pytest.approx([r["grad_norm"] for r in eager.history], rel=1e-4)
    assert all(p.grad is None for p in static.model.parameters())  # the flat gradient buffer is released

    # The weights are compared after SGD steps, not AdamW's: Adam's first steps move each weight by about +-lr
    # whatever its gradient's size (m / sqrt(v) is about sign(g)), so a weight whose gradient is near zero can move
    # either way when the padded and unpadded shapes sum in another order. Summing the same step in one micro-batch
    # instead of several leaves one LoRA weight of 16384 3e-6 away after these 4 AdamW steps, and the order depends
    # on the thread count (OMP_NUM_THREADS=1 under xdist). SGD's step is lr * gradient, and the gradients (clipped to
    # norm 1) agree to float rounding, so over `steps` steps the weights may differ by about steps * lr * 1e-5 at
    # most; reordering the sums changes them by 2e-10, while the updates themselves are about 1e-3.
    monkeypatch.setattr(engine, "make_adamw", sgd)
    eager, static = both_paths()
    assert static.losses == pytest.approx(eager.losses, rel=1e-5)
    mine, theirs = dict(static.model.named_parameters()), dict(eager.model.named_parameters())
    lora = [n for n in mine if "lora_" in n]
    tolerance = settings.steps * settings.learning_rate * 1e-5
    # B starts at zero, so its size is how far SGD moved it: far more than the tolerance, or the check says nothing
    assert max(float(theirs[n].abs().max()) for n in lora if "lora_B" in n) > 100 * tolerance
    for name in lora:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=tolerance, msg=name)


def test_graphs_reason_names_what_blocks_capture():
    cpu = torch.device("cpu")
    assert "CUDA" in graphs_reason(FastSettings(), cpu, {})
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        assert "dropout" in graphs_reason(FastSettings(dropout=0.05), gpu, {"dtype": "bfloat16"})
        assert graphs_reason(FastSettings(), gpu, {"dtype": "float16"}) is None  # padded SDPA: capturable too
