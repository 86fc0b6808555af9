"""The memory planner (course_lib.qlora.memory) against hand-computed cases, its activation count against what
autograd saves, and training_memory against a real AdamW step."""

import contextlib

import pytest
import torch

from course_lib.core.models import ALL_LINEAR
from course_lib.qlora import memory
from course_lib.qlora.memory import ModelShape, estimate, training_memory

# A shape small enough to count by hand: vocab 100, hidden 8, MLP 16, 2 layers, 2 heads of 4, 1 KV head, tied.
TINY = dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=4, tie_word_embeddings=True)


def tiny_config(**changes):
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, **changes})


def test_parameter_count_by_hand_and_against_transformers(tiny_llama):
    from transformers import LlamaForCausalLM

    shape = ModelShape.from_config(tiny_config())
    # per layer: q 8x8, k 8x4, v 8x4, o 8x8, gate/up/down 8x16 = 576; two norms of 8
    assert shape.linear_parameters == 2 * 576
    assert shape.num_parameters == 100 * 8 + 2 * (576 + 16) + 8 == 1992
    assert shape.num_parameters == LlamaForCausalLM(tiny_config()).num_parameters()
    assert ModelShape.from_config(tiny_llama.config).num_parameters == tiny_llama.num_parameters()
    untied = ModelShape.from_config(tiny_config(tie_word_embeddings=False))
    assert untied.num_parameters == 1992 + 800 == LlamaForCausalLM(tiny_config(tie_word_embeddings=False)).num_parameters()


def test_full_fp32_adamw_by_hand():
    est = estimate(tiny_config(), "full", batch_size=1, seq_len=4, precision="fp32", device="cpu")
    assert est.breakdown["weights"] == 4 * 1992
    assert est.all_gradients == 4 * 1992
    assert est.breakdown["optimizer"] == 2 * 4 * 1992  # exp_avg and exp_avg_sq in fp32
    assert est.trainable_params == 1992
    assert est.total_bytes == sum(est.breakdown.values())


def test_full_mixed_is_sixteen_bytes_per_parameter_before_activations():
    est = estimate(tiny_config(), "full", batch_size=1, seq_len=1, precision="mixed", device="cuda")
    assert (est.breakdown["weights"] + est.all_gradients + est.breakdown["optimizer"]) == 16 * 1992


def test_lora_by_hand():
    est = estimate(tiny_config(), "lora", batch_size=1, seq_len=4, r=2, targets=["q_proj", "v_proj"],
                   precision="bf16", device="cuda")
    adapters = 2 * (2 * (8 + 8) + 2 * (8 + 4))  # two layers of q (8->8) and v (8->4), r=2
    assert adapters == 112 and est.trainable_params == 112
    assert est.breakdown["weights"] == 2 * 1992 + 4 * 112  # bf16 base, fp32 adapters
    assert est.all_gradients == 4 * 112
    assert est.breakdown["optimizer"] == 8 * 112


def test_qlora_weights_by_hand():
    shape = ModelShape.from_config(tiny_config())
    # 14 linear tensors; blocks of 64: q, k, v, o one block each, gate, up, down two each -> 10 per layer
    plain = memory.weight_bytes_qlora(shape, double_quant=False)
    assert plain == {"4-bit linear weights": 1152 // 2, "quantization constants": 4 * 20,
                     "fp32 embeddings, norms, head": 4 * (1992 - 1152)}
    double = memory.weight_bytes_qlora(shape, double_quant=True)
    # one byte per block, and per tensor a float32 group scale, a float32 offset and a 256-entry float32 code
    assert double["quantization constants"] == 20 + 14 * (4 + 4 + 1024)


def test_qlora_matches_quant_bits_per_parameter_at_scale():
    from course_lib.qlora.quantize import bits_per_parameter

    shape = ModelShape.from_config(memory.llama_sizes()["7B"])
    q = memory.weight_bytes_qlora(shape, double_quant=True)
    bits = 8 * (q["4-bit linear weights"] + q["quantization constants"]) / shape.linear_parameters
    assert bits == pytest.approx(bits_per_parameter(64, double_quant=True), rel=1e-3)


def test_eight_bit_optimizer_state_by_hand():
    assert memory.optimizer_bytes([8192], "adamw_8bit", 4) == 2 * (8192 + 4 * 32)
    assert memory.optimizer_bytes([1000], "adamw_8bit", 4) == 2 * 4 * 1000  # small tensors keep 32-bit state
    assert memory.optimizer_bytes([1000, 10], "adamw", 2) == 2 * 2 * 1010
    assert memory.optimizer_bytes([1000], "sgd", 4) == 0
    # the QLoRA paper's paged 32-bit AdamW: fp32 states at any size, even next to bf16 gradients
    assert memory.optimizer_bytes([8192, 10], "paged_adamw_32bit", 2) == 2 * 4 * 8202


def test_paged_state_and_cuda_context_are_outside_the_allocator():
    est = estimate(tiny_config(), "qlora", batch_size=1, seq_len=8, optimizer="paged_adamw_8bit", device="cuda")
    assert est.paged_bytes == est.breakdown["optimizer"] > 0
    assert est.context_bytes == memory.CUDA_CONTEXT
    assert est.allocated_bytes == est.total_bytes - est.paged_bytes - est.context_bytes


def test_activation_bytes_by_hand():
    per = memory.activation_bytes_per_token(ModelShape.from_config(tiny_config()), "full", "fp32", ALL_LINEAR, 2)
    norm = 4 * 8 + 4 + 4 * 8  # fp32 input, 1/rms, normalized input (its weight trains)
    attention = 4 * (2 * 8 + 2 * 4) + 4 * 2  # q and output, k and v, log-sum-exp per head
    mlp = 4 * 3 * 16  # gate, up, silu(gate)
    inputs = 4 * 8 + 4 * 8 + 4 * 16  # shared q/k/v input, shared gate/up input, down input
    assert per["layer"] == 2 * norm + attention + mlp + inputs == 560
    assert per["head"] == norm + 4 * 8 + 4 * 100 + memory.TOKEN_MISC


def test_peak_moves_to_end_of_backward_when_gradients_dominate():
    short = estimate(tiny_config(), "full", batch_size=1, seq_len=1, precision="fp32", device="cpu")
    long = estimate(tiny_config(), "full", batch_size=8, seq_len=512, precision="fp32", device="cpu")
    assert short.peak_at == "end of backward" and short.breakdown["activations"] == 0
    assert long.peak_at == "start of backward" and long.breakdown["activations"] > long.breakdown["gradients"]


def test_more_memory_for_more_tokens_and_less_with_checkpointing():
    cfg = memory.llama_sizes()["7B"]
    a = estimate(cfg, "lora", batch_size=1, seq_len=512)
    b = estimate(cfg, "lora", batch_size=2, seq_len=512)
    c = estimate(cfg, "lora", batch_size=2, seq_len=512, gradient_checkpointing=True)
    assert a.total_bytes < b.total_bytes and c.total_bytes < b.total_bytes
    q = estimate(cfg, "qlora", batch_size=1, seq_len=512)
    assert q.breakdown["weights"] < a.breakdown["weights"] / 2.5  # fp32 embeddings and head keep it above 1/4


def test_vram_table_has_the_familiar_shape(capsys):
    rows = memory.vram_table()
    by = {row["model"]: row for row in rows}
    assert by["7B"]["params"] == pytest.approx(6.74e9, rel=0.01)
    assert by["70B"]["params"] == pytest.approx(68.98e9, rel=0.01)
    for row in rows:  # QLoRA < LoRA < full, at every size
        assert row["QLoRA (NF4, r=16, paged 8-bit)"] < row["LoRA (bf16, r=16)"] < row["full (mixed, AdamW)"]
    assert 100 < by["7B"]["full (mixed, AdamW)"] < 130  # ~16 bytes/param + activations
    assert by["70B"]["QLoRA (NF4, r=16, paged 8-bit)"] < 48
    memory.print_vram_table()
    printed = capsys.readouterr().out
    assert "Assumptions" in printed and "70B" in printed


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="method"):
        estimate(tiny_config(), "qlora4", batch_size=1, seq_len=1)
    with pytest.raises(ValueError, match="targets"):
        estimate(tiny_config(), "lora", batch_size=1, seq_len=1, targets=["qkv"])
    with pytest.raises(ValueError, match="batch_size"):
        estimate(tiny_config(), "lora", batch_size=0, seq_len=1)
    with pytest.raises(ValueError, match="Llama-style"):
        from transformers import GPT2Config

        estimate(GPT2Config(), "lora", batch_size=1, seq_len=1)


def test_estimate_reads_a_course_model_by_name():
    est = estimate("default", "qlora", batch_size=1, seq_len=8, device="cpu")
    assert est.total_params == 134_515_008


# --- the activation model against autograd ------------------------------------------------------------------
def saved_bytes(method, precision, layers, targets=ALL_LINEAR, tokens=(2, 16)):
    """Bytes autograd saves in one forward pass of a tiny Llama (parameters excluded)."""
    import tempfile

    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=layers, hidden_size=64, intermediate_size=96, head_dim=16,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = LlamaForCausalLM(config).to(dtype)
    if method == "qlora":
        from course_lib.qlora.bnb import add_lora, load_4bit

        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            model = load_4bit(folder, compute_dtype=dtype, device="cpu", gradient_checkpointing=False)
        model = add_lora(model, r=4, targets=targets)
    elif method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), task_type="CAUSAL_LM"))
    # bitsandbytes repacks some 4-bit weights for the CPU in the first forward and frees the old storage; holding
    # every parameter's storage stops an activation from taking its address and being skipped as a parameter
    held = [p.untyped_storage() for p in model.parameters()]
    params = {s.data_ptr() for s in held}
    seen, alive = {}, []

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
            alive.append(storage)  # a storage freed during the pass could hand its address to another: keep each
        return t

    ids = torch.randint(0, 256, tokens)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision != "fp32" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(input_ids=ids, labels=ids)
    return sum(seen.values()), config


@pytest.mark.parametrize("method,precision,targets", [
    ("full", "fp32", ALL_LINEAR), ("lora", "fp32", ALL_LINEAR), ("lora", "fp32", ("q_proj", "v_proj")),
    ("qlora", "fp32", ALL_LINEAR), ("full", "bf16", ALL_LINEAR), ("lora", "bf16", ALL_LINEAR),
    ("qlora", "bf16", ALL_LINEAR), ("full", "mixed", ALL_LINEAR), ("lora", "mixed", ("q_proj", "v_proj")),
])
def test_layer_activations_match_what_autograd_saves(method, precision, targets):
    one, config1 = saved_bytes(method, precision, 1, targets)
    two, config2 = saved_bytes(method, precision, 2, targets)
    shape1, shape2 = ModelShape.from_config(config1), ModelShape.from_config(config2)
    per = memory.activation_bytes_per_token(shape2, method, precision, targets, 4)
    # autocast's 16-bit weight copies of a layer are saved too; the planner books them apart from activations
    copies = (memory.autocast_copies(shape2, method, precision, 4, targets)
              - memory.autocast_copies(shape1, method, precision, 4, targets))
    # 2 x 16 tokens; with 4-bit layers bitsandbytes saves a few hundred bytes per layer that do not grow with tokens
    assert abs(two - one - copies - 32 * per["layer"]) <= (1024 if method == "qlora" else 0)


# --- training_memory: weights, gradients and optimizer state from parameter counts (notebook 02) ------------


def test_training_memory_matches_adamw_after_a_step():
    from transformers import LlamaForCausalLM

    from course_lib.lora.layer import inject_lora, trainable_parameters

    torch.manual_seed(0)
    model = inject_lora(LlamaForCausalLM(tiny_config()), ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    trainable, total = trainable_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    est = training_memory(total, trainable)
    assert est.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    assert est.gradients == sum(p.grad.numel() * p.grad.element_size() for p in params)
    states = [t for s in opt.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert est.optimizer == sum(t.numel() * t.element_size() for t in states)
    assert est.total == est.weights + est.gradients + est.optimizer and "GiB" in str(est)
    full = training_memory(total, total)
    assert full.total == 4 * total * 4  # fp32 full fine-tuning: weights + gradients + 2 Adam states
    with pytest.raises(ValueError, match="trainable_params"):
        training_memory(10, 11)


# --- the fast path's plan: checkpoint as few layers as the memory allows --------------------------------------


def test_fast_path_checkpoints_only_what_does_not_fit():
    from types import SimpleNamespace

    config = SimpleNamespace(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24)
    kept, checkpointed = memory.packed_activation_bytes(config)
    assert memory.plan_checkpointing(config, 8000, 1e12, 512) == (8000, 0.0)  # plenty: no checkpointing
    tokens, fraction = memory.plan_checkpointing(config, 8000, 24 * kept * 8000 / 2, 512)
    assert tokens == 8000 and 0.4 < fraction < 0.6  # half the memory: about half the layers
    tokens, fraction = memory.plan_checkpointing(config, 8000, 1e8, 512)
    assert fraction == 1.0 and 512 <= tokens < 8000 and tokens % 256 == 0  # too little: smaller micro-batches


def test_measured_headroom_gives_back_whole_layers_and_no_more_than_were_checkpointed():
    from types import SimpleNamespace

    config = SimpleNamespace(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24)
    kept, checkpointed = memory.packed_activation_bytes(config)
    layer = (kept - checkpointed) * 8213  # one layer's activations kept instead of only its input
    assert memory.layers_to_uncheckpoint(config, 0.99 * layer, 8213, 23) == 0
    assert memory.layers_to_uncheckpoint(config, 2.5 * layer, 8213, 23) == 2
    assert memory.layers_to_uncheckpoint(config, 100 * layer, 8213, 23) == 23
    assert memory.layers_to_uncheckpoint(config, -layer, 8213, 23) == 0  # over the limit: nothing to give


def test_qlora_state_bytes_agrees_with_the_planner():
    assert memory.qlora_state_bytes(0, 10, 0) == 40 and memory.qlora_state_bytes(0, 0, 10) == 160
    assert memory.qlora_state_bytes(64 * 256, 0, 0) == 64 * 256 / 2 + 256 + 4
    shape = memory.shape_of("default")
    est = memory.estimate("default", "qlora", batch_size=1, seq_len=8, device="cpu")
    planner = est.breakdown["weights"] + est.all_gradients + est.breakdown["optimizer"]
    mine = memory.qlora_state_bytes(shape.linear_parameters, shape.num_parameters - shape.linear_parameters,
                                    shape.lora_parameters(16, memory.ALL_LINEAR))
    assert abs(mine - planner) / planner < 2e-3
