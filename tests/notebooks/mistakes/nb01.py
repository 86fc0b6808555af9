"""Typical wrong answers of solutions/01_data_formatting.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "01_data_formatting"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('01-mask-nothing', STEM, 'build_labels', "typical", 'masking nothing: every token learned, the model trains on the prompt too',
            old='labels = [IGNORE_INDEX] * len(ids)',
            new='labels = list(ids)'),
    Mistake('01-no-eos', STEM, 'format_instruction', "typical", 'no EOS after the output: the model never learns to stop',
            old='return prompt + row["output"] + eos_token',
            new='return prompt + row["output"]'),
    Mistake('01-positions-run-on', STEM, 'pack_into_blocks', "typical", 'positions run on across examples instead of restarting',
            old='block["position_ids"] += list(range(len(seq)))',
            new='block["position_ids"] += list(range(len(block["position_ids"]), len(block["position_ids"]) + len(seq)))'),
]
