"""Callbacks: the NaN guard stops with a clear message, early stopping stops on validation loss, history is kept."""

import math

import pytest
from transformers import TrainerControl, TrainerState

from course_lib.core import tasks
from course_lib.core.results import NonFiniteLossError
from course_lib.training.callbacks import EarlyStoppingOnValLoss, InjectNaN, LossHistory, StopOnNonFiniteLoss
from course_lib.training.config import TrainConfig
from course_lib.training.trainer import train


def _conversations(n, seed=0):
    return [tasks.to_messages(e) for e in tasks.make_examples(n, seed=seed)]


def test_guard_stops_on_nan_and_inf_only():
    for bad in (float("nan"), float("inf"), float("-inf")):
        guard, state, control = StopOnNonFiniteLoss(), TrainerState(), TrainerControl()
        state.global_step = 7
        guard.on_log(None, state, control, logs={"loss": bad, "learning_rate": 0.3})
        assert control.should_training_stop and guard.step == 7
        assert f"the loss became {bad} at step 7" in guard.message and "learning rate" in guard.message
    guard, control = StopOnNonFiniteLoss(), TrainerControl()
    guard.on_log(None, TrainerState(), control, logs={"loss": 2.5})
    guard.on_log(None, TrainerState(), control, logs={"eval_loss": float("nan")})  # eval logs are not its business
    assert not control.should_training_stop and guard.message is None


def test_a_nan_loss_stops_training_with_a_clear_error_and_saves_no_poisoned_checkpoint(tiny_llama, tokenizer, tmp_path):
    config = TrainConfig(max_steps=10, per_device_batch_size=2, learning_rate=1e-3, save_strategy="steps", save_steps=1,
                         save_total_limit=None, output_dir=str(tmp_path))
    with pytest.raises(NonFiniteLossError, match=r"the loss became nan at step 3 .*learning rate") as caught:
        train(tiny_llama, tokenizer, _conversations(8), config, callbacks=[InjectNaN(2)], progress=False)
    assert caught.value.step == 3
    assert [row["step"] for row in caught.value.history] == [1, 2, 3]
    assert math.isnan(caught.value.history[-1]["loss"])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_without_our_setting_the_trainer_hides_nan_losses(tiny_llama, tokenizer, monkeypatch):
    """Why TrainConfig sets logging_nan_inf_filter=False: transformers' default logs a NaN as the running mean."""
    original = TrainConfig.to_training_arguments

    def with_default_filter(self, *args, **kwargs):
        arguments = original(self, *args, **kwargs)
        arguments.logging_nan_inf_filter = True
        return arguments

    monkeypatch.setattr(TrainConfig, "to_training_arguments", with_default_filter)
    result = train(tiny_llama, tokenizer, _conversations(8), TrainConfig(max_steps=4, per_device_batch_size=2),
                   callbacks=[InjectNaN(2)], progress=False)
    assert all(math.isfinite(loss) for loss in result.losses)  # the NaN steps were hidden...
    assert any(math.isnan(p.detach().sum()) for p in result.model.parameters())  # ...while the weights are NaN


def test_early_stopping_counts_evaluations_without_improvement():
    stopper, state, control = EarlyStoppingOnValLoss(early_stopping_patience=2), TrainerState(), TrainerControl()

    class Args:
        metric_for_best_model, greater_is_better = "eval_loss", False

    for step, loss in [(5, 3.0), (10, 2.0), (15, 2.5), (20, 2.1)]:
        state.global_step = step
        stopper.on_evaluate(Args, state, control, metrics={"eval_loss": loss})
        if state.best_metric is None or loss < state.best_metric:  # what the Trainer does after on_evaluate
            state.best_metric = loss
        assert control.should_training_stop == (step == 20)
    assert stopper.stopped_at == 20
    assert stopper.state()["attributes"] == {"early_stopping_patience_counter": 2, "stopped_at": 20}


def test_early_stopping_ends_a_run_and_restores_the_best_checkpoint(tiny_llama, tokenizer, tmp_path):
    # a threshold no evaluation can beat: the second evaluation counts as "no improvement" and stops the run
    config = TrainConfig(max_steps=30, per_device_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=2,
                         save_strategy="steps", save_steps=2, early_stopping_patience=1,
                         early_stopping_threshold=1e9, output_dir=str(tmp_path))
    result = train(tiny_llama, tokenizer, _conversations(8), config, eval_data=_conversations(4, seed=9), progress=False)
    assert result.stopped_early_at == 4 and result.global_step == 4
    assert [row["step"] for row in result.eval_history] == [2, 4]
    best = min(result.eval_history, key=lambda row: row["eval_loss"])
    assert result.best_step == best["step"]
    assert [row["step"] for row in result.history] == [1, 2, 3, 4]


def test_loss_history_records_train_and_eval_rows_and_restarts_from_the_state():
    history, state = LossHistory(), TrainerState()
    state.log_history = [{"loss": 2.0, "learning_rate": 0.1, "step": 1}, {"eval_loss": 1.9, "step": 1}]
    history.on_train_begin(None, state, TrainerControl())
    state.global_step = 2
    history.on_log(None, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": 0.3})
    assert history.train == [{"step": 1, "loss": 2.0, "learning_rate": 0.1}, {"step": 2, "loss": 1.5, "grad_norm": 0.3}]
    assert history.eval == [{"step": 1, "eval_loss": 1.9}]
