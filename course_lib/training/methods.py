"""Eight ways to fine-tune the same model, side by side on one task and one budget.

- `full`: every weight trains (the most memory: gradients and two Adam states per weight).
- `last_blocks`: freeze everything except the last transformer blocks and the final norm.
- `bitfit`: train biases only (Zaken et al., 2021). Llama-style models have no biases, so we add zero biases
  to the blocks' linear layers first: the model computes exactly the same function until training moves them.
- `prompt_tuning`: learn a few virtual token embeddings put in front of every input (`peft`).
- `prefix_tuning`: learn a few virtual keys and values in front of every layer's attention (Li & Liang, 2021; `peft`).
- `ia3`: learn one scale per channel of the keys, values and MLP down-projection input (Liu et al., 2022; `peft`).
- `lora`: low-rank adapters beside the linear layers (`peft`).
- `dora`: LoRA with the magnitude of each output channel's weights learned apart from their direction (Liu et al.,
  2024; `peft`).

`compare_methods` trains each for the same steps and batch on the same data, and reports trainable parameters,
peak memory, wall time, validation loss and, given a `score` function, a task metric as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd
import torch
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from course_lib.core.models import ALL_LINEAR
from course_lib.qlora.memory_check import PeakMemory
from course_lib.training.trainer import evaluate_loss, train

METHODS = ("full", "last_blocks", "bitfit", "prompt_tuning", "prefix_tuning", "ia3", "lora", "dora")
PEFT_METHODS = ("prompt_tuning", "prefix_tuning", "ia3", "lora", "dora")  # the ones `apply_method` wraps in a PeftModel
# Learning rates that suit each method on the 135M model over short runs (fewer trainable weights tolerate larger
# steps; IA3's scales start at 1 and prefixes are free vectors, so both need large ones; DoRA takes LoRA's). IA3 and
# prefix tuning were each probed at 1e-2 and 3e-2 (SmolLM2-135M, 6 steps of 4): IA3's loss ended at 0.14 and 0.19,
# prefix tuning's at 0.42 and 0.29.
DEFAULT_LR = {"full": 5e-5, "last_blocks": 1e-4, "bitfit": 1e-3, "prompt_tuning": 3e-2, "prefix_tuning": 3e-2,
              "ia3": 1e-2, "lora": 2e-3, "dora": 2e-3}


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
    if method == "prefix_tuning":
        # keys and values for every layer, sized by peft for grouped-query attention (kv heads × head_dim);
        # peft hands them to the model as a transformers Cache, so the real tokens' positions start after them.
        # Zero keys and values, not peft's random default: random ones (N(0, 1) in every layer) took SmolLM2-135M's
        # loss on the task from 0.8 to 7, and 6 steps brought it back only to 4; zeros add nothing to any output and
        # only take a share of the attention, which the first steps learn to use
        return get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens,
                                                        init_weights="zero"))
    if method == "ia3":
        # peft's default targets for the architecture (Llama: k_proj, v_proj, down_proj); the scales start at 1,
        # so the model is unchanged until training moves them
        return get_peft_model(model, IA3Config(task_type="CAUSAL_LM"))

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [name for name in ALL_LINEAR if name in present] or "all-linear"
    return get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets,
                                            lora_dropout=0.0, task_type="CAUSAL_LM", use_dora=method == "dora"))


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
    score: float | None = None  # the task metric on validation rows, when the caller gave a `score` function

    def row(self) -> dict:
        """A flat row for a table."""
        row = {"method": self.method, "learning_rate": self.learning_rate, "trainable_params": self.trainable,
               "trainable_%": 100 * self.trainable / self.total,
               "peak_memory_MB": (float("nan") if self.peak_memory_bytes is None else self.peak_memory_bytes / 2**20),
               "seconds": self.seconds, "train_loss": self.train_loss, "val_loss": self.val_loss}
        if self.score is not None:
            row["score"] = self.score
        return row


def final_train_loss(history: Sequence[dict], window: int = 5) -> float:
    """The mean of the last few logged training losses (a single step is noisy)."""
    if not history:
        return float("nan")
    tail = [row["loss"] for row in history[-window:]]
    return sum(tail) / len(tail)


def train_method(make_model: Callable, tokenizer, train_data, eval_data, config, method: str, *,
                 learning_rate: float | None = None, progress: bool = True, score: Callable | None = None,
                 **method_kwargs) -> tuple[MethodResult, object]:
    """`run_method`, also returning the trained model (for a caller that evaluates it further)."""

    lr = learning_rate if learning_rate is not None else DEFAULT_LR[method]
    model = apply_method(make_model(), method, seed=config.seed, **method_kwargs)
    trainable, total = count_parameters(model)
    device = next(model.parameters()).device.type
    with PeakMemory(device) as memory:
        result = train(model, tokenizer, train_data, config.replace(learning_rate=lr), progress=progress,
                       desc=method)
    val_loss = evaluate_loss(result.model, tokenizer, eval_data, config)
    metric = float(score(result.model)) if score is not None else None  # outside the timed, measured run
    return MethodResult(method, lr, trainable, total, memory.peak_bytes, result.seconds, val_loss,
                        final_train_loss(result.history), result.history, metric), result.model


def run_method(make_model: Callable, tokenizer, train_data, eval_data, config, method: str, *,
               learning_rate: float | None = None, progress: bool = True, score: Callable | None = None,
               **method_kwargs) -> MethodResult:
    """Build a fresh model, set it up for `method`, train it with `config`, and measure it.

    `score(model) -> float`, when given, adds a task metric of the trained model (e.g. exact match on a few
    validation rows); it is not counted in the run's seconds or memory.
    """

    result, _ = train_method(make_model, tokenizer, train_data, eval_data, config, method,
                             learning_rate=learning_rate, progress=progress, score=score, **method_kwargs)
    return result


def compare_methods(make_model: Callable, tokenizer, train_data, eval_data, config, methods: Sequence[str] = METHODS,
                    learning_rates: dict | None = None, progress: bool = True, score: Callable | None = None,
                    score_name: str = "score", **method_kwargs):
    """Train every method on the same data, steps and batch; a DataFrame with one row per method.

    With `score`, a column `score_name` holds `score(trained model)` for every method.
    """

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r} in methods; choose from {', '.join(METHODS)}")
    learning_rates = {**DEFAULT_LR, **(learning_rates or {})}
    results = [run_method(make_model, tokenizer, train_data, eval_data, config, method,
                          learning_rate=learning_rates[method], progress=progress, score=score, **method_kwargs)
               for method in methods]
    table = pd.DataFrame([r.row() for r in results]).rename(columns={"score": score_name})
    table.attrs["results"] = results
    return table
