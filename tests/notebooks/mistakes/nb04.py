"""Typical wrong answers of solutions/04_trainer_configuration.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "04_trainer_configuration"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('04-no-warmup', STEM, 'lr_at', "typical", 'the classic slip: cosine decay from step 0, the warmup forgotten',
            old='    if step < warmup_steps:\n        return peak_lr * step / warmup_steps\n    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)\n',
            new='    progress = step / total_steps\n'),
]
