"""Typical wrong answers of solutions/06_deployment.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "06_deployment"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('06-mean-logit-diff', STEM, 'max_abs_logit_diff', "typical", 'the mean instead of the max logit difference',
            old='diff[attention_mask.bool()].max()',
            new='diff[attention_mask.bool()].mean()'),
    Mistake('06-one-matrix', STEM, 'adapter_num_params', "typical", 'adapter size counting one matrix only',
            old='total += r * (n_in + n_out)',
            new='total += r * n_in'),
    Mistake('06-no-bias', STEM, 'adapter_num_params', "typical", 'adapter size without the trained biases',
            old='if has_bias and (bias == "all"',
            new='if False and (bias == "all"'),
    Mistake('06-sampling', STEM, 'json_endpoint_settings', "typical", 'a sampling JSON endpoint',
            old='temperature=0.0',
            new='temperature=0.7'),
]
