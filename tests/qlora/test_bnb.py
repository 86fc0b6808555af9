"""QLoRA with bitsandbytes (course_lib.qlora.bnb): a 4-bit load, and finetune_qlora's step on the CPU; the GPU path
where there is a GPU."""

import dataclasses
import math

import pytest
import torch

from course_lib.core import tasks
from course_lib.core.runtime import gpu_has_bf16
from course_lib.lora.experiments import make_batches
from course_lib.qlora import bnb, memory
from course_lib.training import finetune
from course_lib.training.finetune import LoraSettings

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
    import bitsandbytes

    model = bnb.load_4bit(small_checkpoint, device="cpu", gradient_checkpointing=True)
    assert bnb.is_4bit(model)
    linears = [m for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # every decoder linear; the head stays unquantized
    state = linears[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.blocksize == 64
    assert linears[0].compute_dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())  # frozen
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.is_gradient_checkpointing
    # what the planner predicts for the weights is what the tensors hold
    sizes = bnb.footprint(model)
    predicted = memory.weight_bytes_qlora(memory.shape_of(model.config), double_quant=True)
    assert sizes["4-bit weights"] == predicted["4-bit linear weights"]
    assert sizes["other parameters"] == predicted["fp32 embeddings, norms, head"]
    # the planner also counts the 1 KiB 8-bit code book per tensor that bitsandbytes keeps beside the scales
    assert sizes["quantization constants"] == predicted["quantization constants"]


def test_our_nf4_reads_bitsandbytes_weights(small_checkpoint):
    """Dequantizing a loaded 4-bit layer with bitsandbytes equals our NF4 of the original weights."""
    import bitsandbytes.functional as bnbf
    from safetensors.torch import load_file

    from course_lib.qlora import quantize

    original = load_file(f"{small_checkpoint}/model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    model = bnb.load_4bit(small_checkpoint, device="cpu", double_quant=False, prepare=False)
    layer = model.model.layers[0].mlp.up_proj
    theirs = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    ours = quantize.nf4_quantize(original.float(), 64).dequantize()
    assert torch.equal(ours, theirs)


def test_one_qlora_step_on_cpu(small_checkpoint, tokenizer):
    model = bnb.load_4bit(small_checkpoint, device="cpu", gradient_checkpointing=True)
    conversations = [tasks.to_messages(example) for example in tasks.make_examples(4, seed=0)]
    settings = LoraSettings(steps=1, batch_size=2, warmup_steps=0, r=4, alpha=8)
    result = finetune.finetune_qlora(model, tokenizer, conversations, settings, progress=False)
    assert result.global_step == 1 and math.isfinite(result.losses[0])
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in result.model.named_parameters() if p.requires_grad)
    # the adapters moved, the 4-bit base did not
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_train_fast_on_a_prepared_4bit_model_computes_in_its_compute_dtype(small_checkpoint, tokenizer):
    """prepare_model_for_kbit_training leaves embeddings and norms in fp32; train_fast itself (not only finetune_qlora)
    puts them back in the 4-bit layers' compute dtype, as on a GPU (bf16 here), rather than training all in fp32."""
    from course_lib.fast.engine import train_fast
    from course_lib.fast.settings import FastSettings

    model = bnb.load_4bit(small_checkpoint, compute_dtype=torch.bfloat16, device="cpu")
    assert model.get_input_embeddings().weight.dtype == torch.float32  # what the preparation did
    conversations = [tasks.to_messages(example) for example in tasks.make_examples(4, seed=0)]
    result = train_fast(model, tokenizer, conversations, FastSettings(steps=1, batch_size=2, r=4, alpha=8),
                        progress=False)
    assert result.details["dtype"] == "bfloat16" and math.isfinite(result.losses[0])
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_finetune_qlora_refuses_an_unquantized_model(tiny_llama, tokenizer):
    with pytest.raises(ValueError, match="4 bits"):
        finetune.finetune_qlora(tiny_llama, tokenizer, [tasks.to_messages(tasks.make_examples(1)[0])])


def test_unknown_model_name_says_what_is_missing(monkeypatch):
    from course_lib.core.models import ModelNotAvailable

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import; without this the test waits ~45 s on network retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailable, match="4 bits"):
        bnb.load_4bit("smollm2-1.7b", device="cpu")


@pytest.mark.gpu
@needs_cuda
def test_qlora_step_on_gpu_uses_bf16_compute_and_paged_8bit_adamw(small_checkpoint, tokenizer, monkeypatch):
    import bitsandbytes

    model = bnb.load_4bit(small_checkpoint, device="cuda")
    layer = next(m for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit))
    assert layer.compute_dtype == (torch.bfloat16 if gpu_has_bf16() else torch.float16)
    seen = {}

    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen["optimizer"] = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's wrapper

    conversations = [tasks.to_messages(example) for example in tasks.make_examples(4, seed=0)]
    settings = LoraSettings(steps=1, batch_size=2, warmup_steps=0, r=4, alpha=8, fast=False)
    original = finetune.train

    def train_with_spy(*args, callbacks=(), **kwargs):
        return original(*args, callbacks=[*callbacks, Spy()], **kwargs)

    monkeypatch.setattr(finetune, "train", train_with_spy)
    result = finetune.finetune_qlora(model, tokenizer, conversations, settings, progress=False)
    assert math.isfinite(result.losses[0])
    # transformers builds "paged_adamw_8bit" as bitsandbytes' AdamW with optim_bits=8 and is_paged=True
    optimizer = seen["optimizer"]
    assert type(optimizer).__module__.startswith("bitsandbytes.optim")
    assert optimizer.is_paged and optimizer.args.optim_bits == 8


@pytest.mark.gpu
@needs_cuda
def test_qlora_on_a_gpu_takes_the_fast_path_in_the_compute_dtype(small_checkpoint, tokenizer):
    model = bnb.load_4bit(small_checkpoint, device="cuda")  # prepared: fp32 norms, checkpointing on
    conversations = [tasks.to_messages(example) for example in tasks.make_examples(8, seed=0)]
    settings = LoraSettings(steps=3, batch_size=4, warmup_steps=0, r=4, alpha=8)
    result = finetune.finetune_qlora(model, tokenizer, conversations, settings, progress=False)
    assert result.path == "fast" and result.details["4bit"] and result.details["optimizer"] == "paged8bit"
    assert result.details["dtype"] == ("bfloat16" if gpu_has_bf16() else "float16")
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.details["peak_reserved_gib"] > 0


def test_training_starts_from_unpacked_weights_after_a_generation(small_checkpoint):
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes packs 4-bit weights for inference only on CPUs with AVX512-BF16")
    model = bnb.load_4bit(small_checkpoint, device="cpu", gradient_checkpointing=False)
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
    assert bnb.unpack_cpu_weights(model) >= 1
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    x2 = x.detach().clone().requires_grad_(True)
    layer(x2).pow(2).sum().backward()
    # the packed layout rounds the block scales (about 1e-5 relative on a 256-wide layer); packed, x2 got no gradient
    assert x2.grad is not None and float((x2.grad - reference).norm() / reference.norm()) < 1e-2


def test_qlora_train_steps_builds_the_recipe_and_lowers_the_loss(small_checkpoint, tokenizer):
    import bitsandbytes

    batch = make_batches([tasks.to_messages(tasks.make_examples(1, seed=0)[0])], tokenizer, batch_size=1, steps=1)[0]
    torch.manual_seed(0)
    model, losses = bnb.qlora_train_steps(small_checkpoint, [batch] * 3, lr=1e-2, r=4)
    layers = [m for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert len(layers) == 2 * 7
    assert {(m.weight.quant_state.quant_type, m.weight.quant_state.nested) for m in layers} == {("nf4", True)}
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_qlora_fast_switch_trains_like_the_trainer(small_checkpoint, tokenizer):
    """finetune_qlora(fast=True) on a CPU: the fast path on the same 4-bit base, the Trainer's loss step by step."""
    conversations = [tasks.to_messages(example) for example in tasks.make_examples(8, seed=1)]
    settings = LoraSettings(steps=3, batch_size=8, learning_rate=1e-2, warmup_steps=1, r=4, alpha=8, max_length=128)
    runs = {}
    for fast in (False, True):
        model = bnb.load_4bit(small_checkpoint, device="cpu")
        torch.manual_seed(settings.seed)  # the Trainer path draws the adapters from the global generator
        runs[fast] = finetune.finetune_qlora(model, tokenizer, conversations,
                                             dataclasses.replace(settings, fast=fast), progress=False)
    slow, fast = runs[False], runs[True]
    assert (slow.path, fast.path) == ("trainer", "fast") and fast.details["4bit"]
    assert fast.losses == pytest.approx(slow.losses, rel=1e-4)
    assert [r["grad_norm"] for r in fast.history] == pytest.approx([r["grad_norm"] for r in slow.history], rel=1e-3)
    assert not fast.model.get_base_model().is_gradient_checkpointing  # the memory plan decides, not the preparation
    with pytest.raises(ValueError, match="no optimizer 'sgd'"):
        finetune.finetune_qlora(bnb.load_4bit(small_checkpoint, device="cpu"), tokenizer, conversations,
                                dataclasses.replace(settings, fast=True), optimizer="sgd", progress=False)


def test_qlora_takes_the_fast_path_by_the_lora_rule(small_checkpoint, tokenizer, monkeypatch):
    """On a CPU the default is the fast path (measured faster there); the rule is finetune_lora's (choose_path)."""
    monkeypatch.setattr(finetune, "train", lambda *a, **k: pytest.fail("the Trainer ran on a CPU by default"))
    model = bnb.load_4bit(small_checkpoint, device="cpu")
    conversations = [tasks.to_messages(example) for example in tasks.make_examples(2, seed=0)]
    result = finetune.finetune_qlora(model, tokenizer, conversations, LoraSettings(steps=1, batch_size=2, r=2, alpha=4),
                                     progress=False)
    assert result.path == "fast" and "CPU" in result.details["why"] and result.details["4bit"]
