"""Typical wrong answers of solutions/00_quick_start.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "00_quick_start"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('00-ascii', STEM, 'build_messages', "typical", 'json.dumps with ensure_ascii left on: "José" becomes "Jos\\u00e9"',
            old='ensure_ascii=False',
            new='ensure_ascii=True'),
]
