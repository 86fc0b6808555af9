"""Typical wrong answers of solutions/08_capstone.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "08_capstone"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "ticket_rows": "shape a new task's data into the chat rows the grader's prompt expects, and validate them with "
                   "01's checker before training",
    "triage_score": "macro-F1 by hand: every class counts alike and an unreadable reply is wrong, never dropped",
    "save_submission": "ship the adapter alone, as safetensors, in a folder the grader accepts (graded on a hidden "
                       "test split)",
}

MISTAKES = [
    Mistake('08-rows-library', STEM, 'ticket_rows', "library", "returns the course's support.to_rows",
            new='return support.to_rows(tickets)\n'),
    Mistake('08-rows-unvalidated', STEM, 'ticket_rows', "typical", "skips the validator: an empty message becomes a "
            "training row", old='    validate_rows(rows, on_error="raise")\n', new=''),
    Mistake('08-rows-format', STEM, 'ticket_rows', "typical", "answers in a format of its own ('Intent: refund, "
            "priority: urgent'), not the two words the grader's prompt asks for",
            old='f"{ticket.intent} {ticket.priority}"', new='f"Intent: {ticket.intent}, priority: {ticket.priority}"'),
    Mistake('08-score-library', STEM, 'triage_score', "library", "returns the course's support.score",
            new='return support.score(replies, tickets)\n'),
    Mistake('08-score-drop', STEM, 'triage_score', "typical", "drops the unreadable replies before scoring, which "
            "flatters a model that babbles",
            old='    intent = macro_f1(', new='    kept = [(r, t) for r, t in zip(replies, tickets) if read(r, support.INTENTS)'
            ' and read(r, support.PRIORITIES)]\n    replies, tickets = [r for r, _ in kept], [t for _, t in kept]\n'
            '    intent = macro_f1('),
    Mistake('08-score-accuracy', STEM, 'triage_score', "typical", "averages over the tickets (accuracy) instead of "
            "over the classes", old='        return sum(scores) / len(seen) if seen else 0.0',
            new='        return sum(t == p for t, p in zip(truth, predicted)) / len(truth)'),
    Mistake('08-save-library', STEM, 'save_submission', "library", "hands the job to the course's "
            "adapters.save_adapter", new='from course_lib.deployment.adapters import save_adapter\n'
                                        '    save_adapter(model, folder)\n'),
    Mistake('08-save-merged', STEM, 'save_submission', "typical", "merges the adapter and saves the whole model, "
            "which the grader refuses", new='model.merge_and_unload().save_pretrained(folder)\n'),
    Mistake('08-save-pickle', STEM, 'save_submission', "typical", "saves the state dict with torch.save: a pickle file, "
            "refused unopened", new='import torch\n    Path(folder).mkdir(exist_ok=True)\n'
                                    '    torch.save({k: v for k, v in model.state_dict().items() if "lora_" in k},\n'
                                    '               Path(folder) / "adapter_model.bin")\n'),
]
