"""Fine-tuning methods on a tiny model: what each trains, the comparison table, the LR sweep, packing."""

import math

import pytest
import torch

from course_lib.core import tasks
from course_lib.training.config import TrainConfig
from course_lib.training.methods import METHODS, PEFT_METHODS, apply_method, compare_methods, count_parameters
from course_lib.training.sweep import best_learning_rate, lr_sweep
from course_lib.training.trainer import evaluate_loss, train


def _tiny(tokenizer, layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id))


def _data(n, seed=0):
    return [tasks.to_messages(e) for e in tasks.make_examples(n, seed=seed)]


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_trains_everything(tokenizer):
    model = apply_method(_tiny(tokenizer), "full")
    trainable, total = count_parameters(model)
    assert trainable == total


def test_last_blocks_trains_the_last_blocks_and_final_norm_only(tokenizer):
    model = apply_method(_tiny(tokenizer), "last_blocks", last_blocks=2)
    names = _trainable(model)
    assert names and all(n.startswith(("model.layers.1.", "model.layers.2.")) or n == "model.norm.weight" for n in names)
    assert "model.norm.weight" in names and any(n.startswith("model.layers.1.") for n in names)
    with pytest.raises(ValueError, match="between 1 and 3"):
        apply_method(_tiny(tokenizer), "last_blocks", last_blocks=4)


def test_bitfit_adds_zero_biases_that_change_nothing_and_trains_only_them(tokenizer):
    base = _tiny(tokenizer)
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    before = base(input_ids=ids).logits
    model = apply_method(base, "bitfit")
    assert torch.equal(model(input_ids=ids).logits, before)
    names = _trainable(model)
    assert names and all(n.endswith(".bias") for n in names)
    # 7 linear layers per block: q (32) + k, v (16 each: 2 kv heads of 8) + o (32) + gate, up (64) + down (32)
    assert count_parameters(model)[0] == 3 * (32 + 16 + 16 + 32 + 64 + 64 + 32)


def test_prompt_tuning_and_lora_train_only_their_new_parameters(tokenizer):
    prompt = apply_method(_tiny(tokenizer), "prompt_tuning", virtual_tokens=5)
    assert count_parameters(prompt)[0] == 5 * 32
    lora = apply_method(_tiny(tokenizer), "lora", lora_r=4)
    assert _trainable(lora) and all("lora_" in n for n in _trainable(lora))
    with pytest.raises(ValueError, match="unknown method 'adapters'"):
        apply_method(_tiny(tokenizer), "adapters")


def test_prefix_tuning_ia3_and_dora_train_only_their_new_parameters(tokenizer):
    # _tiny: 3 blocks, hidden 32, 4 query heads and 2 key/value heads of 8, MLP width 64
    prefix = apply_method(_tiny(tokenizer), "prefix_tuning", virtual_tokens=5)
    assert _trainable(prefix) and all("prompt_encoder" in n for n in _trainable(prefix))
    assert count_parameters(prefix)[0] == 5 * 3 * 2 * (2 * 8)  # a key and a value per layer, sized for the kv heads
    ia3 = apply_method(_tiny(tokenizer), "ia3")
    assert _trainable(ia3) and all("ia3_l" in n for n in _trainable(ia3))
    assert count_parameters(ia3)[0] == 3 * (16 + 16 + 64)  # k and v outputs, and the down-projection's input
    lora = apply_method(_tiny(tokenizer), "lora", lora_r=4)
    dora = apply_method(_tiny(tokenizer), "dora", lora_r=4)
    assert any("lora_magnitude_vector" in n for n in _trainable(dora))
    # DoRA = LoRA + one magnitude per output feature of every adapted linear layer
    assert count_parameters(dora)[0] - count_parameters(lora)[0] == 3 * (32 + 16 + 16 + 32 + 64 + 64 + 32)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_trainable_counts_match_peft(tokenizer, method):
    model = apply_method(_tiny(tokenizer), method)
    assert count_parameters(model) == model.get_nb_trainable_parameters()


def test_ia3_and_dora_start_as_the_base_model_and_a_zero_prefix_only_shifts_attention(tokenizer):
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    before = _tiny(tokenizer)(input_ids=ids).logits
    for method in ("ia3", "dora", "lora"):  # scales start at 1; B starts at 0 and the magnitude at |W|
        after = apply_method(_tiny(tokenizer), method)(input_ids=ids).logits
        assert torch.allclose(after, before, atol=1e-5), method
    prefix = apply_method(_tiny(tokenizer), "prefix_tuning", virtual_tokens=4)
    assert all(not p.any() for n, p in prefix.named_parameters() if p.requires_grad)  # zero keys and values
    prefixed = prefix(input_ids=ids).logits
    assert prefixed.shape == before.shape  # the prefix sits in the cache, not in the output
    # zero values add nothing, but zero keys still take a share of every token's attention
    assert not torch.allclose(prefixed, before, atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_exactly_its_trainable_parameters_and_lowers_the_loss(tokenizer, method):
    data, val = _data(8), _data(4, seed=5)
    config = TrainConfig(max_steps=4, per_device_batch_size=4, warmup_steps=0)
    model = apply_method(_tiny(tokenizer, layers=2), method)
    start = evaluate_loss(model, tokenizer, val, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = _trainable(model)
    result = train(model, tokenizer, data, config.replace(learning_rate=3e-2), progress=False)
    changed = {n for n, p in result.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    assert evaluate_loss(result.model, tokenizer, val, config) < start


def test_compare_methods_reports_every_measure_for_every_method(tokenizer):
    config = TrainConfig(max_steps=3, per_device_batch_size=2, warmup_steps=0)
    table = compare_methods(lambda: _tiny(tokenizer), tokenizer, _data(8), _data(4, seed=5), config,
                            learning_rates={m: 1e-2 for m in METHODS}, progress=False,
                            score=lambda model: float(model.training is False), score_name="exact_match")
    assert list(table["method"]) == list(METHODS) and len(METHODS) == 8
    assert {"trainable_params", "trainable_%", "peak_memory_MB", "seconds", "train_loss", "val_loss",
            "exact_match"} <= set(table)
    assert (table["exact_match"] == 1.0).all()  # the score saw each trained model, in eval mode
    counts = dict(zip(table["method"], table["trainable_params"]))
    assert (counts["full"] > counts["last_blocks"] > counts["dora"] > counts["lora"] > counts["prefix_tuning"]
            > counts["bitfit"] > counts["prompt_tuning"] > counts["ia3"] > 0)
    assert table["val_loss"].map(math.isfinite).all() and (table["seconds"] > 0).all()
    assert (table["peak_memory_MB"] >= 0).all()
    results = table.attrs["results"]
    assert [len(r.history) for r in results] == [3] * len(METHODS)
    # every method starts from the same model and data, and these four (and IA3, DoRA) start as the same function:
    # their first-step losses agree (prompt and prefix tuning add virtual tokens)
    first = {r.method: r.history[0]["loss"] for r in results}
    assert len({round(first[m], 5) for m in ("full", "last_blocks", "bitfit", "ia3", "lora", "dora")}) == 1
    with pytest.raises(ValueError, match="unknown method 'adapters' in methods"):
        compare_methods(lambda: _tiny(tokenizer), tokenizer, _data(8), _data(4), config, methods=["lora", "adapters"])


def test_lr_sweep_keeps_diverged_runs_in_the_table(tokenizer):
    def make_model():
        return _tiny(tokenizer, layers=1)

    config = TrainConfig(max_steps=3, per_device_batch_size=2, warmup_steps=0)
    table = lr_sweep(make_model, tokenizer, _data(6), _data(2, seed=5), config, [1e-2, 1e-4], method="full",
                     progress=False)
    assert list(table["learning_rate"]) == [1e-4, 1e-2]
    assert {"learning_rate", "train_loss", "val_loss", "diverged", "seconds"} <= set(table)
    assert not table["diverged"].any()
    assert table["val_loss"].iloc[1] < table["val_loss"].iloc[0]  # 3 steps at 1e-4 barely move a random model
    assert best_learning_rate(table) == 1e-2

    def broken_model():
        model = _tiny(tokenizer, layers=1)
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))
        return model

    broken = lr_sweep(broken_model, tokenizer, _data(6), _data(2, seed=5), config, [1e-3], method="full",
                      progress=False)
    assert broken["diverged"].tolist() == [True] and math.isnan(broken["val_loss"].iloc[0])
    assert "the loss became nan at step 1" in broken["note"].iloc[0]
    with pytest.raises(ValueError, match="every run in the sweep diverged"):
        best_learning_rate(broken)


def test_packing_gives_the_same_loss_as_padding(tokenizer):
    model = _tiny(tokenizer)
    data = _data(6)
    padded = evaluate_loss(model, tokenizer, data, TrainConfig(per_device_batch_size=3))
    packed = evaluate_loss(model, tokenizer, data, TrainConfig(per_device_batch_size=3, packing=True))
    assert packed == pytest.approx(padded, rel=1e-5)
    result = train(model, tokenizer, data, TrainConfig(max_steps=2, per_device_batch_size=3, packing=True),
                   progress=False)
    assert len(result.history) == 2 and all(math.isfinite(x) for x in result.losses)
