"""Generation (course_lib.evaluation.generate): safe defaults, reproducible greedy decoding, the loop guard."""

import warnings

import pytest

from course_lib.evaluation import generate


def with_random_virtual_tokens(model, method: str, virtual_tokens: int, scale: float):
    """`model` with a prefix- or prompt-tuning adapter whose virtual tokens are random (seed 0) times `scale`, in eval
    mode."""
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    config = {"prefix_tuning": PrefixTuningConfig, "prompt_tuning": PromptTuningConfig}[method]
    model = get_peft_model(model, config(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens))
    with torch.no_grad():
        for param in model.prompt_encoder.parameters():
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * scale)
    return model.eval()


def greedy_by_hand(model, tokenizer, prompts, max_new_tokens: int) -> list[str]:
    """Greedy replies one prompt at a time, the whole sequence through forward() at every step (which adds a prefix)."""
    import torch

    stops, replies = generate.stop_token_ids(tokenizer), []
    for encoded in generate.encode_prompts(tokenizer, prompts, 100_000):
        ids = torch.tensor([encoded])
        for _ in range(max_new_tokens):
            with torch.no_grad():
                next_id = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
            if next_id.item() in stops:
                break
        replies.append(tokenizer.decode(ids[0, len(encoded):], skip_special_tokens=True).strip())
    return replies


def test_generate_safe_defaults(tiny_llama, tokenizer):
    tiny_llama.eval()
    stops = generate.stop_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops and tokenizer.eos_token_id in stops
    prompts = [[{"role": "user", "content": "Hi"}], "A plain prompt"]
    settings = generate.DecodingSettings(max_new_tokens=5)
    first = generate.generate(tiny_llama, tokenizer, prompts, settings)
    assert first == generate.generate(tiny_llama, tokenizer, prompts, settings)  # greedy: reproducible
    assert all(len(tokenizer(r, add_special_tokens=False)["input_ids"]) <= 8 for r in first)
    with pytest.warns(generate.PromptTruncatedWarning, match="kept only its last 16"):
        generate.generate(tiny_llama, tokenizer, ["word " * 200], settings.replace(max_prompt_tokens=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", generate.PromptTruncatedWarning)
        generate.generate(tiny_llama, tokenizer, ["short"], settings)
    with pytest.raises(ValueError):
        generate.DecodingSettings(max_new_tokens=0)
    with pytest.raises(TypeError, match="prompt 0"):
        generate.generate(tiny_llama, tokenizer, [42], settings)


def test_batches_are_sized_by_tokens_shortest_prompts_first():
    lengths = [300, 40, 100, 41, 2000, 100]
    planned = generate.plan_batches(lengths, max_new_tokens=48)
    assert sorted(i for batch in planned for i in batch) == list(range(6))  # every prompt once
    flat = [lengths[i] for batch in planned for i in batch]
    assert flat == sorted(lengths)
    for batch in planned:
        widest = max(lengths[i] for i in batch) + 48
        assert len(batch) == 1 or len(batch) * widest <= generate.BATCH_TOKENS
    assert planned[-1] == [4]  # a prompt over the budget gets a batch of its own
    assert len(generate.plan_batches([10] * 200, 22)) == 200 // generate.MAX_BATCH_ROWS + 1  # 32-token rows: row cap
    assert len(generate.plan_batches([200] * 200, 56)) == 7  # 256-token rows: 32 fit 8192
    assert generate.plan_batches(lengths, 48, batch_size=4) == [[1, 3, 2, 5], [0, 4]]
    with pytest.raises(ValueError, match="batch_size"):
        generate.plan_batches(lengths, 48, batch_size=0)


def test_one_batch_answers_as_one_prompt_at_a_time(tiny_llama, tokenizer):
    tiny_llama.eval()
    prompts = [f"Prompt number {i} " + "word " * (i * 7 % 23) for i in range(12)]
    settings = generate.DecodingSettings(max_new_tokens=6)
    together = generate.generate(tiny_llama, tokenizer, prompts, settings)
    assert len(generate.plan_batches([len(p) for p in generate.encode_prompts(tokenizer, prompts, 1024)], 6)) == 1
    assert together == generate.generate(tiny_llama, tokenizer, prompts, settings, batch_size=1)


def test_loop_guard_detects_a_repeating_tail():
    assert generate.repeats_tail([1, 2, 3] * 3, n=3, times=3)
    assert not generate.repeats_tail([1, 2, 3] * 2 + [4, 5, 6], n=3, times=2)
    assert not generate.repeats_tail([1, 2], n=3, times=2)


@pytest.mark.parametrize("method, kind", [("prefix_tuning", "PREFIX_TUNING"), ("prompt_tuning", "PROMPT_TUNING")])
def test_a_model_with_virtual_tokens_answers_with_them(tiny_llama, tokenizer, method, kind):
    # far from zero: the answers differ without them
    model = with_random_virtual_tokens(tiny_llama, method, virtual_tokens=4, scale=3)
    assert generate.virtual_tokens_in_cache(model) == kind and generate.virtual_tokens_in_cache(tiny_llama) is None
    prompts = ["A plain prompt", "Another, longer plain prompt"]
    settings = generate.DecodingSettings(max_new_tokens=6)
    expected = greedy_by_hand(model, tokenizer, prompts, 6)
    assert generate.generate(model, tokenizer, prompts, settings) == expected
    with model.disable_adapter():
        assert generate.virtual_tokens_in_cache(model) is None
        assert generate.generate(model, tokenizer, prompts, settings) != expected  # the virtual tokens change them


@pytest.mark.parametrize("method, scale", [("prefix_tuning", 0.5), ("prompt_tuning", 0.02)])
def test_the_packaged_model_with_virtual_tokens_answers_as_greedy_decoding_by_hand(method, scale):
    """The real shape (30 layers, 9 query and 3 key-value heads, 16 virtual tokens), where a wrong position or a
    dropped or repeated virtual token shows at once: the cached path must give what the forward pass with the virtual
    tokens gives token by token. (peft's own generate() failed both on transformers 5.25.)"""
    import torch

    from course_lib.core import tasks
    from course_lib.core.models import load_causal_lm

    base, tokenizer = load_causal_lm(dtype=torch.float32)
    model = with_random_virtual_tokens(base, method, virtual_tokens=16, scale=scale)
    prompts = [tasks.prompt_messages(example) for example in tasks.make_examples(3, seed=5)]
    expected = greedy_by_hand(model, tokenizer, prompts, 12)
    assert generate.generate(model, tokenizer, prompts, generate.DecodingSettings(max_new_tokens=12)) == expected
