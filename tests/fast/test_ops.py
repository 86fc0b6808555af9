"""The fast path's kernels (course_lib.fast.ops) against the library on a CPU: varlen attention keeps packed examples
apart, the chunked linear cross-entropy equals torch's, the fp32 master weights step and clip like AdamW."""

import copy

import pytest
import torch

from course_lib.fast.ops import (MasterWeights, linear_cross_entropy_sum, make_adamw, packed_kwargs, padded_attention,
                                  register_attention)
from course_lib.fast.packing import pack_rows
from tests.helpers import random_rows

# ---------------------------------------------------------------------------------------------------- attention


def packed_logits(model, rows):
    batch = pack_rows(rows)
    hidden = model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, **packed_kwargs(batch))
    return model.get_output_embeddings()(hidden.last_hidden_state[0])


def test_packed_forward_equals_each_example_alone(tiny_llama):
    rows = random_rows([7, 31, 1, 18, 12])
    model = tiny_llama.eval()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
        model.set_attn_implementation(register_attention())
        packed = packed_logits(model, rows)
    assert packed.shape == alone.shape
    assert torch.allclose(packed, alone, atol=1e-5, rtol=1e-4)


def test_packed_forward_matches_transformers_own_packed_sdpa(tiny_llama):
    """transformers builds a block-diagonal mask from restarting position ids; our varlen path must agree."""
    rows = random_rows([9, 14, 5])
    batch = pack_rows(rows)
    model = tiny_llama.eval()
    with torch.no_grad():
        library = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
        model.set_attn_implementation(register_attention())
        ours = packed_logits(model, rows)
    assert torch.allclose(ours, library, atol=1e-5, rtol=1e-4)


def test_no_attention_across_examples(tiny_llama):
    rows = random_rows([10, 12, 9])
    changed = copy.deepcopy(rows)
    changed[0]["input_ids"] = [(t * 7 + 1) % 1000 + 3 for t in changed[0]["input_ids"]]  # rewrite example 0 only
    model = tiny_llama.eval()
    model.set_attn_implementation(register_attention())
    with torch.no_grad():
        a, b = packed_logits(model, rows), packed_logits(model, changed)
    assert not torch.allclose(a[:10], b[:10])  # example 0 itself changed
    assert torch.equal(a[10:], b[10:])  # examples 1 and 2 saw nothing of it



@pytest.mark.parametrize("lengths, kv_heads", [([5, 1, 8, 3], 2), ([6], 4), ([2, 7, 7], 1)])
def test_padded_attention_gradients_equal_each_example_alone(lengths, kv_heads):
    """Its own backward (inverse gathers, no scatter-add) gives the gradients of per-example causal SDPA."""
    torch.manual_seed(0)
    heads, dim, total = 4, 8, sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(1, h, total, dim, dtype=torch.float64, requires_grad=True)
               for h in (heads, kv_heads, kv_heads))
    grad_out = torch.randn(1, total, heads, dim, dtype=torch.float64)
    ours = torch.autograd.grad((padded_attention(q, k, v, cu, max(lengths)) * grad_out).sum(), (q, k, v))
    pieces = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qe, ke, ve = q[:, :, a:b], k[:, :, a:b], v[:, :, a:b]
        ke, ve = ke.repeat_interleave(heads // kv_heads, 1), ve.repeat_interleave(heads // kv_heads, 1)
        pieces.append(torch.nn.functional.scaled_dot_product_attention(qe, ke, ve, is_causal=True).transpose(1, 2))
    reference = torch.autograd.grad((torch.cat(pieces, dim=1) * grad_out).sum(), (q, k, v))
    for name, a, b in zip("qkv", ours, reference):
        assert torch.allclose(a, b, atol=1e-10), name



def test_padded_attention_passes_gradcheck():
    torch.manual_seed(0)
    cu = torch.tensor([0, 3, 4, 6], dtype=torch.int32)  # examples of 3, 1 and 2 tokens
    inputs = [torch.randn(1, h, 6, 4, dtype=torch.float64, requires_grad=True) for h in (2, 1, 1)]
    assert torch.autograd.gradcheck(lambda q, k, v: padded_attention(q, k, v, cu, 3), inputs)

# ---------------------------------------------------------------------------------------------------- loss and optimizer


def test_linear_cross_entropy_matches_torch():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    ours = linear_cross_entropy_sum(hidden, weight, targets, chunk=8)  # several chunks, a ragged last one
    gh, gw = torch.autograd.grad(3.0 * ours, (hidden, weight))
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    rh, rw = torch.autograd.grad(3.0 * ref, (hidden, weight))
    assert torch.allclose(ours, ref) and torch.allclose(gh, rh) and torch.allclose(gw, rw)


def test_linear_cross_entropy_ignores_padded_rows():
    torch.manual_seed(1)
    hidden = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (20,))
    targets[[0, 7, 19]] = -100
    ours = linear_cross_entropy_sum(hidden, weight, targets, chunk=6, ignore_index=-100)
    gh, gw = torch.autograd.grad(ours, (hidden, weight))
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum", ignore_index=-100)
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    assert torch.allclose(ours, ref) and torch.allclose(gh, rh) and torch.allclose(gw, rw)
    assert gh[[0, 7, 19]].abs().max() == 0


def test_master_weights_step_in_fp32_and_copy_back():
    param = torch.nn.Parameter(torch.full((4,), 1.0, dtype=torch.bfloat16))
    other = torch.nn.Parameter(torch.full((2, 3), 2.0, dtype=torch.bfloat16))
    master = MasterWeights([param, other], make_adamw("plain", lr=1e-3, weight_decay=0.0))
    assert param.grad is not None and param.grad.abs().sum() == 0  # a zeroed buffer the backward adds into
    (param.sum() + other.sum()).backward()
    assert torch.equal(param.grad, torch.ones(4, dtype=torch.bfloat16))
    master.clip_and_step(None)
    assert master.master.dtype == torch.float32 and master.master.shape == (10,)
    assert torch.allclose(master.master, torch.tensor([0.999] * 4 + [1.999] * 6))  # Adam's first step moves by lr
    assert param.dtype == torch.bfloat16 and torch.equal(param.data, master.master[:4].to(torch.bfloat16))
    master.zero_grad()
    assert param.grad.abs().sum() == 0 and other.grad.abs().sum() == 0
    master.release()  # own storage again, no gradients: safetensors can save them
    assert param.grad is None and param.data.untyped_storage().data_ptr() != other.data.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="no trainable"):
        MasterWeights([torch.nn.Parameter(torch.ones(2), requires_grad=False)], make_adamw("plain", 1e-3, 0.0))
    with pytest.raises(ValueError, match="one dtype"):
        MasterWeights([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))],
                      make_adamw("plain", 1e-3, 0.0))


def test_master_weights_clip_one_global_norm():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    master = MasterWeights([a, b], make_adamw("plain", lr=1e-3, weight_decay=0.0))
    a.grad.copy_(torch.tensor([3.0, 0.0, 0.0]))
    b.grad.copy_(torch.tensor([0.0, 4.0, 0.0, 0.0]))
    norm = master.clip_and_step(1.0)
    assert float(norm) == pytest.approx(5.0)
    assert torch.allclose(master.flat_grad, torch.tensor([0.6, 0, 0, 0, 0.8, 0, 0]))  # clipped to norm 1


def test_fp16_loss_scaling_keeps_small_gradients_and_skips_overflowed_steps():
    """fp16 rounds gradients below about 6e-8 to zero: the scaled loss keeps them, the masters get them unscaled,
    and a step whose gradients overflowed changes nothing and halves the scale (torch's GradScaler rules)."""
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    (plain * 1e-8).sum().backward()
    assert plain.grad.abs().sum() == 0  # without scaling, the gradient is gone
    sgd = lambda params: torch.optim.SGD(params, lr=1e6)  # noqa: E731 - a step that moves by 1e6 x the gradient
    master = MasterWeights([param], sgd)
    assert master.loss_scale is not None and float(master.backward_scale(4)) == 2.0**16 / 4
    ((param.float() * 1e-8).sum() * master.backward_scale(1)).backward()  # the loss in fp32, as the engine's
    norm = master.clip_and_step(None)
    assert float(norm) == pytest.approx(2e-8, rel=1e-2)  # the norm of the unscaled gradient
    assert torch.allclose(master.master, torch.full((4,), 1 - 1e-2), rtol=1e-3)  # moved by the unscaled gradient
    before = master.master.detach().clone()
    master.zero_grad()
    param.grad.fill_(float("inf"))
    master.clip_and_step(1.0)
    assert torch.equal(master.master, before) and master.loss_scale.skipped == 1
    assert float(master.loss_scale.scale) == 2.0**15
    assert MasterWeights([torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))], sgd).loss_scale is None
