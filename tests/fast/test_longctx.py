"""Long examples (course_lib.fast.longctx): layer inputs in host memory and the MLP recomputed in chunks give the
same loss and adapter gradients as the plain forward and backward, and the model leaves unpatched."""

import copy

import pytest
import torch

from course_lib.core import tasks
from course_lib.fast.engine import train_fast
from course_lib.fast.longctx import offload_layers, restore_layers
from course_lib.fast.lora import attach_lora
from course_lib.fast.ops import forward_backward, packed_kwargs, register_attention
from course_lib.fast.packing import pack_rows
from course_lib.fast.settings import FastSettings
from tests.helpers import random_rows


def gradients(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    base = model.get_base_model()
    loss = forward_backward(base.get_decoder(), base.get_output_embeddings(), batch.input_ids, batch.position_ids,
                            batch.target_index, batch.targets, 1.0, **packed_kwargs(batch))
    return loss, [p.grad.clone() for p in params]


def test_offloaded_layers_give_the_same_loss_and_gradients(tiny_llama):
    model = attach_lora(tiny_llama, FastSettings(r=4, alpha=8))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    model.get_base_model().set_attn_implementation(register_attention())
    batch = pack_rows(random_rows([70, 23, 41], model.config.vocab_size, seed=3, learn_from=2))
    want_loss, want = gradients(model, batch)
    assert offload_layers(model, mlp_chunk=16) == 2  # 134 tokens: the MLP runs in 9 chunks
    got_loss, got = gradients(model, batch)
    assert torch.allclose(got_loss, want_loss, rtol=1e-6)
    assert all(torch.allclose(g, w, rtol=1e-5, atol=1e-7) for g, w in zip(got, want))
    restore_layers(model)
    assert not any("forward" in m.__dict__ for m in model.get_base_model().get_decoder().layers.modules()
                   if not hasattr(m, "lora_A"))


def test_offload_switch_trains_like_the_plain_fast_path(tiny_llama, tokenizer):
    conversations = [tasks.to_messages(e) for e in tasks.make_examples(6, seed=2)]
    settings = FastSettings(steps=2, batch_size=6, learning_rate=1e-2, warmup_steps=0, max_length=128)
    plain = train_fast(copy.deepcopy(tiny_llama), tokenizer, conversations, settings, progress=False)
    offloaded = train_fast(tiny_llama, tokenizer, conversations, settings.replace(offload=True, mlp_chunk_tokens=32),
                           progress=False)
    assert offloaded.details["offloaded_layers"] == 2 and "offloaded_layers" not in plain.details
    assert offloaded.losses == pytest.approx(plain.losses, rel=1e-5)
    assert not any("forward" in m.__dict__ for m in offloaded.model.modules())
