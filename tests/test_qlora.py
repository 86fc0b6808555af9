"""QLoRA with bitsandbytes: a 4-bit load and a QLoRA step on the CPU; the GPU path where there is a GPU."""

import math

import pytest
import torch

from course_lib import memory, qlora, tasks
from course_lib.train import LoraSettings

pytest.importorskip("bitsandbytes")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def small_checkpoint(tokenizer, tmp_path):
    """A 2-layer Llama with the real vocabulary saved as safetensors (hidden 64: bitsandbytes' CPU kernels
    need at least one 64-value block per row)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "small")
    tokenizer.save_pretrained(tmp_path / "small")
    return str(tmp_path / "small")


def test_load_4bit_on_cpu_quantizes_linears_and_prepares(small_checkpoint):
    import bitsandbytes as bnb

    model = qlora.load_4bit(small_checkpoint, device="cpu", gradient_checkpointing=True)
    assert qlora.is_4bit(model)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # every decoder linear; the head stays unquantized
    state = linears[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.blocksize == 64
    assert linears[0].compute_dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())  # frozen
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.is_gradient_checkpointing
    # what the planner predicts for the weights is what the tensors hold
    sizes = qlora.footprint(model)
    predicted = memory.weight_bytes_qlora(memory.shape_of(model.config), double_quant=True)
    assert sizes["4-bit weights"] == predicted["4-bit linear weights"]
    assert sizes["other parameters"] == predicted["fp32 embeddings, norms, head"]
    # the planner also counts the 1 KiB 8-bit code book per tensor that bitsandbytes keeps beside the scales
    assert sizes["quantization constants"] == predicted["quantization constants"]


def test_our_nf4_reads_bitsandbytes_weights(small_checkpoint):
    """Dequantizing a loaded 4-bit layer with bitsandbytes equals our NF4 of the original weights."""
    import bitsandbytes.functional as bnbf
    from safetensors.torch import load_file

    from course_lib import quant

    original = load_file(f"{small_checkpoint}/model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    model = qlora.load_4bit(small_checkpoint, device="cpu", double_quant=False, prepare=False)
    layer = model.model.layers[0].mlp.up_proj
    theirs = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    ours = quant.nf4_quantize(original.float(), 64).dequantize()
    assert torch.equal(ours, theirs)


def test_one_qlora_step_on_cpu(small_checkpoint, tokenizer):
    model = qlora.load_4bit(small_checkpoint, device="cpu", gradient_checkpointing=True)
    conversations = [tasks.to_messages(example) for example in tasks.generate(4, seed=0)]
    settings = LoraSettings(steps=1, batch_size=2, warmup_steps=0, r=4, alpha=8)
    result = qlora.finetune_qlora(model, tokenizer, conversations, settings, progress=False)
    assert result.global_step == 1 and math.isfinite(result.losses[0])
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in result.model.named_parameters() if p.requires_grad)
    # the adapters moved, the 4-bit base did not
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_finetune_qlora_refuses_an_unquantized_model(tiny_llama, tokenizer):
    with pytest.raises(ValueError, match="4 bits"):
        qlora.finetune_qlora(tiny_llama, tokenizer, [tasks.to_messages(tasks.generate(1)[0])])


def test_unknown_model_name_says_what_is_missing(monkeypatch):
    from course_lib.models import ModelNotAvailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="4 bits"):
        qlora.load_4bit("smollm2-1.7b", device="cpu")


def test_peak_memory_context_measures_an_allocation():
    with memory.PeakMemory("cpu", preload=False) as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert mem.peak_bytes is not None and mem.peak_bytes >= 60 * 2**20


@pytest.mark.gpu
@needs_cuda
def test_qlora_step_on_gpu_uses_bf16_compute_and_paged_8bit_adamw(small_checkpoint, tokenizer):
    import bitsandbytes as bnb

    model = qlora.load_4bit(small_checkpoint, device="cuda")
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.compute_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    seen = {}

    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen["optimizer"] = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's wrapper

    conversations = [tasks.to_messages(example) for example in tasks.generate(4, seed=0)]
    settings = LoraSettings(steps=1, batch_size=2, warmup_steps=0, r=4, alpha=8)
    import course_lib.train as train_module

    original = train_module.train

    def train_with_spy(*args, callbacks=(), **kwargs):
        return original(*args, callbacks=[*callbacks, Spy()], **kwargs)

    try:
        train_module.train = train_with_spy
        result = qlora.finetune_qlora(model, tokenizer, conversations, settings, progress=False)
    finally:
        train_module.train = original
    assert math.isfinite(result.losses[0])
    # transformers builds "paged_adamw_8bit" as bitsandbytes' AdamW with optim_bits=8 and is_paged=True
    optimizer = seen["optimizer"]
    assert type(optimizer).__module__.startswith("bitsandbytes.optim")
    assert optimizer.is_paged and optimizer.args.optim_bits == 8


@pytest.mark.gpu
@needs_cuda
def test_planner_within_15_percent_on_gpu():
    """A quick version of `python -m course_lib.memory validate --device cuda` on the 135M model."""
    from course_lib.models import resolve

    path = resolve("default")[0]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    for setup in memory.validation_setups("cuda"):
        setup = dict(setup)
        gc = setup.pop("gradient_checkpointing", False)
        est = memory.estimate(config, batch_size=8, seq_len=512, device="cuda", gradient_checkpointing=gc, **setup)
        got = memory.measure_peak(path, batch_size=8, seq_len=512, device="cuda", gradient_checkpointing=gc, **setup)
        assert abs(est.allocated_bytes - got["peak"]) / got["peak"] < 0.15, (setup, est.allocated_bytes, got["peak"])


def test_peak_memory_reports_nothing_where_it_cannot_measure(monkeypatch):
    monkeypatch.setattr(memory.os, "access", lambda *a: False)  # e.g. a sandbox that forbids clear_refs
    with memory.PeakMemory("cpu", preload=False) as mem:
        torch.ones(1024)
    assert mem.peak_bytes is None


def test_peak_memory_reports_nothing_where_the_reset_is_refused(monkeypatch):
    def refused():
        raise PermissionError(13, "Permission denied", "/proc/self/clear_refs")  # what Landlock answers in the grader

    monkeypatch.setattr(memory, "_reset_peak_rss", refused)
    with memory.PeakMemory("cpu", preload=False) as mem:
        torch.ones(1024)
    assert mem.peak_bytes is None


def test_training_starts_from_unpacked_weights_after_a_generation(small_checkpoint):
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes packs 4-bit weights for inference only on CPUs with AVX512-BF16")
    model = qlora.load_4bit(small_checkpoint, device="cpu", gradient_checkpointing=False)
    layer = model.model.layers[0].mlp.up_proj
    torch.manual_seed(0)
    x = torch.randn(3, layer.in_features, requires_grad=True)
    layer(x).pow(2).sum().backward()
    reference = x.grad.clone()
    model.eval()
    with torch.no_grad():
        layer(x.detach())  # what chat_generate does before training
    assert layer.weight.quant_state.packing_format_for_cpu
    model.train()
    assert qlora.unpack_cpu_weights(model) >= 1
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    x2 = x.detach().clone().requires_grad_(True)
    layer(x2).pow(2).sum().backward()
    # the packed layout rounds the block scales (about 1e-5 relative on a 256-wide layer); packed, x2 got no gradient
    assert x2.grad is not None and float((x2.grad - reference).norm() / reference.norm()) < 1e-2
