"""Five ways to fine-tune the same model, side by side on one task and one budget.

- `full`: every weight trains (the most memory: gradients and two Adam states per weight).
- `last_blocks`: freeze everything except the last transformer blocks and the final norm.
- `bitfit`: train biases only (Zaken et al., 2021). Llama-style models have no biases, so we add zero biases
  to the blocks' linear layers first: the model computes exactly the same function until training moves them.
- `prompt_tuning`: learn a few virtual token embeddings put in front of every input (`peft`).
- `lora`: low-rank adapters beside the linear layers (`peft`).

`compare_methods` trains each for the same steps and batch on the same data, and reports trainable parameters,
peak memory, wall time and validation loss as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from course_lib.core.models import ALL_LINEAR
from course_lib.qlora.memory_check import PeakMemory
from course_lib.training.trainer import evaluate_loss, train

METHODS = ("full", "last_blocks", "bitfit", "prompt_tuning", "lora")
# Learning rates that suit each method on the 135M model (fewer trainable weights tolerate larger steps).
DEFAULT_LR = {"full": 5e-5, "last_blocks": 1e-4, "bitfit": 1e-3, "prompt_tuning": 3e-2, "lora": 2e-3}


def tiny_causal_lm(tokenizer, layers: int = 4, hidden: int = 64, seed: int = 0):
    """A small Llama with random weights and the tokenizer's real vocabulary: trains in a fraction of a second per step.

    The smoke and grade profiles use it so that CI and the grader stay fast; its losses start near ln(vocab) and
    fall as it learns the task's tokens, but it never becomes a useful model.
    """

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,  # as SmolLM2: one vocab matrix
                         pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def decoder_blocks(model):
    """The model's list of transformer blocks (the longest ModuleList: `model.layers`, `transformer.h`, ...)."""

    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of transformer blocks")
    return max(lists, key=lambda item: len(item[1]))


def freeze_all_but_last_blocks(model, n_blocks: int = 2):
    """Train only the last `n_blocks` transformer blocks and the norms after them."""

    prefix, blocks = decoder_blocks(model)
    if not 1 <= n_blocks <= len(blocks):
        raise ValueError(f"n_blocks must be between 1 and {len(blocks)} (the model's block count), got {n_blocks}")
    for param in model.parameters():
        param.requires_grad_(False)
    for block in list(blocks)[-n_blocks:]:
        for param in block.parameters():
            param.requires_grad_(True)
    for name, module in model.named_modules():  # the final norm sits after the blocks (Llama model.norm, GPT-2 ln_f)
        outside = not name.startswith(prefix + ".") and name != prefix
        if outside and ("norm" in type(module).__name__.lower() or isinstance(module, torch.nn.LayerNorm)):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)
    return model


def bitfit(model):
    """Train biases only; linear layers inside the blocks that have none get a zero bias first."""

    for param in model.parameters():
        param.requires_grad_(False)
    _, blocks = decoder_blocks(model)
    for module in blocks.modules():
        if isinstance(module, torch.nn.Linear) and module.bias is None:
            module.bias = torch.nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                                         device=module.weight.device))
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.requires_grad_(True)
    return model


def apply_method(model, method: str, *, seed: int = 0, last_blocks: int = 2, lora_r: int = 8, lora_alpha: int = 16,
            virtual_tokens: int = 16):
    """The model set up for `method`: frozen parts frozen, new parameters added and seeded."""

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    torch.manual_seed(seed)  # LoRA and prompt-tuning initializations repeat with the run's seed
    if method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method == "last_blocks":
        return freeze_all_but_last_blocks(model, last_blocks)
    if method == "bitfit":
        return bitfit(model)
    if method == "prompt_tuning":
        # initialized from embeddings of random vocabulary tokens: on the scale the model expects
        return get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens,
                                                        prompt_tuning_init="SAMPLE_VOCAB"))

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [name for name in ALL_LINEAR if name in present] or "all-linear"
    return get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets,
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))






@dataclass
class MethodResult:
    """One method's run: what it trained, what it cost, how well it did."""

    method: str
    learning_rate: float
    trainable: int
    total: int
    peak_memory_bytes: int | None  # None where the OS cannot measure it (see PeakMemory)
    seconds: float
    val_loss: float
    train_loss: float
    history: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        """A flat row for a table."""
        return {"method": self.method, "learning_rate": self.learning_rate, "trainable_params": self.trainable,
                "trainable_%": 100 * self.trainable / self.total, "peak_memory_MB": (float("nan") if self.peak_memory_bytes is None
                                                                     else self.peak_memory_bytes / 2**20),
                "seconds": self.seconds, "train_loss": self.train_loss, "val_loss": self.val_loss}


def final_train_loss(history: Sequence[dict], window: int = 5) -> float:
    """The mean of the last few logged training losses (a single step is noisy)."""
    if not history:
        return float("nan")
    tail = [row["loss"] for row in history[-window:]]
    return sum(tail) / len(tail)


def run_method(make_model: Callable, tokenizer, train_data, eval_data, config, method: str, *,
               learning_rate: float | None = None, progress: bool = True, **method_kwargs) -> MethodResult:
    """Build a fresh model, set it up for `method`, train it with `config`, and measure it."""

    lr = learning_rate if learning_rate is not None else DEFAULT_LR[method]
    model = apply_method(make_model(), method, seed=config.seed, **method_kwargs)
    trainable, total = count_parameters(model)
    device = next(model.parameters()).device.type
    with PeakMemory(device) as memory:
        result = train(model, tokenizer, train_data, config.replace(learning_rate=lr), progress=progress,
                       desc=method)
    val_loss = evaluate_loss(result.model, tokenizer, eval_data, config)
    return MethodResult(method, lr, trainable, total, memory.peak_bytes, result.seconds, val_loss,
                        final_train_loss(result.history), result.history)


def compare_methods(make_model: Callable, tokenizer, train_data, eval_data, config, methods: Sequence[str] = METHODS,
                    learning_rates: dict | None = None, progress: bool = True, **method_kwargs):
    """Train every method on the same data, steps and batch; a DataFrame with one row per method."""

    learning_rates = {**DEFAULT_LR, **(learning_rates or {})}
    results = [run_method(make_model, tokenizer, train_data, eval_data, config, method,
                          learning_rate=learning_rates[method], progress=progress, **method_kwargs)
               for method in methods]
    table = pd.DataFrame([r.row() for r in results])
    table.attrs["results"] = results
    return table

