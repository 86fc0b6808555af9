"""Logits only where a label is scored: the same loss, without the output layer's work on prompt and padding.

A causal LM's output layer maps every position to the whole vocabulary (49,152 columns for SmolLM2: a fifth of
the 135M model's forward pass), but only the positions that predict an answer token count in the loss; in the
course's chats that is about a third of them. Transformers' `logits_to_keep` runs the output layer on chosen
positions only. Here they are the positions that predict a scored label in any row of the batch.
"""

from __future__ import annotations

import inspect

import torch

from course_lib.data.encode import IGNORE_INDEX


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t whose next label (t + 1) is scored in at least one row: the logits a loss reads."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def keeps_logits(model) -> bool:
    """Whether `model` can run its output layer on chosen positions, with logits lined up with its input.

    Prompt tuning and p-tuning prepend virtual tokens to the input, so positions would shift; prefix tuning puts
    its tokens in the cache and keeps them lined up, but peft's forward for all three is its own.
    """
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def scored_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict scored labels, and those labels (-100 where a row scores none): [B, P, V], [B, P]."""
    targets = labels[:, 1:]  # position t predicts token t + 1
    if not keeps_logits(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1], targets
    positions = scored_positions(labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
    return logits, targets[:, positions]
