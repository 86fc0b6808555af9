"""Teacher-forced answer scores (course_lib.evaluation.teacher_forced) against generation and metrics.perplexity."""

import pytest
import torch

from course_lib.core.tasks import make_examples, prompt_messages, to_messages
from course_lib.data.tokenize import IGNORE_INDEX, tokenize_chat
from course_lib.evaluation import metrics
from course_lib.evaluation.teacher_forced import score_answers


def _greedy_rows(model, tokenizer, n=4, new_tokens=6):
    """Rows whose answer is the model's own greedy continuation of a task prompt (prompt masked)."""
    rows = []
    for example in make_examples(n, seed=2):
        prompt = tokenizer.apply_chat_template(prompt_messages(example), add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                 pad_token_id=tokenizer.pad_token_id)
        answer = out[0, len(prompt):].tolist()
        rows.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer})
    return rows


def test_exact_is_one_exactly_where_greedy_decoding_writes_the_answer(tiny_llama, tokenizer):
    tiny_llama.eval()
    rows = _greedy_rows(tiny_llama, tokenizer)
    scores = score_answers(tiny_llama, rows, batch_size=3)  # rows of different lengths share a padded batch
    assert scores.exact == [1.0] * len(rows) and scores.exact_match == 1.0
    for position in (-1, -3):  # one answer token changed: greedy decoding leaves the answer there
        changed = [dict(r) for r in rows]
        labels = list(changed[1]["labels"])
        labels[position] = (labels[position] + 1) % len(tokenizer)
        changed[1] = {**changed[1], "labels": labels, "input_ids": changed[1]["input_ids"][:position] + [labels[position]]
                      + changed[1]["input_ids"][len(labels) + position + 1:]}
        assert score_answers(tiny_llama, changed).exact == [1.0, 0.0, 1.0, 1.0]


def test_the_loss_is_metrics_perplexity(tiny_llama, tokenizer):
    rows = [tokenize_chat(to_messages(e), tokenizer) for e in make_examples(5, seed=3)]
    scores = score_answers(tiny_llama, rows, batch_size=2)
    reference = metrics.perplexity(tiny_llama, rows, batch_size=5, progress=False)
    assert scores.n_tokens == reference.n_tokens
    assert scores.nll_sum == pytest.approx(reference.nll_sum, rel=1e-4)
    assert scores.perplexity == pytest.approx(reference.perplexity, rel=1e-4)
    assert scores.exact == [0.0] * 5  # a random model writes no JSON
    assert "greedy exact match 0% (0/5)" in str(scores)
    tiny_llama.train()
    score_answers(tiny_llama, rows[:1])
    assert tiny_llama.training  # scored in eval mode, handed back in the mode it came in


def test_bad_rows_are_named(tiny_llama):
    with pytest.raises(ValueError, match="at least one row"):
        score_answers(tiny_llama, [])
    with pytest.raises(ValueError, match="row 1 needs input_ids and labels"):
        score_answers(tiny_llama, [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1, 2]}])
    with pytest.raises(ValueError, match="row 0 has no scored token"):
        score_answers(tiny_llama, [{"input_ids": [1, 2], "labels": [1, -100]}])
