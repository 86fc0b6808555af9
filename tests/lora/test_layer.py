"""Hand-written LoRA (course_lib.lora.layer) checked on its own and against peft on tiny seeded models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D


from course_lib.lora import layer
from course_lib.lora.layer import (
    LoRALinear,
    copy_lora_from_peft,
    format_trainable,
    inject_lora,
    lora_layers,
    lora_param_count,
    lora_params_for_model,
    merge_lora,
    params_from_config,
    print_trainable_parameters,
    trainable_fraction,
    trainable_parameters,
    unload_lora,
    unmerge_lora,
)

LLAMA_CFG = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
TARGETS = ["q_proj", "v_proj", "down_proj"]
R, ALPHA = 4, 8
# Measured max abs differences are ~1e-7 (logits) and ~1e-8 (weights after training); the bounds leave headroom.
LOGITS_ATOL = 1e-5
TRAIN_ATOL = 1e-5


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**LLAMA_CFG)).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def batch(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (2, 10), generator=g)


def randomize_B(model: nn.Module, seed: int = 2) -> None:
    """Give B non-zero values so the LoRA path actually changes outputs (works for ours and peft's)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def ours_and_peft(make=tiny_llama, targets=TARGETS, use_rslora=False):
    """Two copies of the same model: one with our LoRA, one with peft's, holding identical A and B."""
    base = make()
    conv = any(isinstance(m, Conv1D) for m in base.modules())  # peft warns unless told about GPT-2's Conv1D
    cfg = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0, use_rslora=use_rslora, fan_in_fan_out=conv
    )
    theirs = get_peft_model(copy.deepcopy(base), cfg)
    randomize_B(theirs)
    ours = inject_lora(base, targets, r=R, alpha=ALPHA, use_rslora=use_rslora)
    copy_lora_from_peft(ours, theirs)
    return ours, theirs


# --- the layer on its own ---------------------------------------------------------------------------


def test_shapes_dtypes_init_and_freezing():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), r=4, alpha=8)
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (8, 4)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) == 4 * 16
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(16)  # kaiming_uniform_(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert layer.delta_weight().shape == layer.base.weight.shape
    half = LoRALinear(nn.Linear(16, 8).to(torch.bfloat16), r=2, alpha=2)
    assert half.lora_A.dtype == half.lora_B.dtype == torch.bfloat16


def test_zero_init_gives_identical_outputs():
    base, ids = tiny_llama(), batch()
    expected = base(ids).logits
    model = inject_lora(tiny_llama(), TARGETS, r=R, alpha=ALPHA)
    assert torch.equal(model(ids).logits, expected)


@pytest.mark.parametrize("use_rslora, expected", [(False, ALPHA / R), (True, ALPHA / math.sqrt(R))])
def test_scaling_plain_and_rslora(use_rslora, expected):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), r=R, alpha=ALPHA, use_rslora=use_rslora)
    assert layer.scaling == pytest.approx(expected)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 16)
    lora_part = x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x) - layer.base(x), lora_part * expected)
    with pytest.raises(AssertionError):  # a scaling of alpha/r where rsLoRA is expected (or vice versa) fails
        other = ALPHA / math.sqrt(R) if not use_rslora else ALPHA / R
        torch.testing.assert_close(layer(x) - layer.base(x), lora_part * other)


def test_merge_unmerge_roundtrip_and_guards():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), r=4, alpha=8)
    nn.init.normal_(layer.lora_B)
    w0, x = layer.base.weight.detach().clone(), torch.randn(5, 16)
    unmerged_out = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight(), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged_out, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()


def test_conv1d_fan_in_fan_out():
    torch.manual_seed(0)
    conv = Conv1D(nf=12, nx=8)  # weight stored (in=8, out=12)
    layer = LoRALinear(conv, r=2, alpha=4)
    assert layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (8, 12)
    assert layer.lora_A.shape == (2, 8) and layer.lora_B.shape == (12, 2)
    nn.init.normal_(layer.lora_B)
    assert layer.delta_weight().shape == conv.weight.shape == (8, 12)
    x = torch.randn(2, 3, 8)
    # The same layer as an nn.Linear: weight transposed. Outputs must agree.
    lin = LoRALinear(nn.Linear(8, 12), r=2, alpha=4)
    with torch.no_grad():
        lin.base.weight.copy_(conv.weight.T), lin.base.bias.copy_(conv.bias)
        lin.lora_A.copy_(layer.lora_A), lin.lora_B.copy_(layer.lora_B)
    torch.testing.assert_close(layer(x), lin(x))
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=0)


# --- injecting into models --------------------------------------------------------------------------


def test_inject_by_names_matches_peft_selection():
    ours, theirs = ours_and_peft()
    assert sorted(lora_layers(ours)) == sorted(theirs.base_model.targeted_module_names)
    assert len(lora_layers(ours)) == 2 * len(TARGETS)
    assert all(not p.requires_grad for n, p in ours.named_parameters() if "lora_" not in n)


def test_inject_by_regex_fullmatch():
    model = inject_lora(tiny_llama(), r"model\.layers\.0\.self_attn\.(q|k)_proj", r=R, alpha=ALPHA)
    assert sorted(lora_layers(model)) == ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj"]
    with pytest.raises(ValueError, match="q_proj"):  # a regex must match the whole name, like peft
        inject_lora(tiny_llama(), "q_proj", r=R, alpha=ALPHA)


def test_no_match_raises_and_names_targets():
    with pytest.raises(ValueError, match="attn_proj"):
        inject_lora(tiny_llama(), ["attn_proj"], r=R, alpha=ALPHA)
    with pytest.raises(ValueError, match="'proj'"):  # list entries match whole dotted parts, not substrings
        inject_lora(tiny_llama(), ["proj"], r=R, alpha=ALPHA)


def test_inject_twice_refused():
    model = inject_lora(tiny_llama(), TARGETS, r=R, alpha=ALPHA)
    with pytest.raises(ValueError, match="already"):
        inject_lora(model, TARGETS, r=R, alpha=ALPHA)


@pytest.mark.parametrize("make, targets", [(tiny_llama, TARGETS), (tiny_gpt2, ["c_attn", "c_fc"])])
def test_trainable_string_equals_peft(make, targets, capsys):
    ours, theirs = ours_and_peft(make, targets)
    theirs.print_trainable_parameters()
    assert format_trainable(ours) == capsys.readouterr().out.strip()
    assert trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    t, a = trainable_parameters(ours)
    assert trainable_fraction(ours) == pytest.approx(t / a) and 0 < t < a


def test_param_arithmetic():
    assert lora_param_count(4096, 4096, 8) == 65_536
    cfg = LlamaConfig(**LLAMA_CFG)
    for targets in (TARGETS, ["k_proj", "o_proj", "gate_proj", "up_proj", "lm_head"], r".*\.1\.mlp\..*"):
        from_config = lora_params_for_model(cfg, targets, r=R)
        model = tiny_llama()
        assert lora_params_for_model(model, targets, r=R) == from_config
        inject_lora(model, targets, r=R, alpha=ALPHA)
        assert trainable_parameters(model)[0] == from_config
        assert lora_params_for_model(model, targets, r=R) == from_config  # also after injection
    # q (32->32) and v (32->16, GQA) and down (64->32), 2 layers:
    assert lora_params_for_model(cfg, TARGETS, r=R) == 2 * R * ((32 + 32) + (32 + 16) + (64 + 32))


# --- numerical equivalence with peft ----------------------------------------------------------------


@pytest.mark.parametrize("make, targets, use_rslora", [
    (tiny_llama, TARGETS, False), (tiny_llama, TARGETS, True), (tiny_gpt2, ["c_attn", "c_proj"], False),
])  # fmt: skip
def test_same_weights_same_logits_as_peft(make, targets, use_rslora):
    ours, theirs = ours_and_peft(make, targets, use_rslora)
    ids = batch()
    ours_logits, peft_logits = ours(ids).logits, theirs(ids).logits
    torch.testing.assert_close(ours_logits, peft_logits, atol=LOGITS_ATOL, rtol=0)
    assert not torch.allclose(ours_logits, make()(ids).logits, atol=1e-3)  # the adapters really do something


def test_wrong_scaling_is_detected():
    ours, theirs = ours_and_peft()
    for layer in lora_layers(ours).values():
        layer.scaling = ALPHA / math.sqrt(R)  # rsLoRA scaling where peft uses alpha/r
    ids = batch()
    assert not torch.allclose(ours(ids).logits, theirs(ids).logits, atol=LOGITS_ATOL)


@pytest.mark.parametrize("make, targets, use_rslora", [
    (tiny_llama, TARGETS, False), (tiny_llama, TARGETS, True), (tiny_gpt2, ["c_attn", "c_proj"], False),
])  # fmt: skip
def test_five_adamw_steps_match_peft(make, targets, use_rslora):
    base = make()
    conv = any(isinstance(m, Conv1D) for m in base.modules())
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0, use_rslora=use_rslora,
                     fan_in_fan_out=conv)
    theirs = get_peft_model(copy.deepcopy(base), cfg)  # same init for both: B = 0, A copied
    ours = inject_lora(base, targets, r=R, alpha=ALPHA, use_rslora=use_rslora)
    copy_lora_from_peft(ours, theirs)
    ids = batch()
    losses = {}
    for key, model in (("ours", ours), ("peft", theirs)):
        model.train()
        torch.manual_seed(3)  # GPT-2 has dropout in its blocks: the same seed gives both runs the same masks
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses[key] = []
        for _ in range(5):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[key].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses["ours"]), torch.tensor(losses["peft"]), atol=TRAIN_ATOL, rtol=0)
    assert losses["ours"][-1] < losses["ours"][0]  # it actually trained
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in theirs.named_modules() if hasattr(m, "lora_A")}
    for name, layer in lora_layers(ours).items():
        assert torch.count_nonzero(layer.lora_B) > 0
        torch.testing.assert_close(layer.lora_A, peft_layers[name].lora_A["default"].weight, atol=TRAIN_ATOL, rtol=0)
        torch.testing.assert_close(layer.lora_B, peft_layers[name].lora_B["default"].weight, atol=TRAIN_ATOL, rtol=0)


def test_merge_unmerge_unload_model_and_peft_merge():
    ours, theirs = ours_and_peft()
    ids = batch()
    before = ours(ids).logits
    weights0 = {n: p.detach().clone() for n, p in ours.named_parameters() if "lora_" not in n}
    merge_lora(ours)
    torch.testing.assert_close(ours(ids).logits, before, atol=1e-5, rtol=0)
    unmerge_lora(ours)
    for n, p in ours.named_parameters():
        if "lora_" not in n:
            torch.testing.assert_close(p, weights0[n], atol=1e-6, rtol=0)
    plain = unload_lora(ours)
    assert not lora_layers(plain) and isinstance(plain.model.layers[0].self_attn.q_proj, nn.Linear)
    torch.testing.assert_close(plain(ids).logits, before, atol=1e-5, rtol=0)
    peft_plain = theirs.merge_and_unload()
    assert len(plain.state_dict()) == len(peft_plain.state_dict())
    for (n1, p1), (n2, p2) in zip(plain.state_dict().items(), peft_plain.state_dict().items()):
        assert n1.replace(".base.", ".") == n2
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=0)


def test_gpt2_conv1d_merge_equals_peft_merge():
    ours, theirs = ours_and_peft(tiny_gpt2, ["c_attn", "c_fc"])
    ids = batch()
    before = ours(ids).logits
    plain, peft_plain = unload_lora(ours), theirs.merge_and_unload()
    assert isinstance(plain.transformer.h[0].attn.c_attn, Conv1D)  # the Conv1D is back, (in, out) layout kept
    torch.testing.assert_close(plain(ids).logits, before, atol=LOGITS_ATOL, rtol=0)
    for (n1, p1), (n2, p2) in zip(plain.state_dict().items(), peft_plain.state_dict().items()):
        assert n1.replace(".base.", ".") == n2
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=0)


# --- dropout ----------------------------------------------------------------------------------------


def test_dropout_only_on_the_lora_path_and_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), r=4, alpha=8, dropout=0.5)
    x = torch.randn(6, 16)
    layer.train()
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0: dropout on the LoRA path cannot touch the base
    nn.init.normal_(layer.lora_B)
    layer.eval()
    no_dropout = layer.base(x) + x @ layer.lora_A.T @ layer.lora_B.T * layer.scaling
    torch.testing.assert_close(layer(x), no_dropout)  # eval: no dropout at all
    layer.train()
    torch.manual_seed(1)
    trained = layer(x)
    torch.manual_seed(1)
    mask = nn.functional.dropout(torch.ones_like(x), 0.5, training=True)  # the same draw: kept entries are 2, else 0
    torch.testing.assert_close(trained, layer.base(x) + (x * mask) @ layer.lora_A.T @ layer.lora_B.T * layer.scaling)
    assert not torch.allclose(trained, no_dropout)


def test_dropout_matches_peft_in_training_mode():
    base = tiny_llama()
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.3)
    theirs = get_peft_model(copy.deepcopy(base), cfg)
    randomize_B(theirs)
    ours = inject_lora(base, TARGETS, r=R, alpha=ALPHA, dropout=0.3)
    copy_lora_from_peft(ours, theirs)
    ids = batch()
    ours.train(), theirs.train()
    torch.manual_seed(5)
    ours_logits = ours(ids).logits
    torch.manual_seed(5)  # peft draws its masks in the same order (x -> dropout -> A -> B), so same seed, same masks
    torch.testing.assert_close(ours_logits, theirs(ids).logits, atol=LOGITS_ATOL, rtol=0)
    torch.manual_seed(6)
    assert not torch.allclose(ours_logits, ours(ids).logits)  # dropout really is active in training


# --- merge exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, None)])
def test_merge_unmerge_exact_within_dtype_rounding(dtype, atol):
    """fp32: back within 1e-6. bf16: each add/subtract rounds to 8 bits of mantissa, so within 2 ulps of |W|."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 32).to(dtype), r=8, alpha=16)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.05)
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    assert not torch.equal(layer.base.weight, w0)
    layer.unmerge()
    if atol is None:
        atol = 2 * torch.finfo(dtype).eps * w0.abs().max().item() * 2  # 2 ulps at the largest |W + delta|
    torch.testing.assert_close(layer.base.weight, w0, atol=atol, rtol=0)


# --- reports and arithmetic -------------------------------------------------------------------------


def test_print_trainable_parameters_prints_peft_line(capsys):
    ours, theirs = ours_and_peft()
    print_trainable_parameters(ours)
    mine = capsys.readouterr().out
    theirs.print_trainable_parameters()
    assert mine == capsys.readouterr().out and mine.startswith("trainable params: ")


def test_params_from_config_counts_without_building():
    cfg = LlamaConfig(**LLAMA_CFG)
    assert params_from_config(cfg) == tiny_llama().num_parameters()
    gpt_cfg = tiny_gpt2().config
    assert params_from_config(gpt_cfg) == tiny_gpt2().num_parameters()


def test_copy_lora_from_peft_into_a_learners_layer():
    """Any module holding lora_A / lora_B Parameters (a learner's own class) can receive peft's adapter."""

    class Learner(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.zeros(R, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, R))

    base = tiny_llama()
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj"]))
    randomize_B(theirs)
    for layer in base.model.layers:
        layer.self_attn.q_proj = Learner(layer.self_attn.q_proj)
    copy_lora_from_peft(base, theirs)
    peft_q = theirs.base_model.model.model.layers[1].self_attn.q_proj
    torch.testing.assert_close(base.model.layers[1].self_attn.q_proj.lora_B, peft_q.lora_B["default"].weight)
    base.model.layers[0].self_attn.q_proj = base.model.layers[0].self_attn.q_proj.base
    with pytest.raises(ValueError, match="only in peft"):
        copy_lora_from_peft(base, theirs)


# --- the reference answers of notebook 02's exercises ----------------------------------------------------------------
def _gqa_llama(layers=2):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                        num_attention_heads=2, num_key_value_heads=1)).eval()


def test_reference_forward_and_init_match_the_layer():
    torch.manual_seed(0)
    lora = LoRALinear(nn.Linear(12, 5), r=4, alpha=8)
    nn.init.normal_(lora.lora_B)
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        got = layer.lora_forward(x, lora.base.weight, lora.base.bias, lora.lora_A, lora.lora_B, 8, 4)
        torch.testing.assert_close(got, lora(x))
    torch.manual_seed(1)
    A, B = layer.init_lora_weights(12, 5, 4)
    torch.manual_seed(1)
    expected = torch.empty(4, 12)
    nn.init.kaiming_uniform_(expected, a=math.sqrt(5))
    assert torch.equal(A, expected) and B.shape == (5, 4) and not B.any()


def test_inject_by_pattern_wraps_exactly_what_peft_targets():
    pattern = r".*\.(q_proj|v_proj)"
    model = layer.inject_by_pattern(_gqa_llama(), pattern, lambda base: LoRALinear(base, 2, 4))
    peft_model = get_peft_model(_gqa_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=pattern))
    assert sorted(lora_layers(model)) == sorted(peft_model.base_model.targeted_module_names)
    assert trainable_parameters(model)[0] == peft_model.get_nb_trainable_parameters()[0]
    with pytest.raises(ValueError, match="q_proj"):
        layer.inject_by_pattern(_gqa_llama(), "q_proj", lambda base: base)  # fullmatch only


def test_peft_lora_parts_reproduce_the_layer_with_rslora():
    model = get_peft_model(_gqa_llama(1), LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj"], use_rslora=True))
    peft_layer = model.base_model.model.model.layers[0].self_attn.k_proj
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
        weight, bias, A, B, scaling = layer.peft_lora_parts(peft_layer)
        x = torch.randn(3, 16)
        assert scaling == 8 / math.sqrt(4)
        torch.testing.assert_close(nn.functional.linear(x, weight, bias) + scaling * (x @ A.T @ B.T), peft_layer(x))


def test_lora_config_for_budget_takes_the_largest_rank_that_fits():
    model = _gqa_llama()
    assert layer.rank_one_cost(model, ["q_proj", "v_proj"]) == 2 * ((16 + 16) + (16 + 8))
    config = layer.lora_config_for_budget(model, ["q_proj", "v_proj"], 500)
    assert (config.r, config.lora_alpha, sorted(config.target_modules)) == (4, 8, ["q_proj", "v_proj"])
    for r, fits in [(config.r, True), (config.r + 1, False)]:
        trained = get_peft_model(_gqa_llama(), LoraConfig(r=r, target_modules=["q_proj", "v_proj"]))
        assert (trained.get_nb_trainable_parameters()[0] <= 500) == fits
    with pytest.raises(ValueError):
        layer.lora_config_for_budget(model, ["q_proj"], 10)
    with pytest.raises(ValueError):
        layer.lora_config_for_budget(model, ["nothing"], 10**6)
