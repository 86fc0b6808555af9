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
    "to_gguf_tensor": "export a tensor to GGUF: its name from the gguf package's table, q and k rows reordered from "
                      "HF's rotary halves to llama.cpp's interleaved pairs, each with its own head count",
    "choose_gguf_type": "pick the GGUF type to ship from the measured table: the smallest file within a size and a "
                        "quality budget, or none",
    "answer_request": "ask an OpenAI-compatible endpoint for schema-constrained JSON: greedy, bounded, and a JSON schema "
                      "that accepts every right answer and rejects wrong shapes",
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
    Mistake('06-gguf-library', STEM, 'to_gguf_tensor', "library", "the course's gguf_export.gguf_tensor_name and "
            "permute_for_rope",
            new='    from course_lib.deployment import gguf_export\n'
                '    name = gguf_export.gguf_tensor_name(hf_name, n_blocks)\n'
                '    heads = {"attn_q.weight": n_head, "attn_k.weight": n_kv_head}.get(name.split(".", 2)[-1])\n'
                '    return name, weight if heads is None else gguf_export.permute_for_rope(weight, heads)\n'),
    Mistake('06-gguf-no-permute', STEM, 'to_gguf_tensor', "typical", "renames the tensors but keeps HF's rotary "
            "layout: the file loads and answers nonsense",
            old='    if heads is not None:',
            new='    if False:'),
    Mistake('06-gguf-k-with-q-heads', STEM, 'to_gguf_tensor', "typical", "reorders k_proj with the query head count "
            "(wrong under grouped-query attention)",
            old='"attn_k.weight": n_kv_head}',
            new='"attn_k.weight": n_head}'),
    Mistake('06-gguf-transpose-halves', STEM, 'to_gguf_tensor', "typical", "interleaves over the whole matrix instead "
            "of head by head",
            old='weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])',
            new='weight.reshape(1, 2, rows // 2, *weight.shape[1:])'),
    Mistake('06-choose-library', STEM, 'choose_gguf_type', "library", "returns the course's gguf_export.choose_type",
            new='    from course_lib.deployment import gguf_export\n'
                '    return gguf_export.choose_type(rows, merged_exact_match, max_mb, max_drop)\n'),
    Mistake('06-choose-smallest', STEM, 'choose_gguf_type', "typical", "picks the smallest file within the size budget, "
            "whatever it loses",
            old='r["size_mb"] <= max_mb and merged_exact_match - r["exact_match"] <= max_drop + 1e-12',
            new='r["size_mb"] <= max_mb'),
    Mistake('06-choose-absolute', STEM, 'choose_gguf_type', "typical", "reads max_drop as a minimum exact match instead "
            "of the loss against the merged model",
            old='merged_exact_match - r["exact_match"] <= max_drop + 1e-12',
            new='r["exact_match"] >= max_drop'),
    Mistake('06-choose-best', STEM, 'choose_gguf_type', "typical", "ships the best-scoring file that fits instead of the "
            "smallest",
            old='key=lambda r: (r["size_mb"], -r["exact_match"])',
            new='key=lambda r: (-r["exact_match"], r["size_mb"])'),
    Mistake('06-request-library', STEM, 'answer_request', "library", "the course's gguf_runtime.chat_request with "
            "tasks.answer_schema",
            new='    return gguf_runtime.chat_request(messages, "smollm2-json", max_tokens, tasks.answer_schema())\n'),
    Mistake('06-request-open-schema', STEM, 'answer_request', "typical", "a schema that allows extra keys",
            old='"additionalProperties": False}',
            new='}'),
    Mistake('06-request-age-number', STEM, 'answer_request', "typical", "age as any number, so 41.5 passes",
            old='"age": {"type": ["integer", "null"]}',
            new='"age": {"type": ["number", "null"]}'),
    Mistake('06-request-no-required', STEM, 'answer_request', "typical", "no required keys: an answer missing a field "
            "passes",
            old='"required": ["name", "age", "city", "job"], ',
            new=''),
    Mistake('06-request-sampling', STEM, 'answer_request', "typical", "samples at temperature 0.7 instead of greedy "
            "decoding",
            old='"temperature": 0,',
            new='"temperature": 0.7,'),
]
