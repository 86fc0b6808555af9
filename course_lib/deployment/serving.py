"""Serving: answer requests one at a time with the safe decoding defaults, and time each token."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from course_lib.evaluation.generate import DecodingSettings, PromptTruncatedWarning, encode_prompts, generate


def latency_per_token(model, tokenizer, prompt, n_tokens: int = 16, repeats: int = 1) -> float:
    """Seconds per generated token for one prompt, forcing exactly `n_tokens` new tokens (best of `repeats`)."""

    ids = encode_prompts(tokenizer, [prompt], 10_000)[0]
    batch = {"input_ids": torch.tensor([ids], device=next(model.parameters()).device)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                           top_k=None, pad_token_id=tokenizer.pad_token_id)
        best = min(best, time.perf_counter() - started)
    return best / n_tokens


@dataclass(frozen=True)
class Served:
    """One answered request of the serving loop."""

    request: str
    reply: str
    seconds: float
    truncated: bool


def serve(model, tokenizer, requests: Sequence[str], system: str | None = None,
          settings: DecodingSettings | None = None) -> list[Served]:
    """A tiny serving loop: answer requests one at a time with the safe defaults, timing each."""
    answered = []
    for request in requests:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": request}]
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncatedWarning)
            reply = generate(model, tokenizer, [messages], settings)[0]
        truncated = any(issubclass(w.category, PromptTruncatedWarning) for w in caught)
        answered.append(Served(request, reply, time.perf_counter() - started, truncated))
    return answered
