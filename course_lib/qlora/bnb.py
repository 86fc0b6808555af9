"""QLoRA with the libraries: a course model in 4-bit NF4, prepared for k-bit training, with LoRA on top.

`qlora.quantize` builds NF4 by hand to show how it works; here `bitsandbytes` does it for real through
`transformers.BitsAndBytesConfig`. It runs on a CUDA GPU and, since bitsandbytes 0.50, on the CPU: the
compute dtype is bf16 where the GPU supports it, float32 on the CPU (bf16 matmuls are slow on most CPUs).
On the GPU the optimizer is bitsandbytes' paged 8-bit AdamW, the QLoRA paper's choice.
"""

from __future__ import annotations

import gc
from typing import Sequence

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from course_lib.core.models import ALL_LINEAR, ModelNotAvailable, find_spec, load_tokenizer, resolve
from course_lib.core.runtime import detect_device, gpu_has_bf16


def compute_dtype_for(device: str):
    """bf16 on a GPU that has it, fp16 on an older GPU, float32 on the CPU."""

    if device == "cuda":
        return torch.bfloat16 if gpu_has_bf16() else torch.float16
    return torch.float32


def bnb_config(compute_dtype=None, double_quant: bool = True, device: str | None = None):
    """The QLoRA quantization config: NF4 weights, double-quantized block scales, matmuls in compute_dtype."""

    if compute_dtype is None:
        compute_dtype = compute_dtype_for(device or detect_device().type)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_4bit(name: str = "default", compute_dtype=None, device: str | None = None, double_quant: bool = True,
              gradient_checkpointing: bool = True, prepare: bool = True):
    """Load a course model (name or folder) with its linear layers in 4-bit NF4, ready for k-bit training.

    `prepare_model_for_kbit_training` freezes the base, casts the layers that stay in 16 bits (embeddings,
    norms) to fp32 for stable training, and turns on gradient checkpointing (non-reentrant) unless told not to.
    """

    device = device or detect_device().type
    compute_dtype = compute_dtype or compute_dtype_for(device)
    path, extra = resolve(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, **extra, quantization_config=bnb_config(compute_dtype, double_quant), dtype=compute_dtype,
            device_map={"": device},
        )
    except OSError as error:  # offline hub miss, or a folder without weights
        spec = find_spec(name)
        what = f"{spec.key!r} ({spec.hub_id})" if spec else repr(name)
        raise ModelNotAvailable(f"Could not load {what} in 4 bits: {str(error).splitlines()[0]}") from error
    if device == "cpu":
        own_memory(model)
    if prepare:

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # the cache is useless in training and clashes with checkpointing
    return model


def own_memory(model) -> None:
    """Copy parameters and buffers that alias the memory-mapped checkpoint into ordinary memory (4-bit ones stay).

    Where the checkpoint's dtype is the compute dtype (fp32 on the CPU), from_pretrained leaves embeddings and norms
    pointing into the mapped file, which keeps the whole file mapped and resident (538 MB for the 135M model)
    next to the 4-bit copy, and a memory measurement would count every touched page of it as training memory.
    A copy costs only those small layers and lets the mapping go; 4-bit weights were freshly quantized already.
    """
    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if type(param).__name__ != "Params4bit":
                    param.data = param.data.clone()
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.clone()
    gc.collect()


def load_qlora_base(name: str = "default", **kwargs):
    """(4-bit model, tokenizer) with the course's pad-token setup, as `core.models.load_causal_lm` returns them."""

    model = load_4bit(name, **kwargs)
    tokenizer = load_tokenizer(name)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def add_lora(model, r: int = 16, alpha: int | None = None, targets: Sequence[str] = ALL_LINEAR, dropout: float = 0.0):
    """Wrap a (prepared) 4-bit model with LoRA adapters on `targets`; the adapters are fp32 and trainable."""

    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=dropout,
                        target_modules=list(targets), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def to_compute_dtype(model) -> None:
    """Undo `prepare_model_for_kbit_training` for the fast path: every layer in the 4-bit layers' compute dtype.

    The preparation keeps embeddings and norms in fp32 and turns on gradient checkpointing for every layer, which
    suits the Trainer; the fast path computes in the compute dtype end to end and checkpoints only the layers its
    memory plan asks for. On a CPU the compute dtype is fp32 already and only the checkpointing changes.
    """
    dtype = four_bit_compute_dtype(model)
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if type(param).__name__ != "Params4bit" and param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    if getattr(model, "_require_grads_hook", None) is not None:
        model.disable_input_require_grads()


def four_bit_compute_dtype(model):
    """The dtype the model's bitsandbytes 4-bit layers compute in, or None where it has none."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # then no model here can hold its layers
        return None
    return next((m.compute_dtype for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)), None)


def model_compute_dtype(model):
    """The dtype the model computes in: its 4-bit layers' compute dtype (they store uint8), else its embedding's."""
    return four_bit_compute_dtype(model) or model.get_input_embeddings().weight.dtype


def is_4bit(model) -> bool:
    """True when the model's decoder linear layers hold bitsandbytes 4-bit weights."""
    return four_bit_compute_dtype(model) is not None


def footprint(model) -> dict[str, int]:
    """Bytes the model's parameters and buffers occupy, split into 4-bit weights, their constants and the rest."""
    packed = constants = other = 0
    seen = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            size = param.numel() * param.element_size()
            state = getattr(param, "quant_state", None)
            if state is not None:
                packed += size
                constants += state.absmax.numel() * state.absmax.element_size()
                if state.nested:
                    constants += state.state2.absmax.numel() * 4 + state.state2.code.numel() * 4 + 4
            else:
                other += size
    return {"4-bit weights": packed, "quantization constants": constants, "other parameters": other}


def unpack_cpu_weights(model) -> int:
    """Undo bitsandbytes' CPU inference packing of 4-bit weights; returns how many layers it unpacked.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight for its fast inference kernel the
    first time the layer runs in eval mode without gradients (generating before training does that), and keeps
    it packed when training resumes; the packed kernel then passes no gradient to the layer's input (seen with
    bitsandbytes 0.50.2), so the adapters below it learn nothing useful and training diverges. Training must start
    from the plain layout.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    unpacked = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, module.weight.quant_state)
            unpacked += 1
    return unpacked


def qlora_train_steps(model_dir, batches, lr: float = 2e-3, r: int = 8, targets: Sequence[str] = ALL_LINEAR):
    """The QLoRA recipe by hand, the reference answer of notebook 03's last exercise: load `model_dir` in 4-bit NF4
    with double quantization, prepare it for k-bit training, add LoRA and take one AdamW step per batch.

    Returns (peft model, the loss before each step).
    """
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for batch in batches:
        batch = {key: value.to(model.device) for key, value in batch.items()}  # the 4-bit model sits on the GPU if any
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return model, losses
