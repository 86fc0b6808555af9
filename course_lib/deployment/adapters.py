"""Ship a fine-tune: save and reload adapters, merge and prove it, load safely, quantize, switch adapters.

Artifacts are safetensors only. A pickle checkpoint (.bin, .pt, ...) can run arbitrary code when loaded, so
every loader here refuses a folder holding one unless the caller opts in, and `trust_remote_code` stays off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

from course_lib.core.models import load_causal_lm
from course_lib.deployment.serving import latency_per_token

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.05}  # max |logit difference| per dtype
CHECK_PROMPTS = (
    "Ana is a 34-year-old nurse who lives in Lisbon.",
    "Meet Kenji Tanaka, 51, a pilot from Osaka.",
    "The weather today is",
)


class UnsafeCheckpointError(RuntimeError):
    """A folder holds pickle weights, which can execute code when loaded."""


class MergeMismatchError(AssertionError):
    """The merged model's logits differ from the adapter model's by more than the tolerance."""


def check_safe_folder(folder: str | Path, allow_pickle: bool = False) -> list[Path]:
    """The safetensors files of a model folder; refuses pickle checkpoints unless `allow_pickle`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{folder} holds pickle checkpoint(s) {[p.name for p in pickles]}: loading a pickle can run arbitrary "
            "code. Convert it to safetensors where you trust its origin, or pass allow_pickle=True if you do.")
    found = sorted(folder.glob("*.safetensors"))
    if not found and not pickles:
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights")
    return found


def folder_size(folder: str | Path, pattern: str = "*.safetensors") -> int:
    """Bytes of the files matching `pattern` in a folder (the weights, by default)."""
    return sum(p.stat().st_size for p in Path(folder).glob(pattern) if p.is_file())


def save_adapter(peft_model, folder: str | Path) -> Path:
    """Save only the adapter (peft format: adapter_config.json + adapter_model.safetensors)."""
    folder = Path(folder)
    peft_model.save_pretrained(folder, safe_serialization=True)
    if not (folder / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"peft wrote no adapter_model.safetensors into {folder}")
    return folder


def load_adapter(base_model, folder: str | Path, adapter_name: str = "default", allow_pickle: bool = False):
    """Put the adapter saved in `folder` on `base_model` (a PeftModel; adds a named adapter if it already is one)."""

    check_safe_folder(folder, allow_pickle)
    if isinstance(base_model, PeftModel):
        base_model.load_adapter(str(folder), adapter_name=adapter_name)
        return base_model
    model = PeftModel.from_pretrained(base_model, str(folder), adapter_name=adapter_name)
    model.eval()
    return model


def save_model(model, tokenizer, folder: str | Path) -> Path:
    """Save a full (merged) model and its tokenizer as safetensors."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    check_safe_folder(folder)
    return folder


def load_model(folder: str | Path, dtype=None, quantization_config=None, allow_pickle: bool = False,
               device: str | None = None):
    """Load a saved causal LM safely: safetensors only (unless allowed), never remote code; on `device` (default:
    the GPU when there is one)."""

    check_safe_folder(folder, allow_pickle)
    # An explicit device map: a saved bitsandbytes folder fails to load without one (packed weight shapes).
    # quantization_config=None would override the one a saved quantized folder carries: pass it only when set.
    extra = {"quantization_config": quantization_config} if quantization_config is not None else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype or torch.float32, device_map=device or _default_device(),
        use_safetensors=not allow_pickle, trust_remote_code=False, **extra)
    model.eval()
    return model


def check_batch(tokenizer, prompts: Sequence[str | Sequence[Mapping]] = CHECK_PROMPTS) -> dict:
    """A padded batch of chat prompts to compare two models on (right padding, with attention mask).

    Each prompt is a user message (a string) or a whole conversation up to the assistant's turn (a list of
    {"role", "content"} messages).
    """
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))


def logits_on(model, batch: Mapping) -> "torch.Tensor":  # noqa: F821
    """The model's logits on a batch, in float32, without gradients."""

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()


def max_abs_logit_diff(logits_a, logits_b, attention_mask=None) -> float:
    """The largest |a - b| over every real (unpadded) position and every vocabulary entry."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logits have different shapes: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    diff = (logits_a.float() - logits_b.float()).abs()
    if attention_mask is not None:
        diff = diff[attention_mask.bool()]  # padded positions carry no prediction anyone uses
    return float(diff.max())


def tolerance_for(model) -> float:
    """The stated merge tolerance for the model's dtype (see DEFAULT_TOLERANCE)."""
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return DEFAULT_TOLERANCE.get(dtype, DEFAULT_TOLERANCE["float32"])


def is_quantized(model) -> bool:
    """True when the model (or the base under an adapter) holds bitsandbytes 4-bit or 8-bit weights."""
    # the layers themselves, not the config's flags: a dequantized model keeps those flags
    return any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") and type(m).__module__.startswith("bitsandbytes")
               for m in model.modules())


def merge(peft_model):
    """Fold the adapter into the base weights (W + B·A·alpha/r) and drop the peft wrapper.

    Refuses a quantized base: merging into 4-bit weights re-rounds W + ΔW to the 4-bit grid, whose steps are far
    larger than a LoRA update, so most of the fine-tune is rounded away. Use `merge_dequantized`.
    """
    if is_quantized(peft_model):
        raise ValueError("the base under this adapter is quantized (bitsandbytes): merging would re-round the "
                         "update to the 4/8-bit grid and lose most of it. Use merge_dequantized(...), which puts the "
                         "adapter on the dequantized base it was trained against and merges there in float32.")
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def merge_and_verify(peft_model, batch: Mapping, tolerance: float | None = None) -> tuple[object, float]:
    """Merge and prove it changed nothing: returns (merged model, max |logit diff|); raises beyond the tolerance."""
    tolerance = tolerance_for(peft_model) if tolerance is None else tolerance
    before = logits_on(peft_model, batch)
    merged = merge(peft_model)
    after = logits_on(merged, batch)
    diff = max_abs_logit_diff(before, after, batch.get("attention_mask"))
    if not diff <= tolerance:
        raise MergeMismatchError(f"merged logits differ from the adapter model's by {diff:.3g} > {tolerance:g}")
    return merged, diff


def merge_full_precision(adapter_folder: str | Path, base: str = "default", dtype=None, allow_pickle: bool = False):
    """Reload the base's own weights W in full precision, add the adapter, merge: right for a LoRA adapter trained on
    W. A QLoRA adapter was trained against dequant(NF4(W)): merged into W it gives a model nobody evaluated (see
    `merge_dequantized` and `qlora_merge.compare_qlora_merges`)."""

    base_model, tokenizer = load_causal_lm(base, dtype=dtype or torch.float32)
    return merge(load_adapter(base_model, adapter_folder, allow_pickle=allow_pickle)), tokenizer


def adapter_num_params(config: Mapping, linear_shapes: Mapping[str, tuple[int, int, bool]]) -> int:
    """Parameters a LoRA adapter stores, from its config and the model's linear layers {name: (in, out, has_bias)}.

    Each targeted layer stores A (r x in) and B (out x r); `bias="lora_only"` adds the targeted layers' biases,
    `bias="all"` every bias of the model.
    """
    r, targets, bias = config["r"], set(config["target_modules"]), config.get("bias", "none")
    if bias not in ("none", "lora_only", "all"):
        raise ValueError(f"unknown bias setting {bias!r}")
    total = 0
    for name, (n_in, n_out, has_bias) in linear_shapes.items():
        targeted = name.split(".")[-1] in targets
        if targeted:
            total += r * (n_in + n_out)
        if has_bias and (bias == "all" or (bias == "lora_only" and targeted)):
            total += n_out
    return total


def linear_shapes(model) -> dict[str, tuple[int, int, bool]]:
    """{module name: (in_features, out_features, has_bias)} for every nn.Linear of a model (lm_head excluded)."""

    return {name: (m.in_features, m.out_features, m.bias is not None) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}


# ---- quantization for inference -------------------------------------------------------------------------------


def _default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def quantization_config(bits: int, device: str | None = None):
    """bitsandbytes settings for inference: 4-bit NF4 (compute in bf16 on a GPU, float32 on the CPU) or 8-bit
    LLM.int8; `device` is where the model will run (default: the GPU when there is one)."""

    if bits == 4:
        compute = torch.bfloat16 if (device or _default_device()).startswith("cuda") else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"bits must be 4 or 8, got {bits}")


@dataclass
class Variant:
    """One way to ship the merged model, measured."""

    name: str
    folder: str
    disk_mb: float
    load_s: float
    s_per_token: float
    metric: float | None = None
    error: str | None = None  # why the variant could not run here, if it could not


def quantize_to(merged_folder: str | Path, bits: int, out_folder: str | Path) -> Path:
    """Quantize a merged model with bitsandbytes and save the quantized weights (safetensors)."""
    model = load_model(merged_folder, quantization_config=quantization_config(bits))
    model.save_pretrained(out_folder, safe_serialization=True)
    return Path(out_folder)


def measure_variant(name: str, folder: str | Path, tokenizer, prompt, evaluate=None, n_tokens: int = 16) -> Variant:
    """Load a saved variant, time the load and per-token latency, and run `evaluate(model)` for the task metric."""

    started = time.perf_counter()
    model = load_model(folder)  # a quantized folder carries its quantization_config
    load_s = time.perf_counter() - started
    per_token = latency_per_token(model, tokenizer, prompt, n_tokens=n_tokens)
    metric = evaluate(model) if evaluate is not None else None
    del model
    return Variant(name, str(folder), folder_size(folder) / 1e6, load_s, per_token, metric)


def compare_variants(merged_folder: str | Path, tokenizer, prompt, out_root: str | Path, bits=(4, 8),
                     evaluate=None, n_tokens: int = 16) -> list[Variant]:
    """The unquantized merged model next to its bitsandbytes quantizations: size, load time, latency, metric.

    A quantization that cannot run on this machine is kept as a row with its error instead of stopping the run.
    """
    rows = [measure_variant("fp32 merged", merged_folder, tokenizer, prompt, evaluate, n_tokens)]
    for b in bits:
        out = Path(out_root) / f"merged-{b}bit"
        try:
            quantize_to(merged_folder, b, out)
            rows.append(measure_variant(f"{b}-bit", out, tokenizer, prompt, evaluate, n_tokens))
        except Exception as error:  # noqa: BLE001  (a missing backend must not hide the other rows)
            rows.append(Variant(f"{b}-bit", str(out), float("nan"), float("nan"), float("nan"), None,
                                f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"))
    return rows


def plot_variants(rows: Sequence[Variant]):
    """Four bar panels: disk size, load time, latency per token and the task metric, per variant."""
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.error is None]
    panels = [("disk (MB)", [r.disk_mb for r in ok]), ("load (s)", [r.load_s for r in ok]),
              ("latency (ms/token)", [1000 * r.s_per_token for r in ok]),
              ("exact match (%)", [100 * (r.metric or 0.0) for r in ok])]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3))
    for ax, (title, values) in zip(axes, panels):
        bars = ax.bar([r.name for r in ok], values, color=["#2a7ab9", "#e07b39", "#4c9a2a"][: len(ok)])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values])
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig


# ---- several adapters on one base ---------------------------------------------------------------------------


@dataclass
class SwitchReport:
    """What switching adapters costs: time per switch, and the memory of the base versus each adapter."""

    adapters: list[str]
    switch_ms: float
    base_mb: float
    adapter_mb: dict[str, float]
    reload_s: float | None = None  # for comparison: loading a whole merged model instead


def load_adapters(base_model, folders: Mapping[str, str | Path], allow_pickle: bool = False):
    """One base with several named adapters loaded ({name: folder}); the first is active."""
    model = None
    for name, folder in folders.items():
        model = load_adapter(base_model if model is None else model, folder, adapter_name=name,
                             allow_pickle=allow_pickle)
    if model is None:
        raise ValueError("no adapters given")
    model.set_adapter(next(iter(folders)))
    return model


def adapter_bytes(peft_model, name: str) -> int:
    """Bytes the named adapter's weights occupy in memory."""
    return sum(p.numel() * p.element_size() for n, p in peft_model.named_parameters() if f".{name}." in n)


def switch_report(peft_model, names: Sequence[str], rounds: int = 20) -> SwitchReport:
    """Time `set_adapter` over `rounds` switches and size the base and each adapter."""
    started = time.perf_counter()
    for i in range(rounds):
        peft_model.set_adapter(names[i % len(names)])
    switch_ms = 1000 * (time.perf_counter() - started) / rounds
    peft_model.set_adapter(names[0])
    adapters = {n: adapter_bytes(peft_model, n) / 1e6 for n in names}
    total = sum(p.numel() * p.element_size() for p in peft_model.parameters())
    return SwitchReport(list(names), switch_ms, total / 1e6 - sum(adapters.values()), adapters)


# ---- small models for notebook 06's exercises ------------------------------------------------------------------

# A 2-layer Llama with a 256-token vocabulary: saving, reloading, quantizing and merging it takes a fraction of a
# second, and every peft and bitsandbytes call on it is the one a real model needs.
TINY_LLAMA = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
TINY_TARGETS = ("q_proj", "v_proj", "up_proj")


def tiny_base(seed: int = 0, folder: str | Path | None = None):
    """A tiny Llama with random float32 weights (the same for the same seed); saved as safetensors to `folder` if
    given, so that it can be loaded again, in 4 bits too."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY_LLAMA), dtype=torch.float32)
    model.eval()
    if folder is not None:
        model.save_pretrained(folder, safe_serialization=True)
    return model


def tiny_lora(model, seed: int = 0, r: int = 4, targets: Sequence[str] = TINY_TARGETS):
    """LoRA on `model` with random A and B (a non-zero update, as after training), float32."""
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0,
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # peft's random init makes B as large as A; scale it to a fine-tune's size
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.1)
    peft_model.eval()
    return peft_model


def tiny_batch(seed: int = 0, rows: int = 3, length: int = 12) -> dict:
    """Random token ids for the tiny model, right-padded (the last row is shorter), with the attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY_LLAMA["vocab_size"], (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[-1, length // 2:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def load_4bit_base(folder: str | Path, device: str | None = None):
    """The base model in `folder`, its linear layers quantized to NF4 by bitsandbytes while loading, on `device`
    (default: the GPU when there is one; the exercises' tiny models stay on the CPU, with float32 compute)."""
    return load_model(folder, quantization_config=quantization_config(4, device), device=device)


def merge_dequantized(adapter_folder: str | Path, base_folder: str | Path, quantization_config=None):
    """Merge a QLoRA adapter into the dequantized NF4 base: the weights it was trained on, now in float32.

    `quantization_config` must be the one the QLoRA base was loaded with (default: `quantization_config(4)`, NF4
    without double quantization; the course's QLoRA runs use `qlora.bnb.bnb_config`, with it).
    """
    if quantization_config is None:
        base = load_4bit_base(base_folder)
    else:
        base = load_model(base_folder, quantization_config=quantization_config)
    base = base.dequantize()
    return merge(load_adapter(base, adapter_folder))
