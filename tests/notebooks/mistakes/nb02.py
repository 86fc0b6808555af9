"""Typical wrong answers of solutions/02_lora_math.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "02_lora_math"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "choose_rank": "read an adapter's rank off an update's singular values (Eckart-Young error) and cap it by a "
                   "parameter budget",
    "lora_forward": "LoRA's forward pass through the r-dimensional bottleneck, scaled by alpha / r",
    "init_lora_weights": "why B starts at zero and A random: the adapted model starts as the base and still trains",
    "inject_my_lora": "put adapters into a real model by module name (re.fullmatch), freezing everything else",
    "lora_config_for_budget": "size a real peft LoraConfig (rank, targets) to a parameter budget from the model's "
                              "real shapes, and confirm it with get_peft_model and a short measured run",
    "peft_lora_parts": "read peft's adapter (A, B, scaling, rsLoRA included) out of a real LoraLayer",
}

MISTAKES = [
    Mistake('02-rank-from-library', STEM, 'choose_rank', "library",
            "hands the choice to course_lib's own lowrank.choose_rank",
            new="return lowrank.choose_rank(delta, max_error, budget)"),
    Mistake('02-rank-off-by-one', STEM, 'choose_rank', "typical",
            "counts the error of rank r from s_{r+2} on (drops one singular value too many), so picks one rank too few",
            old="tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])",
            new="tail = torch.cat([energy.flip(0).cumsum(0).flip(0)[1:], energy.new_zeros(2)])"),
    Mistake('02-rank-not-squared', STEM, 'choose_rank', "typical",
            "measures the error with the singular values themselves instead of their squares (the energy)",
            old="energy = s**2",
            new="energy = s"),
    Mistake('02-forward-from-library', STEM, 'lora_forward', "library",
            "calls course_lib's layer.lora_forward",
            new="return layer.lora_forward(x, weight, bias, A, B, alpha, r)"),
    Mistake('02-alpha-not-over-r', STEM, 'lora_forward', "typical", 'scaling by alpha instead of alpha / r',
            old='scaling = alpha / r',
            new='scaling = alpha'),
    Mistake('02-init-from-library', STEM, 'init_lora_weights', "library",
            "calls course_lib's layer.init_lora_weights",
            new="return layer.init_lora_weights(in_features, out_features, r)"),
    Mistake('02-both-zero', STEM, 'init_lora_weights', "typical", 'A = 0 as well as B = 0 also starts from the base model, but then nothing ever trains',
            old='nn.init.kaiming_uniform_(A, a=math.sqrt(5))',
            new='A.zero_()'),
    Mistake('02-inject-from-library', STEM, 'inject_my_lora', "library",
            "hands the walk over the model to course_lib's layer.inject_by_pattern",
            new="return layer.inject_by_pattern(model, pattern, lambda base: MyLoRALinear(base, r, alpha))"),
    Mistake('02-inject-search', STEM, 'inject_my_lora', "typical",
            "matches names with re.search, so 'q_proj' silently matches every query projection instead of none",
            old="isinstance(module, nn.Linear) and re.fullmatch(pattern, name)",
            new="isinstance(module, nn.Linear) and re.search(pattern, name)"),
    Mistake('02-budget-from-library', STEM, 'lora_config_for_budget', "library",
            "lets course_lib's layer.lora_config_for_budget size the config",
            new="return layer.lora_config_for_budget(model, targets, budget)"),
    Mistake('02-budget-square-layers', STEM, 'lora_config_for_budget', "typical",
            "assumes every targeted layer is square (in = out), which grouped-query attention's k/v projections are not",
            old="per_rank += module.in_features + module.out_features",
            new="per_rank += 2 * module.in_features"),
    Mistake('02-parts-from-library', STEM, 'peft_lora_parts', "library",
            "calls course_lib's layer.peft_lora_parts",
            new="return layer.peft_lora_parts(peft_layer, adapter)"),
    Mistake('02-parts-alpha-over-r', STEM, 'peft_lora_parts', "typical",
            "recomputes the scaling as lora_alpha / r instead of reading peft's, which is wrong for an rsLoRA adapter",
            old="peft_layer.scaling[adapter])",
            new="peft_layer.lora_alpha[adapter] / peft_layer.r[adapter])"),
]
