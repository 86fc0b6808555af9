"""TrainConfig: validation with clear errors, and the arithmetic it teaches checked against transformers."""

import math

import pytest
import torch

from course_lib.core import tasks
from course_lib.training.config import (
    ConfigError,
    TrainConfig,
    accumulation_for,
    check_trainable_dtypes,
    decay_parameter_names,
    lr_at,
    parameter_groups,
    plan_batch,
    resolve_precision,
    schedule_curve,
    steps_per_epoch,
)
from course_lib.training.trainer import train


@pytest.mark.parametrize("changes, message", [
    ({"effective_batch_size": 32, "per_device_batch_size": 8, "grad_accum": 2}, r"8 × 2 × 1 = 16; set grad_accum=4"),
    ({"effective_batch_size": 30, "per_device_batch_size": 8}, r"not a multiple of .* = 8"),
    ({"warmup_steps": 10, "warmup_ratio": 0.1}, r"warmup_steps .* or warmup_ratio .* not both"),
    ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\)"),
    ({"learning_rate": 2.0}, r"learning_rate must be in \(0, 1\)"),
    ({"schedule": "cosine_with_restarts"}, r"schedule must be one of cosine, linear, constant"),
    ({"grad_accum": 0}, r"grad_accum must be a positive integer"),
    ({"max_grad_norm": -1.0}, r"max_grad_norm must be > 0 or None"),
    ({"eval_strategy": "steps"}, r"eval_strategy='steps' needs eval_steps"),
    ({"save_strategy": "steps", "save_steps": 10}, r"set output_dir"),
    ({"save_strategy": "steps", "save_steps": 10, "output_dir": "x", "save_total_limit": 0}, r"save_total_limit must be >= 1"),
    ({"early_stopping_patience": 2}, r"early stopping watches the validation loss: set eval_strategy"),
    ({"early_stopping_patience": 2, "eval_strategy": "steps", "eval_steps": 5}, r"save_strategy \('no'\) must equal eval_strategy"),
    ({"early_stopping_patience": 2, "eval_strategy": "steps", "eval_steps": 4, "save_strategy": "steps", "save_steps": 6,
      "output_dir": "x"}, r"save_steps \(6\) to be a multiple of eval_steps \(4\)"),
    ({"precision": "fp16"}, r"precision='fp16' needs a CUDA GPU"),
    ({"precision": "bf16"}, r"precision='bf16' needs a CUDA GPU"),
    ({"precision": "fp8"}, r"precision must be one of auto, bf16, fp16, fp32"),
    ({"optim": "adam"}, r"optim must be None or a transformers optimizer name"),
])
def test_bad_configs_fail_with_a_message_naming_the_field_and_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes).validate(device="cpu")


def test_good_configs_pass():
    TrainConfig().validate(device="cpu")
    TrainConfig(effective_batch_size=32, per_device_batch_size=8, grad_accum=4).validate(device="cpu")
    TrainConfig(early_stopping_patience=2, eval_strategy="steps", eval_steps=5, save_strategy="steps", save_steps=10,
                output_dir="x").validate(device="cpu")
    TrainConfig(early_stopping_patience=2, eval_strategy="epoch", restore_best=False).validate(device="cpu")


def test_warmup_longer_than_the_run_warns():
    with pytest.warns(UserWarning, match="never reaches its peak"):
        TrainConfig(max_steps=5, warmup_steps=5).validate(device="cpu")


def test_effective_batch_accumulation_and_steps_per_epoch():
    config = TrainConfig(per_device_batch_size=4, grad_accum=8, processes=2)
    assert config.effective_batch() == 64
    assert accumulation_for(64, 4, 2) == 8
    with pytest.raises(ConfigError, match="not a multiple"):
        accumulation_for(60, 8, 1)
    assert steps_per_epoch(1000, 8, 4, 1) == 32  # 125 batches -> 31 full accumulation groups and a short one
    assert steps_per_epoch(1000, 8, 1, 2) == 63  # each process sees ceil(1000 / 16) = 63 batches
    assert steps_per_epoch(64, 8, 8, 1) == 1
    assert TrainConfig(per_device_batch_size=8, grad_accum=4, epochs=3).total_steps(1000) == 96
    with pytest.raises(ConfigError, match="empty"):
        steps_per_epoch(0, 8)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [{"warmup_steps": 0}, {"warmup_steps": 7}, {"warmup_ratio": 0.15}])
def test_lr_at_matches_the_transformers_scheduler(schedule, warmup):
    config = TrainConfig(learning_rate=3e-4, schedule=schedule, **warmup)
    total = 53
    ours = [config.lr_at(step, total) for step in range(total)]
    theirs = schedule_curve(config, total)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-15)
    if config.warmup_for(total):
        assert ours[0] == 0.0  # warmup starts from zero
        assert max(ours) == pytest.approx(3e-4)


def test_constant_schedule_keeps_its_warmup_in_transformers():
    args = TrainConfig(schedule="constant", warmup_steps=5).to_training_arguments("unused", device="cpu")
    assert args.lr_scheduler_type == "constant_with_warmup"  # plain "constant" would ignore the warmup
    assert TrainConfig(schedule="constant", warmup_steps=0).to_training_arguments("u", device="cpu").lr_scheduler_type == "constant"


def test_lr_at_by_hand():
    assert lr_at(0, 1.0, 10, 110) == 0.0
    assert lr_at(5, 1.0, 10, 110) == 0.5
    assert lr_at(10, 1.0, 10, 110) == 1.0
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)  # half way through the cosine
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(60, 1.0, 10, 110, "linear") == pytest.approx(0.5)
    assert lr_at(60, 1.0, 10, 110, "constant") == 1.0


def test_to_training_arguments_maps_every_knob():
    config = TrainConfig(max_steps=100, per_device_batch_size=4, grad_accum=8, learning_rate=1e-4, warmup_ratio=0.05,
                         weight_decay=0.01, max_grad_norm=0.5, gradient_checkpointing=True, eval_strategy="steps",
                         eval_steps=10, save_strategy="steps", save_steps=20, save_total_limit=3,
                         early_stopping_patience=3, output_dir="out", seed=7)
    args = config.to_training_arguments(device="cpu")
    assert (args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (100, 4, 8)
    assert (args.learning_rate, args.warmup_steps, args.lr_scheduler_type) == (1e-4, 0.05, "cosine")
    assert args.get_warmup_steps(100) == config.warmup_for(100) == 5
    assert (args.weight_decay, args.max_grad_norm) == (0.01, 0.5)
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == ("steps", 10, "steps", 20)
    assert args.save_total_limit == 3 and args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False
    assert (args.seed, args.data_seed) == (7, 7)
    assert args.logging_nan_inf_filter is False  # otherwise NaN losses are replaced by the mean before logging
    assert not args.fp16 and not args.bf16 and args.use_cpu
    assert TrainConfig(max_grad_norm=None).to_training_arguments("o", device="cpu").max_grad_norm == 0.0


def test_precision():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    model = torch.nn.Linear(4, 4).half()
    with pytest.raises(ConfigError, match="float16 .* load the model in float32"):
        check_trainable_dtypes(model, "fp16")
    check_trainable_dtypes(torch.nn.Linear(4, 4), "fp32")
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        check_trainable_dtypes(frozen, "fp32")


def _library_decay_names(model):
    from transformers import Trainer, TrainingArguments

    trainer = Trainer(model=model, args=TrainingArguments("unused", use_cpu=True, report_to="none"))
    return set(trainer.get_decay_parameter_names(model)) & {n for n, _ in model.named_parameters()}


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3))


@pytest.mark.parametrize("build", ["llama", "gpt2", "bert"])
def test_decay_parameter_names_match_the_trainer(build, tiny_llama):
    model = {"llama": lambda: tiny_llama, "gpt2": _tiny_gpt2, "bert": _tiny_bert}[build]()
    ours = decay_parameter_names(model)
    assert ours == _library_decay_names(model)
    assert not any("bias" in n or "norm" in n.lower() or ".ln_" in n for n in ours)
    assert any(n.endswith("q_proj.weight") or "attn.c_attn.weight" in n or "query.weight" in n for n in ours)


def test_parameter_groups_put_decay_on_the_right_parameters(tiny_llama):
    groups = parameter_groups(tiny_llama, 0.1)
    names = {id(p): n for n, p in tiny_llama.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == decay_parameter_names(tiny_llama)
    assert all(tiny_llama.get_parameter(names[id(p)]).ndim == 1 for p in groups[1]["params"])


def test_the_trainer_runs_the_steps_and_learning_rates_the_config_predicts(tiny_llama, tokenizer):
    conversations = [tasks.to_messages(e) for e in tasks.make_examples(10)]
    config = TrainConfig(epochs=2, per_device_batch_size=3, grad_accum=2, learning_rate=1e-3, warmup_ratio=0.3,
                         schedule="cosine")
    total = config.total_steps(len(conversations))
    assert config.steps_per_epoch(10) == 2 and total == 4  # 4 batches of 3, 3, 3, 1 -> 2 optimizer steps per epoch
    result = train(tiny_llama, tokenizer, conversations, config, progress=False)
    assert result.global_step == total
    logged = [row["learning_rate"] for row in result.history]
    assert logged == pytest.approx([config.lr_at(step - 1, total) for step in range(1, total + 1)])
    assert all(math.isfinite(loss) for loss in result.losses)


def test_optim_reaches_the_training_arguments():
    assert TrainConfig(optim="sgd").to_training_arguments("out", device="cpu").optim == "sgd"
    assert TrainConfig().to_training_arguments("out", device="cpu").optim.value.startswith("adamw")


def test_plan_batch_takes_the_largest_micro_batch_that_fits_and_checkpoints_only_when_needed():
    from transformers import LlamaConfig

    from course_lib.qlora.memory import estimate

    smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)

    def planned(method, b, checkpointing):
        return estimate(smol, method, batch_size=b, seq_len=128, gradient_checkpointing=checkpointing,
                        device="cpu").total_bytes

    plan = plan_batch(planned("full", 4, False) + 1, smol, "full", 32, 128)
    assert (plan.per_device_batch_size, plan.grad_accum, plan.gradient_checkpointing) == (4, 8, False)
    assert plan.effective_batch_size == plan.effective_batch() == 32
    plan = plan_batch(planned("lora", 1, True), smol, "lora", 16, 128)
    assert (plan.per_device_batch_size, plan.grad_accum, plan.gradient_checkpointing) == (1, 16, True)
    with pytest.raises(ValueError):
        plan_batch(2**30, smol, "full", 32, 128)
