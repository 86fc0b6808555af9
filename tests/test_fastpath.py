"""The GPU fast path on a CPU: packing keeps examples apart, the kernels match the library, the loss matches the recipe."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib import tasks
from course_lib.fast_ops import (
    MasterWeights, linear_cross_entropy_sum, make_adamw, packed_kwargs, register_attention,
)
from course_lib.fast_packing import pack_rows, plan_step, split_by_tokens, step_batches
from course_lib.fastpath import FastSettings, to_rows, train_fast

REPO = Path(__file__).resolve().parent.parent


def rows_of(lengths, vocab=1000, seed=0, learn_from=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * learn_from + ids[learn_from:]})
    return rows


# ---------------------------------------------------------------------------------------------------- packing


def test_pack_rows_restarts_positions_and_keeps_targets_inside_examples():
    rows = [{"input_ids": [11, 12, 13], "labels": [-100, 12, 13]},
            {"input_ids": [21, 22], "labels": [21, 22]},
            {"input_ids": [31, 32, 33, 34], "labels": [-100, -100, 33, -100]}]
    batch = pack_rows(rows)
    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 32, 33, 34]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch.cu_seqlens.tolist() == [0, 3, 5, 9] and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == 4 and batch.tokens == 9
    # position t learns the label at t + 1 of the same example: 13's row ends, so nothing learns 21 across the seam
    assert batch.target_index.tolist() == [0, 1, 3, 6]
    assert batch.targets.tolist() == [12, 13, 22, 33]
    assert batch.label_tokens == 4


def test_pack_rows_rejects_bad_rows():
    with pytest.raises(ValueError, match="row 1"):
        pack_rows([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match="no rows"):
        pack_rows([])


def test_split_by_tokens_respects_the_budget_and_keeps_every_example_once():
    lengths = [300, 120, 500, 80, 80, 40, 260, 512]
    groups = split_by_tokens(lengths, 600)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 600 for g in groups)
    assert len(groups) == 4  # 1892 tokens need at least 4 bins of 600
    with pytest.raises(ValueError, match="example 7 has 512 tokens"):
        split_by_tokens(lengths, 511)


def test_step_batches_are_seeded_epochs():
    a = list(step_batches(10, 4, 5, seed=1))
    assert a == list(step_batches(10, 4, 5, seed=1))
    assert a != list(step_batches(10, 4, 5, seed=2))
    flat = [i for step in a for i in step]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # whole epochs
    assert list(step_batches(5, 2, 2, shuffle=False)) == [[0, 1], [2, 3]]


def test_plan_step_groups_the_chosen_rows():
    rows = rows_of([50, 60, 70, 80])
    micro = plan_step(rows, [3, 1, 0], max_tokens=140)
    assert sorted(len(r["input_ids"]) for group in micro for r in group) == [50, 60, 80]
    assert all(sum(len(r["input_ids"]) for r in group) <= 140 for group in micro)


# ---------------------------------------------------------------------------------------------------- attention


def packed_logits(model, rows):
    batch = pack_rows(rows)
    hidden = model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, **packed_kwargs(batch))
    return model.get_output_embeddings()(hidden.last_hidden_state[0])


def test_packed_forward_equals_each_example_alone(tiny_llama):
    rows = rows_of([7, 31, 1, 18, 12])
    model = tiny_llama.eval()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
        model.set_attn_implementation(register_attention())
        packed = packed_logits(model, rows)
    assert packed.shape == alone.shape
    assert torch.allclose(packed, alone, atol=1e-5, rtol=1e-4)


def test_packed_forward_matches_transformers_own_packed_sdpa(tiny_llama):
    """transformers builds a block-diagonal mask from restarting position ids; our varlen path must agree."""
    rows = rows_of([9, 14, 5])
    batch = pack_rows(rows)
    model = tiny_llama.eval()
    with torch.no_grad():
        library = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
        model.set_attn_implementation(register_attention())
        ours = packed_logits(model, rows)
    assert torch.allclose(ours, library, atol=1e-5, rtol=1e-4)


def test_no_attention_across_examples(tiny_llama):
    rows = rows_of([10, 12, 9])
    changed = copy.deepcopy(rows)
    changed[0]["input_ids"] = [(t * 7 + 1) % 1000 + 3 for t in changed[0]["input_ids"]]  # rewrite example 0 only
    model = tiny_llama.eval()
    model.set_attn_implementation(register_attention())
    with torch.no_grad():
        a, b = packed_logits(model, rows), packed_logits(model, changed)
    assert not torch.allclose(a[:10], b[:10])  # example 0 itself changed
    assert torch.equal(a[10:], b[10:])  # examples 1 and 2 saw nothing of it


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


# ---------------------------------------------------------------------------------------------------- fast path vs recipe


def test_fast_path_loss_equals_the_recipe(tiny_llama, tokenizer):
    """Same adapters, same examples per step, same token-weighted loss: the curves agree step by step.

    Each step sees the whole (8-example) data set, so the recipe's shuffling cannot change what a step averages.
    """
    conversations = [tasks.to_messages(e) for e in tasks.generate(8, seed=1)]
    settings = FastSettings(steps=3, batch_size=8, micro_batch_size=4, learning_rate=1e-2, warmup_steps=0,
                            max_length=128, dropout=0.0, max_tokens=300)  # 300 tokens: several micro-batches
    twin = copy.deepcopy(tiny_llama)
    fast = train_fast(tiny_llama, tokenizer, conversations, settings, progress=False)
    recipe = train_fast(twin, tokenizer, conversations, settings.replace(recipe=True), progress=False)
    assert fast.path == "fast" and recipe.path == "recipe"
    assert len(fast.losses) == len(recipe.losses) == 3
    assert fast.losses == pytest.approx(recipe.losses, rel=1e-4)
    assert fast.losses[-1] < fast.losses[0]
    mine, theirs = dict(fast.model.named_parameters()), dict(recipe.model.named_parameters())
    lora = [name for name in mine if "lora_" in name]
    assert lora and all(torch.allclose(mine[n], theirs[n], atol=1e-4) for n in lora)
    assert fast.tokens == 3 * sum(len(r["input_ids"]) for r in to_rows(conversations, tokenizer, 128))
    # after training the model generates with its own attention again (the packed one needs packed batches)
    assert fast.model.get_base_model().config._attn_implementation != "course_varlen"


def test_to_rows_names_the_bad_item(tokenizer):
    good = tasks.to_messages(tasks.generate(1)[0])
    with pytest.raises(ValueError, match="training item 1"):
        to_rows([good, "just a string"], tokenizer, 128)
    with pytest.raises(ValueError, match="training item 0 has no token to learn"):
        to_rows([good], tokenizer, 8)  # the answer is cut off
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        train_fast(None, tokenizer, [good], FastSettings.textbook(batch_size=6, micro_batch_size=4), progress=False)


def test_textbook_settings_are_the_recipe():
    s = FastSettings.textbook()
    assert (s.recipe, s.batch_size, s.micro_batch_size, s.max_length, s.dropout) == (True, 32, 8, 512, 0.05)
    assert FastSettings().recipe is False and FastSettings().dropout == 0.0


# ---------------------------------------------------------------------------------------------------- the benchmark


def test_benchmark_cpu_mode_runs():
    script = REPO / "tests" / "benchmarks" / "train_throughput.py"
    proc = subprocess.run([sys.executable, str(script), "--cpu", "--methods", "QLoRA tiny"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| QLoRA tiny")]
    assert len(rows) == 1 and "x | " in rows[0], proc.stdout[-2000:]


# ---------------------------------------------------------------------------------------------------- fused LoRA


def lora_model(model, dropout=0.0):
    from course_lib.fastpath import attach_lora

    return attach_lora(model, FastSettings(r=4, alpha=8, dropout=dropout, seed=3))


def forward_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    (logits.float() * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


@pytest.mark.parametrize("four_bit", [False, True])
def test_fused_lora_matches_peft(tiny_llama, tmp_path, four_bit):
    from course_lib.fast_lora import cache_dense_weights, fuse_lora, group_lora, unfuse_lora

    if four_bit:  # a real bitsandbytes NF4 base, as QLoRA loads it
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from transformers import LlamaConfig, LlamaForCausalLM

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
    assert want.keys() == got.keys() and all(torch.allclose(got[n], want[n], atol=1e-5, rtol=1e-4) for n in want)
    assert group_lora(model) == 2 * 2  # q/k/v and gate/up of both layers
    grouped_logits, grouped = forward_and_grads(model, ids)
    assert torch.allclose(grouped_logits, want_logits, atol=1e-5)
    # the same sums in another order: equal to fp32 rounding, relative to each gradient's size
    assert all((grouped[n] - want[n]).norm() <= 1e-5 * want[n].norm() + 1e-7 for n in want)
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
    from course_lib.fast_lora import fuse_lora, group_lora

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
    from course_lib.fast_lora import fuse_lora

    assert fuse_lora(lora_model(tiny_llama, dropout=0.05)) == 0  # dropout needs peft's own forward


def test_plan_memory_checkpoints_only_what_does_not_fit():
    from types import SimpleNamespace

    from course_lib.fastpath import activation_bytes, plan_memory

    config = SimpleNamespace(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24)
    kept, checkpointed = activation_bytes(config)
    assert plan_memory(config, 8000, 1e12, 512) == (8000, 0.0)  # plenty: no checkpointing
    tokens, fraction = plan_memory(config, 8000, 24 * kept * 8000 / 2, 512)
    assert tokens == 8000 and 0.4 < fraction < 0.6  # half the memory: about half the layers
    tokens, fraction = plan_memory(config, 8000, 1e8, 512)
    assert fraction == 1.0 and 512 <= tokens < 8000 and tokens % 256 == 0  # too little: smaller micro-batches


def test_switches_do_not_change_the_maths(tiny_llama, tokenizer):
    """Fused or peft LoRA layers, checkpointed or not: the same losses (only speed and memory differ)."""
    conversations = [tasks.to_messages(e) for e in tasks.generate(6, seed=2)]
    base = FastSettings(steps=2, batch_size=6, learning_rate=1e-2, warmup_steps=0, max_length=128)
    runs = {}
    variants = {"fused": {}, "peft": {"fused_lora": False}, "checkpointed": {"gradient_checkpointing": 0.5},
                "ungrouped": {"grouped_lora": False}}
    for name, changes in variants.items():
        result = train_fast(copy.deepcopy(tiny_llama), tokenizer, conversations, base.replace(**changes), progress=False)
        runs[name] = result
    assert runs["fused"].details["fused_lora_layers"] == 14 and runs["peft"].details["fused_lora_layers"] == 0
    assert runs["checkpointed"].details["checkpointed_layers"] == 0.5
    assert runs["peft"].losses == pytest.approx(runs["fused"].losses, rel=1e-5)
    assert runs["checkpointed"].losses == pytest.approx(runs["fused"].losses, rel=1e-5)
    assert runs["fused"].details["lora_groups"] == 4 and runs["ungrouped"].details["lora_groups"] == 0
    assert runs["ungrouped"].losses == pytest.approx(runs["fused"].losses, rel=1e-5)
    # the model leaves without patches: peft's forward back, checkpointing off
    model = runs["checkpointed"].model
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
