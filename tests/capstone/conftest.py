"""Fixtures of the capstone tests: a tiny Llama saved as a base model folder, and a LoRA adapter trained on nothing.

Both are built once per session: the adapter checks and the evaluation tests copy or read them, never change them.
"""

from __future__ import annotations

import pytest

from course_lib.core.models import ALL_LINEAR

TINY_RANK = 4


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tokenizer):
    """A folder holding a 2-layer Llama (random weights, the default tokenizer's vocabulary) and that tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("bases") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_base):
    """A LoRA adapter of the tiny base on every linear layer, rank 4, saved as peft saves it (B is not zero, so that
    merging it changes the weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM.from_pretrained(tiny_base)  # from the folder: peft records it as the base
    config = LoraConfig(r=TINY_RANK, lora_alpha=8, target_modules=list(ALL_LINEAR), task_type="CAUSAL_LM",
                        init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapters") / "good"
    get_peft_model(model, config).save_pretrained(folder)
    return folder
