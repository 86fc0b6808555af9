"""Prompting baselines (course_lib.evaluation.prompting): shots from the pool only, never the evaluated example,
prompts inside the token budget, and scoring through the exact-match report."""

import pytest

from course_lib.core import tasks
from course_lib.evaluation import prompting


@pytest.fixture(scope="module")
def splits():
    return tasks.make_splits(n_train=30, n_val=0, n_test=6, seed=3)


def test_shots_come_from_the_pool_seeded_and_never_from_the_evaluated_examples(splits):
    pool, test = splits["train"], splits["test"]
    shots = prompting.pick_shots(pool, 4, seed=1, exclude=test)
    assert len(shots) == 4 and all(s in pool for s in shots)
    assert shots == prompting.pick_shots(pool, 4, seed=1, exclude=test)  # seeded
    assert shots != prompting.pick_shots(pool, 4, seed=2, exclude=test)
    # a pool that holds the evaluated examples (a careless caller) still never offers them as shots
    mixed = pool[:3] + test
    for seed in range(20):
        assert not {s.text for s in prompting.pick_shots(mixed, 3, seed=seed, exclude=test)} & {e.text for e in test}
    with pytest.raises(ValueError, match="pool has only 3"):
        prompting.pick_shots(mixed, 4, exclude=test)
    with pytest.raises(ValueError, match="k"):
        prompting.pick_shots(pool, -1)
    assert prompting.pick_shots(pool, 0) == []


def test_few_shot_messages_are_chat_turns_and_zero_shot_is_module_00s_prompt(splits):
    example, shots = splits["test"][0], splits["train"][:2]
    assert prompting.few_shot_messages(example, []) == tasks.prompt_messages(example)
    messages = prompting.few_shot_messages(example, shots)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == tasks.INSTRUCTION and messages[-1]["content"] == example.text
    assert messages[2]["content"] == shots[0].answer_json() and messages[4]["content"] == shots[1].answer_json()
    with pytest.raises(ValueError, match="shot 1 is the evaluated example"):
        prompting.few_shot_messages(example, [shots[0], example])


def test_prompts_fit_the_budget_by_dropping_shots(splits, tokenizer):
    test, pool = splits["test"], splits["train"]
    roomy = prompting.build_prompts(test, pool, 3, tokenizer, max_prompt_tokens=2048)
    assert roomy.shots_used == [3] * len(test)
    evaluated_answers = {e.answer_json() for e in test}
    for prompt, example in zip(roomy.prompts, test):
        assert prompt[-1]["content"] == example.text
        assert not {m["content"] for m in prompt if m["role"] == "assistant"} & evaluated_answers
    assert roomy.tokens == [prompting.prompt_tokens(tokenizer, p) for p in roomy.prompts]
    # a budget between the 1-shot and the 3-shot sizes keeps fewer shots, and every prompt fits
    zero = prompting.build_prompts(test, pool, 0, tokenizer)
    budget = (min(zero.tokens) + min(roomy.tokens)) // 2
    tight = prompting.build_prompts(test, pool, 3, tokenizer, max_prompt_tokens=budget)
    assert all(t <= budget for t in tight.tokens)
    assert all(u < 3 for u in tight.shots_used)
    assert [len(p) for p in tight.prompts] == [2 + 2 * u for u in tight.shots_used]
    with pytest.raises(ValueError, match="zero-shot prompt .* alone takes"):
        prompting.fit_shots(test[0], pool[:2], tokenizer, max_prompt_tokens=10)


def test_baselines_generate_and_count_parse_failures(splits, tiny_llama, tokenizer):
    test, pool = splits["test"][:3], splits["train"]
    results = prompting.prompting_baselines(tiny_llama, tokenizer, test, pool, shots=(0, 2), max_new_tokens=4,
                                            progress=False)
    assert sorted(results) == [0, 2]
    for k, result in results.items():
        assert result.report.n == 3 and len(result.replies) == 3 and len(result.scores.exact) == 3
        # a random tiny model writes no JSON: every reply counts, as a parse failure, none is dropped
        assert result.report.parse_failures == result.scores.parse_failures == 3
        assert result.shots_used == [k] * 3 and max(result.prompt_tokens) <= prompting.MAX_PROMPT_TOKENS
    assert results[2].prompt_tokens[0] > results[0].prompt_tokens[0]
    assert results[2].prompts[0][-1]["content"] == test[0].text and results[0].prompts[0] == tasks.prompt_messages(test[0])
    shown = prompting.show_prompt(results[2].prompts[0], width=20).splitlines()
    assert len(shown) == 6 and shown[0].startswith("   system: ") and shown[0].endswith("…")
    assert "2-shot" in str(results[2]) and "zero-shot" in str(results[0])
    # the model's context (512 positions for this tiny model) bounds prompt and reply together: shots are dropped
    crowded = prompting.prompting_baselines(tiny_llama, tokenizer, test[:1], pool, shots=(20,), max_new_tokens=4,
                                            progress=False)[20]
    assert crowded.prompt_tokens[0] <= 512 - 4 and 0 < crowded.shots_used[0] < 20
    with pytest.raises(ValueError, match="no examples"):
        prompting.prompting_baselines(tiny_llama, tokenizer, [], pool)
