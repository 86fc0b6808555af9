"""The encoder classifier three ways: full fine-tuning, LoRA, and QLoRA (a 4-bit base with LoRA on top).

The course's encoder, all-MiniLM-L6-v2, is a BERT: `describe_encoder` reads off what it is and what
`AutoModelForSequenceClassification` put on it, and checks by experiment that its attention looks both ways.
`compare_methods` trains each method on the same splits with the same steps and batch size and reports what it
trained, what its weights and training state take, how long it ran and how it scores on the test split.

QLoRA on an encoder is the recipe of module 03 with one change: the fresh classification head must stay out of
the quantization (`llm_int8_skip_modules`), or it would be loaded as frozen 4-bit weights that nothing can train.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

from course_lib.core.models import ModelNotAvailable, load_tokenizer, resolve
from course_lib.core.runtime import detect_device
from course_lib.evaluation.classify import (HEAD, LABELS, TextExample, accuracy, load_classifier, lora_config, macro_f1,
                                            name_labels, predict, train_classifier)
from course_lib.qlora.bnb import compute_dtype_for, unpack_cpu_weights

METHODS = ("full", "lora", "qlora")
# Full fine-tuning moves every pretrained weight, so it takes the small learning rate usual for BERT-style models;
# LoRA's adapters start at zero and take a larger one (the 2e-3 of section 5).
LEARNING_RATES = {"full": 1e-4, "lora": 2e-3, "qlora": 2e-3}


# ------------------------------------------------------------------------------------------- what it is


@dataclass(frozen=True)
class EncoderFacts:
    """What an encoder classifier is, read from the loaded model (not from its name)."""

    architecture: str
    model_type: str
    layers: int
    hidden: int
    heads: int
    parameters: int
    bidirectional: bool  # measured: changing a late token changes the first position's output
    head: str

    def __str__(self) -> str:
        return (f"{self.architecture} ({self.model_type}): {self.layers} layers, hidden size {self.hidden}, "
                f"{self.heads} attention heads, {self.parameters / 1e6:.1f}M parameters\n"
                f"attention: {'bidirectional (every token sees every token)' if self.bidirectional else 'causal'}\n"
                f"head: {self.head}")


def _unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _added(parameter_name: str) -> bool:
    """True for what peft added: adapter weights and the trainable copy of a `modules_to_save` layer."""
    return "lora_" in parameter_name or ".modules_to_save." in parameter_name


def _describe_head(model) -> str:
    inner = getattr(model, model.base_model_prefix, None)
    pooler = getattr(inner, "pooler", None)
    head = getattr(model, HEAD, None)
    head = getattr(head, "original_module", head)  # peft's modules_to_save wrapper keeps the layer inside
    out = f"{type(head).__name__}({head.in_features} -> {head.out_features})" if hasattr(head, "in_features") else type(head).__name__
    if pooler is not None and hasattr(getattr(pooler, "dense", None), "in_features"):
        dense = pooler.dense
        return (f"the first token's ([CLS]) final hidden state -> pooler {type(dense).__name__}({dense.in_features} -> "
                f"{dense.out_features}) + {type(pooler.activation).__name__} -> dropout -> {out}")
    return f"{type(model).__name__}'s own pooling -> {out}"


def attends_both_ways(model, tokenizer, text: str = "my parcel has not arrived yet") -> bool:
    """True when changing the last word changes the first token's final hidden state (a causal model's cannot)."""
    core = _unwrap(model)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    changed = ids.clone()
    changed[0, -2] = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("banana"))[0]  # the word before [SEP]
    device = next(core.parameters()).device
    was_training = core.training
    core.eval()  # no dropout: the two runs differ only by the changed token
    with torch.no_grad():
        first = [core(input_ids=x.to(device), output_hidden_states=True).hidden_states[-1][0, 0] for x in (ids, changed)]
    core.train(was_training)
    return not torch.allclose(first[0].float(), first[1].float(), atol=1e-5)


def describe_encoder(model, tokenizer) -> EncoderFacts:
    """Layers, width, heads, parameters, the attention direction (measured) and the classification head."""
    core = _unwrap(model)
    config = core.config
    return EncoderFacts(architecture=type(core).__name__, model_type=config.model_type,
                        layers=config.num_hidden_layers, hidden=config.hidden_size, heads=config.num_attention_heads,
                        parameters=sum(_values(p) for n, p in core.named_parameters() if not _added(n)),
                        bidirectional=attends_both_ways(core, tokenizer),
                        head=_describe_head(core))


# ------------------------------------------------------------------------------------------ the 4-bit path


def four_bit_support(device: str | None = None) -> str | None:
    """None when bitsandbytes runs a 4-bit NF4 layer on `device`; otherwise the reason it cannot."""
    device = device or detect_device().type
    try:
        import bitsandbytes as bnb
    except ImportError:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    try:  # a real layer, quantized and run: a version number alone does not say what this build supports
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to(device)
        layer(torch.randn(2, 64, device=device))
    except Exception as error:  # noqa: BLE001  any failure means no 4-bit here, and the message says why
        first = (str(error).splitlines() or [type(error).__name__])[0]
        return f"bitsandbytes {bnb.__version__} cannot run 4-bit layers on {device}: {first}"
    return None


def load_4bit_classifier(name: str = "minilm", num_labels: int = len(LABELS), r: int = 8, alpha: int = 16,
                         seed: int = 0, device: str | None = None):
    """QLoRA for an encoder: linear layers in 4-bit NF4, the fresh head kept in full precision, LoRA on attention."""
    device = device or detect_device().type
    reason = four_bit_support(device)
    if reason:
        raise RuntimeError(reason)
    # Module 03's QLoRA config; the fresh head stays out of it: in 4 bits it would be frozen random weights.
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype_for(device), llm_int8_skip_modules=[HEAD])
    path, extra = resolve(name)
    torch.manual_seed(seed)  # the new head's initial weights
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, **extra, num_labels=num_labels, quantization_config=config, dtype=torch.float32,
            device_map={"": device})
    except OSError as error:  # offline hub miss, or a folder without weights
        raise ModelNotAvailable(f"Could not load {name!r} in 4 bits: {str(error).splitlines()[0]}") from error
    name_labels(model, num_labels)
    # No gradient checkpointing: 64-token rows keep few activations, so recomputing them would only cost time.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(r, alpha))


# ------------------------------------------------------------------------------------------- the comparison


def _values(param) -> int:
    """How many values a parameter holds: bitsandbytes packs two 4-bit values into each uint8 element."""
    return param.numel() * 2 if type(param).__name__ == "Params4bit" else param.numel()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters, each tensor once; a packed 4-bit tensor counts the values it holds."""
    trainable = total = 0
    seen = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = _values(param)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def weight_bytes(model) -> int:
    """Bytes the model's parameters and buffers occupy, 4-bit block constants included."""
    size, seen = 0, set()
    for module in model.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            size += tensor.numel() * tensor.element_size()
            state = getattr(tensor, "quant_state", None)
            if state is not None:  # the per-block scales (and, double-quantized, their own scales)
                size += state.absmax.numel() * state.absmax.element_size()
                if state.nested:
                    size += state.state2.absmax.numel() * 4 + state.state2.code.numel() * 4
    return size


@dataclass(frozen=True)
class MethodResult:
    """One fine-tuning method on the encoder: its cost and its test scores (or why it did not run)."""

    method: str
    trainable: int = 0
    total: int = 0
    weight_bytes: int = 0
    state_bytes: int = 0  # gradients and AdamW's two states, one of each per trainable parameter
    seconds: float = math.nan
    accuracy: float = math.nan
    macro_f1: float = math.nan
    peak_bytes: int | None = None  # measured on a GPU (torch.cuda.max_memory_allocated)
    predictions: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # the training loss of every step
    skipped: str | None = None


def load_for_method(method: str, name: str = "minilm", r: int = 8, alpha: int = 16, seed: int = 0,
                    device: str | None = None):
    """(model, tokenizer) ready to train by `method`: 'full' (every weight), 'lora' or 'qlora'."""
    if method == "full":
        return load_classifier(name, lora=False, seed=seed)
    if method == "lora":
        return load_classifier(name, lora=True, r=r, alpha=alpha, seed=seed)
    if method == "qlora":
        model = load_4bit_classifier(name, r=r, alpha=alpha, seed=seed, device=device)
        return model, load_tokenizer(name)
    raise ValueError(f"method must be one of {METHODS}, not {method!r}")


def _release(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_method(method: str, splits: dict[str, Sequence[TextExample]], steps: int = 150, batch_size: int = 16,
               learning_rate: float | None = None, r: int = 8, seed: int = 0, name: str = "minilm",
               progress: bool = True) -> MethodResult:
    """Train the classifier by `method` on splits['train'] and score it on splits['test'] (QLoRA skips, with the
    reason, where bitsandbytes cannot run 4-bit)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    for split in ("train", "test"):
        if not splits.get(split):
            raise ValueError(f"splits[{split!r}] is missing or empty")
    device = detect_device().type
    if method == "qlora" and (reason := four_bit_support(device)):
        return MethodResult(method, skipped=reason)
    model, tokenizer = load_for_method(method, name, r=r, seed=seed, device=device)
    trainable, total = count_parameters(model)
    weights = weight_bytes(model)  # before training: predicting on the CPU repacks 4-bit weights for inference
    state = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    if method == "qlora" and device == "cpu":
        unpack_cpu_weights(model)  # bitsandbytes' CPU inference layout passes no gradient (qlora.bnb says why)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # No validation during training: an evaluation pass in the middle would repack the CPU 4-bit weights.
    run = train_classifier(model, tokenizer, splits["train"], None, steps=steps, batch_size=batch_size,
                           learning_rate=learning_rate or LEARNING_RATES[method], seed=seed, progress=progress,
                           desc=method)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    y_true = [e.label for e in splits["test"]]
    y_pred = predict(model, tokenizer, [e.text for e in splits["test"]])
    result = MethodResult(method, trainable, total, weights, state, run.seconds, accuracy(y_true, y_pred),
                          macro_f1(y_true, y_pred), peak, y_pred, [row["loss"] for row in run.history])
    _release(model)
    return result


def compare_methods(splits: dict[str, Sequence[TextExample]], methods: Sequence[str] = METHODS, steps: int = 150,
                    batch_size: int = 16, learning_rates: dict[str, float] | None = None, r: int = 8, seed: int = 0,
                    name: str = "minilm", progress: bool = True) -> list[MethodResult]:
    """Each method on the same splits, steps and batch size (each at its own learning rate), in order."""
    rates = {**LEARNING_RATES, **(learning_rates or {})}
    return [run_method(m, splits, steps, batch_size, rates.get(m), r, seed, name, progress) for m in methods]


def format_methods(results: Sequence[MethodResult]) -> str:
    """The comparison as a text table: parameters, memory, time, test scores; a skipped method says why."""
    mib = 2**20
    lines = [f"{'method':7} {'trainable':>11} {'of total':>9} {'weights MiB':>11} {'+ grads & AdamW MiB':>19} "
             f"{'train s':>8} {'accuracy':>9} {'macro-F1':>9}" + ("  peak GPU MiB" if any(r.peak_bytes for r in results) else "")]
    for r in results:
        if r.skipped:
            lines.append(f"{r.method:7} skipped: {r.skipped}")
            continue
        peak = f"  {r.peak_bytes / mib:12.0f}" if r.peak_bytes else ""
        lines.append(f"{r.method:7} {r.trainable:11,} {r.trainable / r.total:9.2%} {r.weight_bytes / mib:11.1f} "
                     f"{r.state_bytes / mib:19.1f} {r.seconds:8.1f} {r.accuracy:9.1%} {r.macro_f1:9.3f}{peak}")
    return "\n".join(lines)


def plot_method_losses(results: Sequence[MethodResult], title: str = "training loss by method", ax=None):
    """Each method's training loss per step on one axis (a moving average over 10 steps; log scale)."""
    import matplotlib.pyplot as plt  # heavy, and only for notebooks that plot

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    k = 10
    for result in results:
        if result.skipped or not result.losses:
            continue
        losses = result.losses
        k = min(10, len(losses))
        smooth = [sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, label=result.method)
    ax.set(xlabel="step", ylabel=f"loss ({k}-step average)", title=title)
    ax.set_yscale("log")  # a run near the ceiling and one still learning differ tenfold in loss
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
