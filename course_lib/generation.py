"""Batched greedy generation for chat prompts, with a progress bar."""

from __future__ import annotations

from typing import Sequence

from .data import pad_batch


def chat_generate(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Answer each conversation greedily; returns the decoded assistant replies in order."""
    import torch
    from tqdm.auto import tqdm

    prompts = [
        tokenizer.apply_chat_template(list(c), tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        for c in conversations
    ]
    # Sort by length so each batch pads little; answers are put back in the caller's order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2, leave=False):
        idx = order[start : start + batch_size]
        rows = [{"input_ids": prompts[i], "attention_mask": [1] * len(prompts[i])} for i in idx]
        # Left padding: every prompt then ends where generation starts.
        batch = {k: v.to(device) for k, v in pad_batch(rows, tokenizer.pad_token_id, "left").items()}
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        for row, i in zip(out[:, batch["input_ids"].shape[1] :], idx):
            replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    model.train(was_training)
    return replies
