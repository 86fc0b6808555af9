"""The one generation loop: batched, greedy by default, bounded, stops at end of turn, guards loops.

`generate` answers chat message lists or plain strings with `DecodingSettings` (the safe deployment defaults of
module 06); `chat_generate` is the same loop with a progress bar, as the evaluation cells call it.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from transformers import StoppingCriteria

from course_lib.core.progress import progress_bar
from course_lib.data.tokenize import pad_batch

END_OF_TURN = "<|im_end|>"  # the chat end token of the course's models (ChatML template)
# Rows of a batch x (longest prompt + new tokens). Decoding a step costs about as much for 48 rows as for 16 on a
# CPU (the weights are read once a step either way): 96 short prompts took 19 s at 96 rows, 20 s at 48, 30 s at 16.
BATCH_TOKENS = 8192
MAX_BATCH_ROWS = 64


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than `max_prompt_tokens` and lost its oldest tokens."""


@dataclass(frozen=True)
class DecodingSettings:
    """How the deployed model decodes; the defaults are the safe ones (reproducible, bounded)."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy: the same input always gives the same output
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # >1 penalizes every token already seen, prompt included: off by default
    loop_ngram: int = 6  # stop a reply once its last `loop_ngram` tokens have already occurred `loop_repeats` times
    loop_repeats: int = 3
    max_prompt_tokens: int = 1024
    seed: int = 0  # used only when sampling

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.max_prompt_tokens < 1 or self.loop_ngram < 1 or self.loop_repeats < 2:
            raise ValueError("max_prompt_tokens and loop_ngram must be >= 1, loop_repeats >= 2")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "DecodingSettings":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def stop_token_ids(tokenizer) -> list[int]:
    """The token ids that end a reply: EOS and the chat end token, when the vocabulary has them."""
    ids = []
    for token_id in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)):
        if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise ValueError("the tokenizer has neither an EOS token nor <|im_end|>: generation could not stop")
    return ids


def repeats_tail(tokens: Sequence[int], n: int, times: int) -> bool:
    """True when the last `n` tokens occur at least `times` times in `tokens` (a degenerate loop)."""
    if len(tokens) < n * times:
        return False
    tail = list(tokens[-n:])
    found = sum(list(tokens[i : i + n]) == tail for i in range(len(tokens) - n + 1))
    return found >= times


def _loop_guard(prompt_length: int, n: int, times: int):

    class LoopGuard(StoppingCriteria):
        """Stops each row whose generated part has fallen into a repeating loop."""

        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids[:, prompt_length:].tolist()
            return torch.tensor([repeats_tail(row, n, times) for row in generated], device=input_ids.device)

    return LoopGuard()


def encode_prompts(tokenizer, prompts: Sequence, max_prompt_tokens: int) -> list[list[int]]:
    """Token ids per prompt (chat message lists or plain strings), cut from the left with a warning when too long."""
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in prompt):
            ids = tokenizer.apply_chat_template(list(prompt), tokenize=True, add_generation_prompt=True,
                                                return_dict=True)["input_ids"]
        else:
            raise TypeError(f"prompt {i} is neither a string nor a list of chat messages: {prompt!r:.80}")
        if len(ids) > max_prompt_tokens:
            # Keep the end: it holds the latest turn and the generation prompt the model answers from.
            warnings.warn(f"prompt {i} has {len(ids)} tokens; kept only its last {max_prompt_tokens} "
                          f"(max_prompt_tokens)", PromptTruncatedWarning, stacklevel=3)
            ids = ids[-max_prompt_tokens:]
        encoded.append(list(ids))
    return encoded


_VIRTUAL_TOKENS = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")


def virtual_tokens_in_cache(model) -> str | None:
    """The peft type whose virtual tokens `generate` puts in the KV cache (prefix, prompt or p-tuning), else None.

    None also inside `with model.disable_adapter()`, where the model answers as its base.
    """
    config = getattr(model, "active_peft_config", None)
    if config is None or getattr(model, "_adapters_disabled", False):  # peft's flag inside disable_adapter()
        return None
    kind = getattr(config.peft_type, "value", str(config.peft_type))
    return kind if kind in _VIRTUAL_TOKENS else None


def _behind_virtual_tokens(model, kind: str, batch: dict, pad_id: int) -> tuple[object, dict, dict]:
    """The virtual tokens as a filled KV cache, the batch shifted behind their slots, and the base model to run.

    peft 0.21 hands a prefix to generate() as past_key_values, which transformers 5 drops after the first step (the
    replies would be the base model's); with transformers 5.25, which calls the cache `cache`, it injects prompt
    tuning's embeddings again at every step (17 new positions per step for 16 virtual tokens; garbage replies).
    A cache filled before generate() starts stays: generate() skips the input positions the cache already holds
    (here placeholders), and the prompt sits after the virtual tokens, at the positions it had in training.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    slots = model.active_peft_config.num_virtual_tokens
    placeholders = torch.full((ids.shape[0], slots), pad_id, dtype=ids.dtype, device=ids.device)
    shifted = {"input_ids": torch.cat([placeholders, ids], dim=1),
               "attention_mask": torch.cat([torch.ones_like(placeholders, dtype=mask.dtype), mask], dim=1)}
    base = model.get_base_model()
    # transformers 5.25 renamed forward's past_key_values to cache (the old name warns); earlier 5.x know only the old
    key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    if kind == "PREFIX_TUNING":  # the prefix is the keys and values themselves
        return base, shifted, {key: model.get_prompt(batch_size=ids.shape[0])}
    # prompt and p-tuning learn input embeddings: the base model turns them into keys and values, at positions 0..n-1
    embeds = model.get_prompt(batch_size=ids.shape[0]).to(base.get_input_embeddings().weight.dtype)
    with torch.no_grad():
        filled = base(inputs_embeds=embeds, use_cache=True)[key]
    return base, shifted, {key: filled}


def plan_batches(lengths: Sequence[int], max_new_tokens: int, batch_size: int | None = None) -> list[list[int]]:
    """Prompt indices in batches, shortest first: `batch_size` rows each, or by default as many as fit
    `BATCH_TOKENS` (rows x (longest prompt + new tokens)), at most `MAX_BATCH_ROWS`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or None to size batches by tokens), got {batch_size}")
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches, current = [], []
    for i in order:  # the newest row is the batch's longest: prompts come shortest first
        full = len(current) == MAX_BATCH_ROWS or (len(current) + 1) * (lengths[i] + max_new_tokens) > BATCH_TOKENS
        if current and full:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def generate(model, tokenizer, prompts: Sequence, settings: DecodingSettings | None = None,
             batch_size: int | None = None, progress: bool = False) -> list[str]:
    """Replies to prompts (chat message lists or strings) with the safe decoding defaults, in the caller's order.

    `batch_size=None` sizes each batch by its tokens (`plan_batches`). The batch size moves the speed; greedy
    replies stay the same but for float rounding (left padding changes the order of a sum).
    """

    settings = settings or DecodingSettings()
    encoded = encode_prompts(tokenizer, prompts, settings.max_prompt_tokens)
    replies = [""] * len(encoded)
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    sampling = {} if settings.greedy else {"temperature": settings.temperature, "top_p": settings.top_p}
    virtual = virtual_tokens_in_cache(model)
    was_training = model.training
    model.eval()
    if not settings.greedy:
        torch.manual_seed(settings.seed)
    batches = plan_batches([len(ids) for ids in encoded], settings.max_new_tokens, batch_size)
    for idx in progress_bar(batches, desc="generating", disable=not progress or len(batches) < 2, leave=False):
        rows = [{"input_ids": encoded[i], "attention_mask": [1] * len(encoded[i])} for i in idx]
        batch = {k: v.to(device) for k, v in pad_batch(rows, pad_id, "left").items()}
        runner, cache = (model, {})
        if virtual:
            runner, batch, cache = _behind_virtual_tokens(model, virtual, batch, pad_id)
        width = batch["input_ids"].shape[1]
        with torch.no_grad():
            out = runner.generate(
                **batch, max_new_tokens=settings.max_new_tokens, do_sample=not settings.greedy, **sampling,
                repetition_penalty=settings.repetition_penalty, eos_token_id=stops, pad_token_id=pad_id,
                stopping_criteria=[_loop_guard(width, settings.loop_ngram, settings.loop_repeats)],
                # an explicit config: the checkpoint's generation_config may ask for sampling
                top_k=None if settings.greedy else 50, **cache,
            )
        for row, i in zip(out[:, width:], idx):
            replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    model.train(was_training)
    return replies


def chat_generate(model, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 64,
                  batch_size: int | None = None, progress: bool = True) -> list[str]:
    """Answer each conversation greedily with `generate`'s defaults; the decoded replies, in order."""
    settings = DecodingSettings(max_new_tokens=max_new_tokens, max_prompt_tokens=100_000)
    return generate(model, tokenizer, conversations, settings, batch_size=batch_size, progress=progress)
