"""The QLoRA merge measured both ways on a tiny model: the dequantized NF4 base reproduces the QLoRA model."""

import contextlib

import pytest
import torch

from course_lib.deployment import adapters, qlora_merge
from course_lib.qlora.bnb import load_4bit

pytest.importorskip("bitsandbytes")


def test_merging_into_dequantized_nf4_reproduces_the_qlora_model_better_than_merging_into_w(tmp_path):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    adapters.tiny_base(seed=0, folder=base_dir)
    # the QLoRA run's own settings: NF4 with double-quantized scales, float32 compute
    qlora = adapters.tiny_lora(load_4bit(str(base_dir), compute_dtype=torch.float32, device="cpu", prepare=False), seed=1)
    qlora.save_pretrained(adapter_dir)
    batch = adapters.tiny_batch(seed=0)
    scored = []
    rows = qlora_merge.compare_qlora_merges(qlora, adapter_dir, batch, base=base_dir,
                                            evaluate=lambda model: scored.append(type(model).__name__) or 0.5)
    assert [r.name for r in rows] == list(qlora_merge.CANDIDATES)
    trained, evaluated, into_nf4, into_w = rows
    assert trained.max_logit_diff == 0.0 and trained.same_top_token == 1.0
    # the same function as in training, written out in float32: only the order of the sums differs
    assert into_nf4.max_logit_diff < 1e-4
    # bitsandbytes' CPU inference kernel (bf16 block scales) where the CPU has AVX512-BF16; the training path elsewhere
    assert evaluated.max_logit_diff < 0.01
    # W is not what the adapter was trained against: the gap is the NF4 rounding error of the base
    assert into_w.max_logit_diff > 20 * max(into_nf4.max_logit_diff, evaluated.max_logit_diff, 1e-4)
    assert into_w.mean_logit_diff > into_nf4.mean_logit_diff
    assert [r.metric for r in rows] == [None, 0.5, 0.5, 0.5] and len(scored) == 3
    assert "Peft" in scored[0] and "Peft" not in scored[1] and "Peft" not in scored[2]  # merged: plain models
    import bitsandbytes as bnb

    repacked = any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in qlora.modules() if isinstance(m, bnb.nn.Linear4bit))
    with pytest.warns(UserWarning, match="bf16") if repacked else contextlib.nullcontext():
        again = qlora_merge.compare_qlora_merges(qlora, adapter_dir, batch, base=base_dir, unmerged_metric=0.75)
    assert again[1].metric == 0.75 and again[2].metric is None  # a score measured before is taken as given


def test_dequantized_base_holds_the_weights_the_4bit_layers_compute_with(tmp_path):
    import bitsandbytes.functional as bnbf

    adapters.tiny_base(seed=3, folder=tmp_path)
    four_bit = load_4bit(str(tmp_path), compute_dtype=torch.float32, device="cpu", prepare=False)
    layer = four_bit.model.layers[0].self_attn.q_proj
    expected = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    restored = qlora_merge.dequantized_base(tmp_path, device="cpu")
    assert torch.equal(restored.model.layers[0].self_attn.q_proj.weight, expected)
    original = qlora_merge.original_base(tmp_path)
    assert not torch.equal(original.model.layers[0].self_attn.q_proj.weight, expected)  # W itself is not on the grid


def test_conversation_batch_and_a_batch_without_mask_are_checked(tokenizer):
    batch = adapters.check_batch(tokenizer, [[{"role": "user", "content": "Hi"}],
                                             [{"role": "user", "content": "A much longer question, padded less"}]])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    assert torch.equal(adapters.check_batch(tokenizer, ["Hi"])["input_ids"][0], batch["input_ids"][0][:batch["attention_mask"][0].sum()])
    with pytest.raises(ValueError, match="prompts"):
        adapters.check_batch(tokenizer, [])
    with pytest.raises(ValueError, match="attention_mask"):
        qlora_merge.compare_qlora_merges(None, "unused", {"input_ids": batch["input_ids"]})
