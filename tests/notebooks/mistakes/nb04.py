"""Typical wrong answers of solutions/04_trainer_configuration.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "04_trainer_configuration"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "effective_batch_and_steps": "count optimizer steps as the Trainer does: a short last batch and accumulation group still step",
    "decay_parameter_names": "weight decay on weight matrices only: find norm layers by their module, not their name",
    "stop_on_nan": "write a TrainerCallback that stops a run at the first non-finite loss",
    "make_trainer": "write a run with TrainingArguments and Trainer: accumulation, warmup fraction, eval/save/best, a collator keeping answer-only labels",
    "plan_run": "fit a run into a memory budget: largest micro-batch that fits, accumulation for the rest, checkpointing last",
}

MISTAKES = [
    Mistake('04-steps-by-trainconfig', STEM, 'effective_batch_and_steps', "library",
            "lets course_lib's TrainConfig count the batch and the steps",
            new='    config = TrainConfig(per_device_batch_size=per_device_batch_size, grad_accum=grad_accum, processes=processes)\n'
                '    return config.effective_batch(), config.steps_per_epoch(n_examples)\n'),
    Mistake('04-steps-rounded-down', STEM, 'effective_batch_and_steps', "typical",
            'steps per epoch rounded down: the short last group of micro-batches is forgotten',
            old='    micro_batches = math.ceil(n_examples / (per_device_batch_size * processes))\n'
                '    return effective, math.ceil(micro_batches / grad_accum)\n',
            new='    return effective, n_examples // effective\n'),
    Mistake('04-decay-from-course', STEM, 'decay_parameter_names', "library",
            "hands the job to course_lib.training.config.decay_parameter_names",
            new='    return train_config.decay_parameter_names(model)\n'),
    Mistake('04-decay-by-name', STEM, 'decay_parameter_names', "typical",
            'looks for "norm" in the parameter name, so GPT-2\'s ln_1/ln_2/ln_f weights get decay',
            old='return {name for name, p in model.named_parameters() if id(p) not in in_norms and not name.endswith("bias")}',
            new='return {name for name, p in model.named_parameters() if "norm" not in name and not name.endswith("bias")}'),
    Mistake('04-nan-by-course-guard', STEM, 'stop_on_nan', "library",
            "delegates to the course's StopOnNonFiniteLoss callback",
            new='        guard = getattr(self, "_guard", None) or StopOnNonFiniteLoss()\n'
                '        self._guard = guard\n'
                '        guard.on_log(args, state, control, logs=logs, **kwargs)\n'
                '        if self.stopped_at is None:\n'
                '            self.stopped_at = guard.step\n'),
    Mistake('04-nan-only', STEM, 'stop_on_nan', "typical",
            'checks math.isnan only: an infinite loss runs on',
            old='if loss is not None and not math.isfinite(loss):',
            new='if loss is not None and math.isnan(loss):'),
    Mistake('04-trainer-from-trainconfig', STEM, 'make_trainer', "library",
            "builds the TrainingArguments with course_lib's TrainConfig.to_training_arguments",
            new='    config = TrainConfig(max_steps=max_steps, per_device_batch_size=4, grad_accum=2, learning_rate=learning_rate,\n'
                '                         schedule="cosine", warmup_ratio=0.1, weight_decay=0.01, eval_strategy="steps", eval_steps=2,\n'
                '                         save_strategy="steps", save_steps=2, save_total_limit=2, seed=seed, output_dir=output_dir,\n'
                '                         early_stopping_patience=2)\n'
                '    return Trainer(model=model, args=config.to_training_arguments(), train_dataset=train_rows,\n'
                '                   eval_dataset=eval_rows, data_collator=ChatCollator(tokenizer))\n'),
    Mistake('04-warmup-floored', STEM, 'make_trainer', "typical",
            'warmup as int(0.1 * max_steps): a short run gets no warmup at all (the fraction rounds up)',
            old='warmup_steps=0.1,  # a float below 1: a fraction of the run',
            new='warmup_steps=int(0.1 * max_steps),'),
    Mistake('04-plan-by-course', STEM, 'plan_run', "library",
            "calls course_lib.training.config.plan_batch",
            new='    return train_config.plan_batch(budget_bytes, model_config, method, target_batch, seq_len)\n'),
    Mistake('04-plan-smallest-batch', STEM, 'plan_run', "typical",
            'keeps the first (smallest) micro-batch that fits instead of the largest: slower for nothing',
            old='            if planned.total_bytes <= budget_bytes:\n                best = per_device\n',
            new='            if planned.total_bytes <= budget_bytes and best is None:\n                best = per_device\n'),
]
