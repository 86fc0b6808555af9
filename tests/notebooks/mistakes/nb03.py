"""Typical wrong answers of solutions/03_qlora.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "03_qlora"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('03-global-absmax', STEM, 'absmax', "typical", 'one absmax for the whole tensor (repeated per block) instead of one per block',
            old='absmax = blocks.abs().amax(dim=1)',
            new='absmax = blocks.abs().amax().repeat(blocks.shape[0])'),
    Mistake('03-no-second-level', STEM, 'double_quant_saved_bytes', "typical", 'counting the 8-bit scales but not the float32 scale of every 256 blocks',
            old='after = 1 * blocks + 4 * blocks / block_size2',
            new='after = 1 * blocks'),
]
