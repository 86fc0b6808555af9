"""Logits only at scored positions: the same losses as the stock Trainer and the full-logits sums, less output layer."""

import copy
import math

import pytest
import torch
from transformers import Trainer

from course_lib.core import tasks
from course_lib.data.tokenize import pad_batch, to_rows
from course_lib.evaluation import metrics
from course_lib.evaluation.teacher_forced import score_answers
from course_lib.training import trainer as trainer_module
from course_lib.training.config import TrainConfig
from course_lib.training.methods import apply_method
from course_lib.training.scored_logits import keeps_logits, scored_logits, scored_positions
from course_lib.training.trainer import evaluate_loss, train


def _chats(n, seed=0):
    return [tasks.to_messages(e) for e in tasks.make_examples(n, seed=seed)]


class _OutputRows:
    """Counts the positions the output layer runs on."""

    def __init__(self, model):
        self.positions = 0
        model.get_output_embeddings().register_forward_hook(self._count)

    def _count(self, module, args, output):
        self.positions += args[0].shape[0] * args[0].shape[1]


def test_scored_positions_are_those_that_predict_a_scored_label_in_any_row():
    labels = torch.tensor([[-100, -100, 5, 6, -100, -100],
                           [-100, -100, -100, -100, 7, -100]])
    assert scored_positions(labels).tolist() == [1, 2, 3]
    assert scored_positions(torch.full((2, 4), -100)).tolist() == []


@pytest.mark.parametrize("packing, grad_accum", [(False, 1), (False, 2), (True, 2)])
def test_training_and_validation_losses_are_the_stock_trainers(tiny_llama, tokenizer, monkeypatch, packing,
                                                                  grad_accum):
    config = TrainConfig(max_steps=4, per_device_batch_size=2, grad_accum=grad_accum, learning_rate=1e-2,
                         eval_strategy="steps", eval_steps=2, packing=packing, seed=3)
    runs = {}
    for name, trainer_class in [("stock", Trainer), ("scored", trainer_module.ScoredLogitsTrainer)]:
        monkeypatch.setattr(trainer_module, "ScoredLogitsTrainer", trainer_class)
        model = apply_method(copy.deepcopy(tiny_llama), "lora")
        rows = _OutputRows(model)
        result = train(model, tokenizer, _chats(16), config, eval_data=_chats(6, seed=1), progress=False)
        runs[name] = (result, rows.positions)
    (stock, stock_rows), (scored, scored_rows) = runs["stock"], runs["scored"]
    assert [h["loss"] for h in scored.history] == pytest.approx([h["loss"] for h in stock.history], rel=1e-4)
    assert [h["eval_loss"] for h in scored.eval_history] == pytest.approx(
        [h["eval_loss"] for h in stock.eval_history], rel=1e-4)
    # a chat's answer is about a third of its tokens: the output layer ran on well under half the positions
    assert scored_rows < 0.5 * stock_rows


def test_evaluate_loss_is_the_stock_trainers(tiny_llama, tokenizer, monkeypatch):
    model = apply_method(tiny_llama, "lora")
    scored = evaluate_loss(model, tokenizer, _chats(6), TrainConfig(per_device_batch_size=4))
    monkeypatch.setattr(trainer_module, "ScoredLogitsTrainer", Trainer)
    assert scored == pytest.approx(evaluate_loss(model, tokenizer, _chats(6), TrainConfig(per_device_batch_size=4)),
                                   rel=1e-5)


def test_prompt_tuning_keeps_every_logit_and_still_trains(tiny_llama, tokenizer):
    assert keeps_logits(tiny_llama) and keeps_logits(apply_method(copy.deepcopy(tiny_llama), "lora"))
    model = apply_method(tiny_llama, "prompt_tuning", virtual_tokens=4)
    assert not keeps_logits(model)  # its virtual tokens shift every position
    result = train(model, tokenizer, _chats(4), TrainConfig(max_steps=2, per_device_batch_size=2), progress=False)
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_perplexity_and_answer_scores_match_the_full_logits(tiny_llama, tokenizer):
    model = tiny_llama.eval()
    rows = to_rows(_chats(5), tokenizer, 256)
    counter = _OutputRows(model)
    ppl = metrics.perplexity(model, rows, batch_size=2, progress=False)
    scores = score_answers(model, rows, batch_size=2)
    library_positions = counter.positions
    total, count, exact = 0.0, 0, []
    for start in range(0, len(rows), 2):
        batch = {k: torch.as_tensor(v) for k, v in pad_batch(rows[start:start + 2], 0, "right").items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, n = metrics.logits_nll(logits, batch["labels"])
        total, count = total + nll, count + n
        labels = batch["labels"][:, 1:]
        hits = (logits[:, :-1].argmax(-1) == labels) | (labels == -100)
        exact.extend(float(h.all()) for h in hits)
    assert (ppl.n_tokens, scores.n_tokens) == (count, count)
    assert ppl.mean_nll == pytest.approx(total / count, rel=1e-5)
    assert scores.nll_sum == pytest.approx(total, rel=1e-5) and scores.exact == exact
    full_positions = counter.positions - library_positions  # the loop above: one pass with every logit
    assert library_positions < 2 * 0.5 * full_positions  # two passes, each on under half the positions


def test_scored_logits_line_up_with_their_labels(tiny_llama, tokenizer):
    model = tiny_llama.eval()
    batch = {k: torch.as_tensor(v) for k, v in pad_batch(to_rows(_chats(3), tokenizer, 256), 0, "right").items()}
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kept, targets = scored_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    positions = scored_positions(batch["labels"])
    torch.testing.assert_close(kept, full[:, positions], rtol=1e-5, atol=1e-5)
    assert torch.equal(targets, batch["labels"][:, positions + 1])
