"""The fast path's fused LoRA layers (course_lib.fast.lora) against peft: the same outputs and gradients, on a plain
and on a 4-bit base."""

import pytest
import torch

from course_lib.fast.lora import attach_lora, cache_dense_weights, fuse_lora, group_lora, unfuse_lora
from course_lib.fast.settings import FastSettings


def lora_model(model, dropout=0.0):
    return attach_lora(model, FastSettings(r=4, alpha=8, dropout=dropout, seed=3))


def forward_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    (logits.float() * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads



def close_in_norm(got, want):
    """Equal to fp32 rounding relative to the whole gradient: the fused layers sum the same products in another
    order, so one entry that cancels to near zero can differ by more than an elementwise tolerance allows."""
    return (got - want).norm() <= 1e-5 * want.norm() + 1e-7

@pytest.mark.parametrize("four_bit", [False, True])
def test_fused_lora_matches_peft(tiny_llama, tmp_path, four_bit):
    if four_bit:  # a real bitsandbytes NF4 base, as QLoRA loads it
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)  # bitsandbytes' CPU kernels want rows of at least one 64-value block
        LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=torch.float32)
    else:
        base = tiny_llama
    model = lora_model(base).train()  # training mode: bitsandbytes' CPU inference repacking stays off
    for name, p in model.named_parameters():  # B starts at zero; make the adapters matter
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    ids = torch.randint(3, 1000, (2, 11))
    want_logits, want = forward_and_grads(model, ids)
    assert fuse_lora(model) == 2 * 7
    got_logits, got = forward_and_grads(model, ids)
    assert torch.allclose(got_logits, want_logits, atol=1e-5)
    assert want.keys() == got.keys() and all(close_in_norm(got[n], want[n]) for n in want)
    assert group_lora(model) == 2 * 2  # q/k/v and gate/up of both layers
    grouped_logits, grouped = forward_and_grads(model, ids)
    assert torch.allclose(grouped_logits, want_logits, atol=1e-5)
    assert all(close_in_norm(grouped[n], want[n]) for n in want)
    if four_bit:  # dequantized once and cached: the very same numbers
        assert cache_dense_weights(model, 1e12, torch.float32) > 0
        cached_logits, cached = forward_and_grads(model, ids)
        assert torch.allclose(cached_logits, want_logits, atol=1e-5)
        assert all(torch.allclose(cached[n], want[n], atol=1e-5, rtol=1e-4) for n in want)
    unfuse_lora(model)
    assert all(not {"forward", "_course_dense", "_course_group", "_course_pending"} & m.__dict__.keys()
               for m in model.modules())


def test_grouped_lora_layer_called_alone_computes_alone(tiny_llama):
    """A follower (k_proj) called without its leader's pass, or with another input, still gives its own output."""
    model = lora_model(tiny_llama).train()
    attn = model.get_base_model().model.layers[0].self_attn
    x = torch.randn(2, 5, 32)
    want_k = attn.k_proj(x)
    fuse_lora(model)
    group_lora(model)
    assert torch.allclose(attn.k_proj(x), want_k, atol=1e-6)  # nothing pending
    attn.q_proj(x)
    assert torch.allclose(attn.k_proj(x.clone()), want_k, atol=1e-6)  # another tensor: computed, not taken
    assert "_course_pending" not in attn.k_proj.__dict__


def test_fused_lora_leaves_dropout_layers_to_peft(tiny_llama):
    assert fuse_lora(lora_model(tiny_llama, dropout=0.05)) == 0  # dropout needs peft's own forward
