"""Typical wrong answers of solutions/06_deployment.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "06_deployment"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "max_abs_logit_diff": "prove two models equivalent by the largest logit difference over real (unpadded) positions, "
                          "never a mean",
    "save_reload_merge": "ship an adapter with peft's API: save_pretrained as safetensors, PeftModel.from_pretrained on "
                         "a fresh base, merge_and_unload (in place) into a plain model",
    "choose_qlora_merge": "decide by measurement what to merge a QLoRA adapter into: the dequantized NF4 base, not the "
                          "original full-precision one nor the 4-bit weights",
    "read_card_facts": "read a model card's YAML header safely (safe_load) for base model, revision, license and metric",
    "adapter_num_params": "size an adapter from its config: r·(in + out) per targeted layer plus the biases peft's bias "
                          "mode trains",
}

MISTAKES = [
    Mistake('06-diff-library', STEM, 'max_abs_logit_diff', "library", "returns the course's "
            "adapters.max_abs_logit_diff",
            new='    return adapters.max_abs_logit_diff(logits_a, logits_b, attention_mask)\n'),
    Mistake('06-mean-logit-diff', STEM, 'max_abs_logit_diff', "typical", 'the mean instead of the max logit difference',
            old='diff[attention_mask.bool()].max()',
            new='diff[attention_mask.bool()].mean()'),
    Mistake('06-diff-with-padding', STEM, 'max_abs_logit_diff', "typical", "the max over every position, padding "
            "included",
            old='diff[attention_mask.bool()].max()',
            new='diff.max()'),
    Mistake('06-ship-library', STEM, 'save_reload_merge', "library", "the course's adapters.save_adapter, load_adapter "
            "and merge",
            new='    adapters.save_adapter(peft_model, folder)\n'
                '    reloaded = adapters.load_adapter(make_base(), folder)\n'
                '    return reloaded, adapters.merge(adapters.load_adapter(make_base(), folder))\n'),
    Mistake('06-ship-pickle', STEM, 'save_reload_merge', "typical", "saves the adapter as a pickle "
            "(safe_serialization=False): adapter_model.bin",
            old='safe_serialization=True',
            new='safe_serialization=False'),
    Mistake('06-merge-in-place', STEM, 'save_reload_merge', "typical", "merges the reloaded model itself: "
            "merge_and_unload works in place, so the returned 'reloaded' adapter is gone",
            old='merged = PeftModel.from_pretrained(make_base(), folder).merge_and_unload()',
            new='merged = reloaded.merge_and_unload()'),
    Mistake('06-unload-not-merge', STEM, 'save_reload_merge', "typical", "unload() instead of merge_and_unload(): the "
            "adapter is dropped, not folded into the weights",
            old='.merge_and_unload()',
            new='.unload()'),
    Mistake('06-qlora-library', STEM, 'choose_qlora_merge', "library", "the course's adapters.merge_dequantized, "
            "merge_full_precision and max_abs_logit_diff",
            new='    evaluated = adapters.logits_on(qlora_model, batch)\n'
                '    mask = batch["attention_mask"]\n'
                '    diffs = {"full_precision": adapters.max_abs_logit_diff(evaluated, adapters.logits_on(\n'
                '                 adapters.merge_full_precision(adapter_dir, base=str(base_dir))[0], batch), mask),\n'
                '             "dequantized": adapters.max_abs_logit_diff(evaluated, adapters.logits_on(\n'
                '                 adapters.merge_dequantized(adapter_dir, base_dir), batch), mask)}\n'
                '    return {**diffs, "ship": min(diffs, key=diffs.get)}\n'),
    Mistake('06-ship-full-precision', STEM, 'choose_qlora_merge', "typical", "ships the original full-precision merge "
            "because it is 'more precise', whatever the measurement says",
            old='"ship": min(diffs, key=diffs.get)',
            new='"ship": "full_precision"'),
    Mistake('06-merge-into-4bit', STEM, 'choose_qlora_merge', "typical", "forgets dequantize(): the 'dequantized' "
            "candidate is merged into the 4-bit weights and re-rounded",
            old='difference(nf4.dequantize())',
            new='difference(nf4)'),
    Mistake('06-card-library', STEM, 'read_card_facts', "library", "reads the header with the course's "
            "model_card.read_card_header",
            new='    from course_lib.deployment.model_card import read_card_header\n'
                '    header = read_card_header(text)\n'
                '    value = next((float(m["value"]) for e in header.get("model-index", []) for r in e.get("results", [])\n'
                '                  for m in r.get("metrics", []) if m.get("type") == "exact_match"), None)\n'
                '    return {"base_model": header.get("base_model"), "base_model_revision": header.get("base_model_revision"),\n'
                '            "license": header.get("license"), "exact_match": value}\n'),
    Mistake('06-card-first-metric', STEM, 'read_card_facts', "typical", "takes the first metric's value, whatever its "
            "type",
            old='if metric.get("type") == "exact_match" and value is None:',
            new='if value is None:'),
    Mistake('06-params-library', STEM, 'adapter_num_params', "library", "returns the course's "
            "adapters.adapter_num_params",
            new='    return adapters.adapter_num_params(config, shapes)\n'),
    Mistake('06-one-matrix', STEM, 'adapter_num_params', "typical", 'adapter size counting one matrix only',
            old='total += r * (n_in + n_out)',
            new='total += r * n_in'),
    Mistake('06-no-bias', STEM, 'adapter_num_params', "typical", 'adapter size without the trained biases',
            old='if has_bias and (bias == "all"',
            new='if False and (bias == "all"'),
]
