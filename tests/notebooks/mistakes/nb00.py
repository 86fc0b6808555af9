"""Typical wrong answers of solutions/00_quick_start.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "00_quick_start"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "build_messages": "a training example is a system/user/assistant chat whose answer is canonical JSON (fixed keys, "
                      "nulls, UTF-8 kept)",
    "is_exact_match": "score a reply by parsing it: unparseable replies count as wrong instead of crashing or being "
                      "dropped",
}

MISTAKES = [
    Mistake('00-messages-library', STEM, 'build_messages', "library", "returns the course's own tasks.to_messages",
            new='return tasks.to_messages(example)\n'),
    Mistake('00-ascii', STEM, 'build_messages', "typical", 'json.dumps with ensure_ascii left on: "José" becomes "Jos\\u00e9"',
            old='ensure_ascii=False',
            new='ensure_ascii=True'),
    Mistake('00-key-order', STEM, 'build_messages', "typical", "dumps example.answer as it comes: keys in the data's "
            "order, not name, age, city, job",
            old='json.dumps(answer, ensure_ascii=False)',
            new='json.dumps(example.answer, ensure_ascii=False)'),
    Mistake('00-match-library', STEM, 'is_exact_match', "library", "returns the course's metrics.json_exact_match",
            new='from course_lib.evaluation.metrics import json_exact_match\n'
                '    return json_exact_match(reply, answer)\n'),
    Mistake('00-match-crash', STEM, 'is_exact_match', "typical", "json.loads without try: a reply that is not JSON "
            "crashes the evaluation",
            old='    try:\n        parsed = json.loads(reply)\n    except json.JSONDecodeError:\n        return False\n',
            new='    parsed = json.loads(reply)\n'),
    Mistake('00-match-text', STEM, 'is_exact_match', "typical", "compares the text with json.dumps(answer): the same "
            "object with other key order or spacing counts as wrong",
            old='    return isinstance(parsed, dict) and parsed == answer\n',
            new='    return reply == json.dumps(answer)\n'),
]
