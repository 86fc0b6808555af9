"""Generation (course_lib.evaluation.generate): safe defaults, reproducible greedy decoding, the loop guard."""

import warnings

import pytest

from course_lib.evaluation import generate


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


def test_loop_guard_detects_a_repeating_tail():
    assert generate.repeats_tail([1, 2, 3] * 3, n=3, times=3)
    assert not generate.repeats_tail([1, 2, 3] * 2 + [4, 5, 6], n=3, times=2)
    assert not generate.repeats_tail([1, 2], n=3, times=2)
