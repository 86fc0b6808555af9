"""Module 06 library: adapter round trips, merge equivalence, safe loading, model cards, inference defaults."""

import copy
import warnings

import pytest
import torch

from course_lib import deploy, inference, model_card


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
    folder = deploy.save_adapter(tuned, tmp_path / "adapter")
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    assert not list(folder.glob("*.bin"))
    reloaded = deploy.load_adapter(base_copy, folder)
    batch = deploy.check_batch(tokenizer)
    assert deploy.max_abs_logit_diff(deploy.logits_on(tuned, batch), deploy.logits_on(reloaded, batch)) == 0.0


def test_merge_equivalence_on_tiny_model(tiny_llama, tokenizer):
    batch = deploy.check_batch(tokenizer)
    base_logits = deploy.logits_on(tiny_llama, batch)
    tuned = _lora(copy.deepcopy(tiny_llama)).eval()
    merged, diff = deploy.merge_and_verify(tuned, batch)
    assert diff <= deploy.DEFAULT_TOLERANCE["float32"]
    assert not hasattr(merged, "peft_config")  # a plain transformers model now
    # the adapter really changed the model, so the check above compared something
    assert deploy.max_abs_logit_diff(base_logits, deploy.logits_on(merged, batch)) > 100 * diff


def test_merge_equivalence_on_default_model():
    from course_lib.models import load_causal_lm

    model, tokenizer = load_causal_lm(dtype=torch.float32)
    batch = deploy.check_batch(tokenizer)
    base_logits = deploy.logits_on(model, batch)
    tuned = _lora(model, targets=("q_proj", "v_proj", "down_proj")).eval()
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            param.data.mul_(0.01)  # a realistic update size: random B at full scale wrecks the model
    merged, diff = deploy.merge_and_verify(tuned, batch, tolerance=1e-3)
    assert diff <= 1e-3
    assert deploy.max_abs_logit_diff(base_logits, deploy.logits_on(merged, batch)) > 0.01


def test_merge_verify_raises_when_the_merge_is_wrong(tiny_llama, tokenizer):
    tuned = _lora(tiny_llama).eval()
    with pytest.raises(deploy.MergeMismatchError):
        deploy.merge_and_verify(tuned, deploy.check_batch(tokenizer), tolerance=-1.0)


def test_max_abs_logit_diff_is_the_max_over_real_positions():
    a = torch.zeros(2, 3, 5)
    b = a.clone()
    b[0, 1, 2] = 0.5  # one large difference: a mean would hide it
    b[1, 2, :] = 9.0  # a padded position: ignored with the mask
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert deploy.max_abs_logit_diff(a, b, mask) == 0.5
    assert deploy.max_abs_logit_diff(a, b) == 9.0
    with pytest.raises(ValueError, match="shapes"):
        deploy.max_abs_logit_diff(a, b[:, :2])


def test_pickle_checkpoints_are_refused(tiny_llama, tmp_path):
    folder = tmp_path / "model"
    tiny_llama.save_pretrained(folder)
    assert deploy.check_safe_folder(folder)  # safetensors: fine
    torch.save(tiny_llama.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(deploy.UnsafeCheckpointError, match="pytorch_model.bin"):
        deploy.load_model(folder)
    with pytest.raises(deploy.UnsafeCheckpointError, match="pickle"):
        deploy.load_adapter(tiny_llama, folder)
    deploy.check_safe_folder(folder, allow_pickle=True)  # an explicit opt-in passes the check
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        deploy.check_safe_folder(empty)


def test_merge_refuses_a_quantized_base(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path / "base")
    quantized = deploy.load_model(tmp_path / "base", quantization_config=deploy.quantization_config(4))
    assert deploy.is_quantized(quantized)
    from peft import LoraConfig, get_peft_model

    tuned = get_peft_model(quantized, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match="merge_full_precision"):
        deploy.merge(tuned)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_variant_saves_and_reloads(tokenizer, tmp_path, bits):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # hidden size 64: bitsandbytes' 4-bit blocks are 64 wide, the 32-wide fixture breaks them
    tiny_llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
    deploy.save_model(tiny_llama, tokenizer, tmp_path / "merged")
    out = deploy.quantize_to(tmp_path / "merged", bits, tmp_path / f"q{bits}")
    assert deploy.check_safe_folder(out) and deploy.folder_size(out) < deploy.folder_size(tmp_path / "merged")
    batch = deploy.check_batch(tokenizer)
    reloaded = deploy.load_model(out)
    assert deploy.is_quantized(reloaded)
    # quantization error, not garbage: the reloaded model stays near the full-precision one
    full = deploy.logits_on(tiny_llama, batch)
    assert deploy.max_abs_logit_diff(full, deploy.logits_on(reloaded, batch)) < 0.5 * float(full.abs().max())


@pytest.mark.parametrize("bias", ["none", "lora_only", "all"])
def test_adapter_num_params_matches_peft(tokenizer, bias):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(config)
    shapes = deploy.linear_shapes(model)
    tuned = _lora(model, r=3, targets=("q_proj", "k_proj", "up_proj"), bias=bias)
    trainable = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    expected = deploy.adapter_num_params({"r": 3, "target_modules": ["q_proj", "k_proj", "up_proj"], "bias": bias},
                                         shapes)
    assert expected == trainable
    assert bias == "none" or expected > deploy.adapter_num_params(
        {"r": 3, "target_modules": ["q_proj", "k_proj", "up_proj"]}, shapes)


def _record(metrics=None):
    base = model_card.BaseRecord("default", "HuggingFaceTB/SmolLM2-135M-Instruct", "package", "sha256:abc", "/x")
    return model_card.CardRecord(
        model_name="smollm2-json-extractor", base=base, method="LoRA, merged", hyperparameters={"r": 16, "steps": 50},
        data="400 generated sentences (course_lib.tasks, seed 0)",
        metrics=metrics or [{"type": "exact_match", "value": 0.9, "ci95": [0.82, 0.95], "n": 100, "split": "test"}],
        intended_use="Extracting name, age, city and job from short English sentences.",
        limitations="Synthetic training data; not for real personal data.")


def test_model_card_has_every_field_from_the_record(tmp_path):
    path = model_card.write_model_card(tmp_path, _record())
    text = path.read_text()
    header = model_card.read_card_header(text)
    assert header["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert header["base_model_revision"] == "sha256:abc"
    assert header["license"] == "apache-2.0"
    metric = header["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "exact_match" and metric["value"] == 0.9 and "0.82-0.95" in metric["name"]
    for section in ("## Method", "## Training data", "## Evaluation", "## Intended use", "## Limitations",
                    "## License", "| r | 16 |", "not for real personal data"):
        assert section in text, section
    with pytest.raises(ValueError, match="ci95"):
        model_card.render_card(_record([{"type": "exact_match", "value": 0.9, "n": 10}]))
    with pytest.raises(ValueError, match="YAML header"):
        model_card.read_card_header("# just a title\n")


def test_wilson_interval():
    low, high = model_card.wilson_interval(10, 10)
    assert high == 1.0 and 0.65 < low < 0.75  # 100% on 10 examples is not certainty
    low, high = model_card.wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    with pytest.raises(ValueError):
        model_card.wilson_interval(3, 0)


def test_pin_revision_records_the_weights_hash():
    first = model_card.pin_revision("default")
    assert first.revision.startswith("sha256:") and len(first.revision) == 7 + 64
    assert first.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_card.pin_revision("default").revision == first.revision
    with pytest.raises(ValueError, match="revision"):
        model_card.pin_revision("default", revision="main")


def test_adapter_switching_without_reloading(tiny_llama, tokenizer, tmp_path):
    base = copy.deepcopy(tiny_llama)
    for name, seed in (("alpha", 1), ("beta", 2)):
        deploy.save_adapter(_lora(copy.deepcopy(tiny_llama), seed=seed).eval(), tmp_path / name)
    singles = {n: deploy.logits_on(deploy.load_adapter(copy.deepcopy(tiny_llama), tmp_path / n), deploy.check_batch(tokenizer))
               for n in ("alpha", "beta")}
    model = deploy.load_adapters(base, {"alpha": tmp_path / "alpha", "beta": tmp_path / "beta"})
    batch = deploy.check_batch(tokenizer)
    for name in ("beta", "alpha", "beta"):
        model.set_adapter(name)
        assert deploy.max_abs_logit_diff(deploy.logits_on(model, batch), singles[name]) < 1e-5
    report = deploy.switch_report(model, ["alpha", "beta"], rounds=4)
    assert report.adapter_mb["alpha"] == report.adapter_mb["beta"] > 0
    assert report.base_mb > report.adapter_mb["alpha"] and report.switch_ms >= 0


def test_generate_safe_defaults(tiny_llama, tokenizer):
    tiny_llama.eval()
    stops = inference.stop_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops and tokenizer.eos_token_id in stops
    prompts = [[{"role": "user", "content": "Hi"}], "A plain prompt"]
    settings = inference.DecodingSettings(max_new_tokens=5)
    first = inference.generate(tiny_llama, tokenizer, prompts, settings)
    assert first == inference.generate(tiny_llama, tokenizer, prompts, settings)  # greedy: reproducible
    assert all(len(tokenizer(r, add_special_tokens=False)["input_ids"]) <= 8 for r in first)
    with pytest.warns(inference.PromptTruncatedWarning, match="kept only its last 16"):
        inference.generate(tiny_llama, tokenizer, ["word " * 200], settings.replace(max_prompt_tokens=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", inference.PromptTruncatedWarning)
        inference.generate(tiny_llama, tokenizer, ["short"], settings)
    with pytest.raises(ValueError):
        inference.DecodingSettings(max_new_tokens=0)
    with pytest.raises(TypeError, match="prompt 0"):
        inference.generate(tiny_llama, tokenizer, [42], settings)


def test_loop_guard_detects_a_repeating_tail():
    assert inference.repeats_tail([1, 2, 3] * 3, n=3, times=3)
    assert not inference.repeats_tail([1, 2, 3] * 2 + [4, 5, 6], n=3, times=2)
    assert not inference.repeats_tail([1, 2], n=3, times=2)
