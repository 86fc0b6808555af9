"""Notebook 03's QLoRA adapter, kept for notebook 06: found only for the same weights and profile, reloaded exactly."""

import pytest
import torch

from course_lib.qlora import handoff
from course_lib.qlora.bnb import add_lora, load_qlora_base
from course_lib.training.methods import tiny_causal_lm

pytest.importorskip("bitsandbytes")


def test_a_saved_run_is_found_for_its_weights_and_reloads_to_the_same_logits(tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_causal_lm(tokenizer).save_pretrained(base)  # hidden size 64: whole 64-weight NF4 blocks
    tokenizer.save_pretrained(base)
    model, _ = load_qlora_base(str(base), compute_dtype=torch.float32, device="cpu", prepare=False)
    trained = add_lora(model, r=4)
    with torch.no_grad():  # a non-zero update, as after training
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    trained.eval()
    where = tmp_path / "cache" / "03-qlora"
    saved = handoff.save_qlora_run(trained, str(base), torch.float32, profile="full", steps=25, exact_match=0.9,
                                   test_rows=40, max_new_tokens=64, folder=where)
    assert saved.compute_dtype == "float32" and saved.dtype == torch.float32 and saved.double_quant
    again = handoff.save_qlora_run(trained, str(base), torch.float32, profile="full", steps=26, folder=where)
    assert again.steps == 26 and not where.with_name("03-qlora.old").exists()  # replaced whole, nothing left over

    found = handoff.find_qlora_run(str(base), profile="full", folder=where)
    assert found is not None and found.steps == 26 and found.folder == str(where)
    assert handoff.find_qlora_run(str(base), profile="smoke", folder=where) is None  # a quick profile's adapter
    assert handoff.find_qlora_run(str(tmp_path), profile="full", folder=where) is None  # other weights
    assert handoff.find_qlora_run(str(base), compute_dtype="bfloat16", folder=where) is None
    assert handoff.find_qlora_run(str(base), folder=tmp_path / "nothing") is None

    reloaded, _ = handoff.load_qlora_run(found, device="cpu")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_a_quick_profiles_adapter_never_replaces_the_full_one(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    assert handoff.handoff_dir("smoke") != handoff.handoff_dir("full") == handoff.handoff_dir()
    assert handoff.handoff_dir().parent == tmp_path / "runs"
