"""Typical wrong answers of solutions/07_scaling_up.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "07_scaling_up"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('07-efficiency-is-speedup', STEM, 'scaling_efficiency', "typical", 'the speed-up instead of the efficiency: forgetting to divide by the number of processes',
            old='tokens_per_s_n / (n * tokens_per_s_1)',
            new='tokens_per_s_n / tokens_per_s_1'),
    Mistake('07-batch-without-processes', STEM, 'global_batch_size', "typical", 'per-process batch times accumulation: forgetting that every process brings its own batch',
            old='per_device * accumulation * processes',
            new='per_device * accumulation'),
    Mistake('07-ddp-sharded', STEM, 'model_state_gb', "typical", 'DDP sharded like ZeRO-3: dividing everything by the number of GPUs',
            old='"ddp": 16,',
            new='"ddp": 16 / gpus,'),
]
