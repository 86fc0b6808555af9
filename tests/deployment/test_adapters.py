"""Adapters (course_lib.deployment.adapters): round trips, merge equivalence, safe loading, quantized variants,
switching."""

import copy

import pytest
import torch

from course_lib.deployment import adapters


def _lora(model, name="default", r=4, targets=("q_proj", "v_proj"), bias="none", seed=0):
    """A LoRA adapter with random (non-zero) B, so it really changes the model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), bias=bias, init_lora_weights=False,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config, adapter_name=name)


def test_adapter_round_trip_is_safetensors_and_exact(tiny_llama, tokenizer, tmp_path):
    base_copy = copy.deepcopy(tiny_llama)
    tuned = _lora(tiny_llama).eval()
    folder = adapters.save_adapter(tuned, tmp_path / "adapter")
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    assert not list(folder.glob("*.bin"))
    reloaded = adapters.load_adapter(base_copy, folder)
    batch = adapters.check_batch(tokenizer)
    assert adapters.max_abs_logit_diff(adapters.logits_on(tuned, batch), adapters.logits_on(reloaded, batch)) == 0.0


def test_merge_equivalence_on_tiny_model(tiny_llama, tokenizer):
    batch = adapters.check_batch(tokenizer)
    base_logits = adapters.logits_on(tiny_llama, batch)
    tuned = _lora(copy.deepcopy(tiny_llama)).eval()
    merged, diff = adapters.merge_and_verify(tuned, batch)
    assert diff <= adapters.DEFAULT_TOLERANCE["float32"]
    assert not hasattr(merged, "peft_config")  # a plain transformers model now
    # the adapter really changed the model, so the check above compared something
    assert adapters.max_abs_logit_diff(base_logits, adapters.logits_on(merged, batch)) > 100 * diff


def test_merge_equivalence_on_default_model():
    from course_lib.core.models import load_causal_lm

    model, tokenizer = load_causal_lm(dtype=torch.float32)
    batch = adapters.check_batch(tokenizer)
    base_logits = adapters.logits_on(model, batch)
    tuned = _lora(model, targets=("q_proj", "v_proj", "down_proj")).eval()
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            param.data.mul_(0.01)  # a realistic update size: random B at full scale wrecks the model
    merged, diff = adapters.merge_and_verify(tuned, batch, tolerance=1e-3)
    assert diff <= 1e-3
    assert adapters.max_abs_logit_diff(base_logits, adapters.logits_on(merged, batch)) > 0.01


def test_merge_verify_raises_when_the_merge_is_wrong(tiny_llama, tokenizer):
    tuned = _lora(tiny_llama).eval()
    with pytest.raises(adapters.MergeMismatchError):
        adapters.merge_and_verify(tuned, adapters.check_batch(tokenizer), tolerance=-1.0)


def test_max_abs_logit_diff_is_the_max_over_real_positions():
    a = torch.zeros(2, 3, 5)
    b = a.clone()
    b[0, 1, 2] = 0.5  # one large difference: a mean would hide it
    b[1, 2, :] = 9.0  # a padded position: ignored with the mask
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert adapters.max_abs_logit_diff(a, b, mask) == 0.5
    assert adapters.max_abs_logit_diff(a, b) == 9.0
    with pytest.raises(ValueError, match="shapes"):
        adapters.max_abs_logit_diff(a, b[:, :2])


def test_pickle_checkpoints_are_refused(tiny_llama, tmp_path):
    folder = tmp_path / "model"
    tiny_llama.save_pretrained(folder)
    assert adapters.check_safe_folder(folder)  # safetensors: fine
    torch.save(tiny_llama.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(adapters.UnsafeCheckpointError, match="pytorch_model.bin"):
        adapters.load_model(folder)
    with pytest.raises(adapters.UnsafeCheckpointError, match="pickle"):
        adapters.load_adapter(tiny_llama, folder)
    adapters.check_safe_folder(folder, allow_pickle=True)  # an explicit opt-in passes the check
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        adapters.check_safe_folder(empty)


def test_merge_refuses_a_quantized_base(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path / "base")
    quantized = adapters.load_model(tmp_path / "base", quantization_config=adapters.quantization_config(4))
    assert adapters.is_quantized(quantized)
    from peft import LoraConfig, get_peft_model

    tuned = get_peft_model(quantized, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match="merge_dequantized"):
        adapters.merge(tuned)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_variant_saves_and_reloads(tokenizer, tmp_path, bits):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # hidden size 64: bitsandbytes' 4-bit blocks are 64 wide, the 32-wide fixture breaks them
    tiny_llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
    adapters.save_model(tiny_llama, tokenizer, tmp_path / "merged")
    out = adapters.quantize_to(tmp_path / "merged", bits, tmp_path / f"q{bits}")
    assert adapters.check_safe_folder(out) and adapters.folder_size(out) < adapters.folder_size(tmp_path / "merged")
    batch = adapters.check_batch(tokenizer)
    reloaded = adapters.load_model(out)
    assert adapters.is_quantized(reloaded)
    # quantization error, not garbage: the reloaded model stays near the full-precision one
    full = adapters.logits_on(tiny_llama, batch)
    assert adapters.max_abs_logit_diff(full, adapters.logits_on(reloaded, batch)) < 0.5 * float(full.abs().max())


@pytest.mark.parametrize("bias", ["none", "lora_only", "all"])
def test_adapter_num_params_matches_peft(tokenizer, bias):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(config)
    shapes = adapters.linear_shapes(model)
    tuned = _lora(model, r=3, targets=("q_proj", "k_proj", "up_proj"), bias=bias)
    trainable = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    expected = adapters.adapter_num_params({"r": 3, "target_modules": ["q_proj", "k_proj", "up_proj"], "bias": bias},
                                         shapes)
    assert expected == trainable
    assert bias == "none" or expected > adapters.adapter_num_params(
        {"r": 3, "target_modules": ["q_proj", "k_proj", "up_proj"]}, shapes)


def test_adapter_switching_without_reloading(tiny_llama, tokenizer, tmp_path):
    base = copy.deepcopy(tiny_llama)
    for name, seed in (("alpha", 1), ("beta", 2)):
        adapters.save_adapter(_lora(copy.deepcopy(tiny_llama), seed=seed).eval(), tmp_path / name)
    singles = {n: adapters.logits_on(adapters.load_adapter(copy.deepcopy(tiny_llama), tmp_path / n), adapters.check_batch(tokenizer))
               for n in ("alpha", "beta")}
    model = adapters.load_adapters(base, {"alpha": tmp_path / "alpha", "beta": tmp_path / "beta"})
    batch = adapters.check_batch(tokenizer)
    for name in ("beta", "alpha", "beta"):
        model.set_adapter(name)
        assert adapters.max_abs_logit_diff(adapters.logits_on(model, batch), singles[name]) < 1e-5
    report = adapters.switch_report(model, ["alpha", "beta"], rounds=4)
    assert report.adapter_mb["alpha"] == report.adapter_mb["beta"] > 0
    assert report.base_mb > report.adapter_mb["alpha"] and report.switch_ms >= 0


def test_qlora_adapter_merged_into_the_dequantized_base_answers_like_the_qlora_model(tmp_path):
    """The exercise's decision, measured: the dequantized NF4 base beats the original float32 base."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    adapters.tiny_base(seed=0, folder=base_dir)
    qlora = adapters.tiny_lora(adapters.load_4bit_base(base_dir), seed=1)
    assert adapters.is_quantized(qlora)
    qlora.save_pretrained(adapter_dir)
    batch = adapters.tiny_batch(seed=0)
    evaluated = adapters.logits_on(qlora, batch)
    dequantized = adapters.merge_dequantized(adapter_dir, base_dir)
    assert not adapters.is_quantized(dequantized)
    full = adapters.merge(adapters.load_adapter(adapters.load_model(base_dir), adapter_dir))
    mask = batch["attention_mask"]
    near = adapters.max_abs_logit_diff(evaluated, adapters.logits_on(dequantized, batch), mask)
    far = adapters.max_abs_logit_diff(evaluated, adapters.logits_on(full, batch), mask)
    assert near < 0.01 < far and near * 5 < far
