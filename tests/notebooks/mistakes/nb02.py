"""Typical wrong answers of solutions/02_lora_math.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "02_lora_math"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('02-alpha-not-over-r', STEM, 'lora_forward', "typical", 'scaling by alpha instead of alpha / r',
            old='scaling = alpha / r',
            new='scaling = alpha'),
    Mistake('02-both-zero', STEM, 'init_lora_weights', "typical", 'A = 0 as well as B = 0 also starts from the base model, but then nothing ever trains',
            old='nn.init.kaiming_uniform_(A, a=math.sqrt(5))',
            new='A.zero_()'),
]
