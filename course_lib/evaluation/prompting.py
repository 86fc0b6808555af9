"""Prompting baselines: the same model asked zero-shot and with k solved examples (few-shot), before any fine-tune.

A fine-tune is worth its cost only if it beats the cheap alternative, so every before/after table gets these rows.
A k-shot prompt is a chat: the instruction as system turn, then k solved examples as user/assistant turns, then the
sentence to answer. Shots come from the training pool, never from the examples being evaluated, and a prompt that
would not fit the token budget loses shots (the last ones first) instead of being cut mid-turn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from course_lib.core.tasks import Example, prompt_messages
from course_lib.evaluation.generate import DecodingSettings, generate
from course_lib.evaluation.metrics import ExactMatchReport, JsonScores, exact_match_report, json_scores

DEFAULT_SHOTS = (0, 3)
MAX_PROMPT_TOKENS = 1024  # generate's default budget; SmolLM2 reads 8192, but every prompt token costs time on a CPU


def pick_shots(pool: Sequence[Example], k: int, seed: int = 0, exclude: Sequence[Example] = ()) -> list[Example]:
    """`k` examples drawn (seeded) from `pool`, none with the text of an example in `exclude`."""
    if k < 0:
        raise ValueError(f"k (the number of shots) must be >= 0, got {k}")
    banned = {e.text for e in exclude}
    eligible = [e for e in pool if e.text not in banned]
    if len(eligible) < k:
        raise ValueError(f"k={k} shots asked for, but the pool has only {len(eligible)} examples "
                         f"outside the evaluated ones")
    return random.Random(seed).sample(eligible, k)


def few_shot_messages(example: Example, shots: Sequence[Example]) -> list[dict]:
    """The chat prompt for `example`: instruction, each shot as a user/assistant pair, then the example's text."""
    system, user = prompt_messages(example)  # with no shots this is exactly the zero-shot prompt of module 00
    turns = [system]
    for i, shot in enumerate(shots):
        if shot.text == example.text:
            raise ValueError(f"shot {i} is the evaluated example itself ({example.text!r:.60}): that leaks its answer")
        turns += [{"role": "user", "content": shot.text}, {"role": "assistant", "content": shot.answer_json()}]
    return turns + [user]


def show_prompt(messages: Sequence[dict], width: int = 100) -> str:
    """A chat prompt as readable lines, one turn each: role, then content (cut at `width`)."""
    return "\n".join(f"{m['role']:>9}: {m['content'][:width]}{'…' if len(m['content']) > width else ''}" for m in messages)


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    """How many tokens a chat prompt takes, generation prompt included (what `generate` feeds the model)."""
    return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"])


def fit_shots(example: Example, shots: Sequence[Example], tokenizer, max_prompt_tokens: int = MAX_PROMPT_TOKENS
              ) -> tuple[list[dict], int]:
    """(messages, tokens) of the prompt with as many of `shots` as fit in `max_prompt_tokens`, dropping the last first."""
    kept = list(shots)
    while True:
        messages = few_shot_messages(example, kept)
        tokens = prompt_tokens(tokenizer, messages)
        if tokens <= max_prompt_tokens:
            return messages, tokens
        if not kept:
            raise ValueError(f"the zero-shot prompt of {example.text!r:.60} alone takes {tokens} tokens, "
                             f"over max_prompt_tokens={max_prompt_tokens}")
        kept.pop()


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one k-shot baseline: messages, shots kept and tokens per evaluated example."""

    k: int
    prompts: list[list[dict]]
    shots_used: list[int]
    tokens: list[int]


def build_prompts(examples: Sequence[Example], pool: Sequence[Example], k: int, tokenizer,
                  max_prompt_tokens: int = MAX_PROMPT_TOKENS, seed: int = 0) -> PromptSet:
    """k-shot prompts for `examples`: one seeded draw of shots from `pool` (minus the evaluated examples), fitted."""
    shots = pick_shots(pool, k, seed=seed, exclude=examples)
    prompts, used, tokens = [], [], []
    for example in examples:
        messages, n = fit_shots(example, shots, tokenizer, max_prompt_tokens)
        prompts.append(messages)
        used.append((len(messages) - 2) // 2)  # system + question, and two turns per shot
        tokens.append(n)
    return PromptSet(k, prompts, used, tokens)


@dataclass(frozen=True)
class BaselineResult:
    """One prompting baseline scored on the evaluated examples."""

    k: int
    replies: list[str]
    report: ExactMatchReport
    scores: JsonScores
    shots_used: list[int]
    prompt_tokens: list[int]
    prompts: list[list[dict]]

    @property
    def name(self) -> str:
        return "zero-shot" if self.k == 0 else f"{self.k}-shot"

    def __str__(self) -> str:
        return (f"{self.name:9} ({max(self.prompt_tokens)} prompt tokens at most, "
                f"{min(self.shots_used)}-{max(self.shots_used)} shots kept): {self.report}")


def prompting_baselines(model, tokenizer, examples: Sequence[Example], pool: Sequence[Example],
                        shots: Sequence[int] = DEFAULT_SHOTS, max_new_tokens: int = 48,
                        max_prompt_tokens: int = MAX_PROMPT_TOKENS, seed: int = 0, batch_size: int | None = None,
                        progress: bool = True) -> dict[int, BaselineResult]:
    """Zero- and few-shot replies of `model` on `examples` (shots from `pool`), scored by exact match; keyed by k.

    Prompts keep to `max_prompt_tokens`, and to the model's context less the reply's `max_new_tokens`.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    context = getattr(model.config, "max_position_embeddings", None)
    if context:  # prompt and reply must fit the positions the model was trained on
        max_prompt_tokens = min(max_prompt_tokens, context - max_new_tokens)
    settings = DecodingSettings(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens)
    references = [e.answer for e in examples]
    results = {}
    for k in shots:
        built = build_prompts(examples, pool, k, tokenizer, max_prompt_tokens, seed)
        replies = generate(model, tokenizer, built.prompts, settings, batch_size=batch_size, progress=progress)
        results[k] = BaselineResult(k, replies, exact_match_report(replies, references),
                                    json_scores(replies, references), built.shots_used, built.tokens, built.prompts)
    return results
