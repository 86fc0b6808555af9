"""Typical wrong answers of solutions/01_data_formatting.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "01_data_formatting"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "build_labels": "loss masking: learn every assistant reply and its end token, nothing of the prompt, also in "
                    "multi-turn and truncated chats",
    "find_label_bug": "diagnose a pipeline's labels against the right ones and name the cause (prompt learned, reply or "
                      "end masked, shifted by hand), not a symptom",
    "check_chat_row": "reject a bad chat row before it reaches Arrow, naming the row, the field and the kind of problem",
    "split_without_leakage": "split by normalized prompt so that no question is in two splits, reproducibly from a seed",
    "pack_into_blocks": "pack rows without letting them mix: positions restart, the first label is masked, each row "
                        "keeps its own labels",
}

MISTAKES = [
    Mistake('01-labels-library', STEM, 'build_labels', "library", "decodes the ids back into messages and returns the "
            "course's tokenize.tokenize_chat labels",
            new='text = tokenizer.decode(list(input_ids))\n'
                '    turns = [part.split("<|im_end|>")[0] for part in text.split("<|im_start|>")[1:]]\n'
                '    messages = [{"role": t.split("\\n", 1)[0], "content": t.split("\\n", 1)[1]} for t in turns]\n'
                '    return tokenize.tokenize_chat(messages, tokenizer)["labels"]\n'),
    Mistake('01-mask-nothing', STEM, 'build_labels', "typical", 'masking nothing: every token learned, the model trains on the prompt too',
            old='labels = [IGNORE_INDEX] * len(ids)',
            new='labels = list(ids)'),
    Mistake('01-labels-drop-end', STEM, 'build_labels', "typical", 'stops before the end token: the reply is learned '
            'but not where it ends',
            old='        while j < len(ids):\n            labels[j] = ids[j]\n',
            new='        while j < len(ids) and ids[j] != end_id:\n            labels[j] = ids[j]\n'),
    Mistake('01-bug-library', STEM, 'find_label_bug', "library", "returns the course's tokenize.label_bug",
            new='return tokenize.label_bug(messages, row, tokenizer)\n'),
    Mistake('01-bug-symptom-first', STEM, 'find_label_bug', "typical", 'looks for learned prompt tokens before the '
            'shift: a row shifted by hand is called prompt_learned, a symptom, not its cause',
            old='    if any(labels[t] != ids[t] for t in learned) and all(t + 1 < len(ids) and labels[t] == ids[t + 1] for t in learned):\n'
                '        return "shifted"\n'
                '    if any(r == IGNORE_INDEX and l != IGNORE_INDEX for r, l in zip(right, labels)):\n'
                '        return "prompt_learned"\n',
            new='    if any(r == IGNORE_INDEX and l != IGNORE_INDEX for r, l in zip(right, labels)):\n'
                '        return "prompt_learned"\n'
                '    if any(labels[t] != ids[t] for t in learned) and all(t + 1 < len(ids) and labels[t] == ids[t + 1] for t in learned):\n'
                '        return "shifted"\n'),
    Mistake('01-bug-mask-only', STEM, 'find_label_bug', "typical", 'compares only which positions are learned, never '
            'the label values: a row shifted by hand is taken for one that learns the prompt',
            old='    if any(labels[t] != ids[t] for t in learned) and all(t + 1 < len(ids) and labels[t] == ids[t + 1] for t in learned):\n'
                '        return "shifted"\n',
            new=''),
    Mistake('01-check-library', STEM, 'check_chat_row', "library", "calls the course's validate.validate_row",
            new='validate.validate_row(row, index, fmt="chat")\n    return None\n'),
    Mistake('01-check-last-first', STEM, 'check_chat_row', "typical", 'checks the last turn before the messages '
            'themselves, so the first problem reported is the wrong one',
            old='    for i, message in enumerate(messages):\n        if not isinstance(message, dict):',
            new='    if isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":\n'
                '        raise RowError(index, f"messages[{len(messages) - 1}].role", "must end with an assistant turn", '
                '"last_turn")\n'
                '    for i, message in enumerate(messages):\n        if not isinstance(message, dict):'),
    Mistake('01-split-library', STEM, 'split_without_leakage', "library", "returns the course's splits.split_groups "
            "on the normalized prompts",
            new='return splits.split_groups([splits.normalize_text(p) for p in prompts], fractions, seed)\n'),
    Mistake('01-split-raw-prompt', STEM, 'split_without_leakage', "typical", 'groups by the raw prompt: re-asked '
            'questions that differ in case or spacing leak into another split',
            old='groups.setdefault(splits.normalize_text(prompt), []).append(index)',
            new='groups.setdefault(prompt, []).append(index)'),
    Mistake('01-pack-library', STEM, 'pack_into_blocks', "library", "returns the course's packing.pack_sequences",
            new='return [{key: block[key] for key in ("input_ids", "position_ids", "labels")}\n'
                '            for block in packing.pack_sequences(rows, block_size)]\n'),
    Mistake('01-pack-labels-from-ids', STEM, 'pack_into_blocks', "typical", 'labels taken from the ids: the '
            'assistant-only mask is thrown away and every prompt is learned again',
            old='block["labels"] += [IGNORE_INDEX] + labels[1:]',
            new='block["labels"] += [IGNORE_INDEX] + ids[1:]'),
    Mistake('01-positions-run-on', STEM, 'pack_into_blocks', "typical", 'positions run on across examples instead of restarting',
            old='block["position_ids"] += list(range(len(ids)))',
            new='block["position_ids"] += list(range(len(block["position_ids"]), len(block["position_ids"]) + len(ids)))'),
]
