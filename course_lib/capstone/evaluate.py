"""Score a capstone adapter on tickets: the base model on the CPU, the adapter merged in, greedy short replies.

It runs in the grader's sandbox, so it stays plain: float32 on the CPU (the same numbers on every machine), no
network, and as a command it reads one job file and writes only `result.json` next to it:

    python -m course_lib.capstone.evaluate JOB.json

where JOB.json is {"adapter": "path" or null, "tickets": [{"text", "intent", "priority"}, ...], "base": "default"}
(a relative adapter path is read from the job file's folder) and result.json gets `evaluate`'s dict, or
{"error": "..."} with exit code 1; the same JSON is printed last on stdout after "COURSE-RESULT ".
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from peft import PeftModel

from course_lib.capstone.adapter_check import check_adapter
from course_lib.capstone.support import INTENTS, PRIORITIES, Ticket, prompt_messages, score
from course_lib.core.checks import JOB_RESULT_PREFIX
from course_lib.core.models import load_causal_lm, resolve
from course_lib.evaluation.generate import chat_generate

# "technical normal" and its end-of-turn token take 3 to 4 tokens with SmolLM2's tokenizer; 6 leaves room for a
# leading space or a stray word and keeps 120 tickets well inside a minute on 2 CPU cores.
MAX_NEW_TOKENS = 6
RESULT_FILE = "result.json"
# The grader's sandboxed job runner reads a job's answer from its last stdout line with this prefix (the sandbox
# may not hand files back), so the result is printed too.
JOB_KEYS = {"adapter", "tickets", "base"}


class AdapterRefused(ValueError):
    """The adapter folder breaks the capstone's rules (adapter_check); the message lists every problem."""


def load_with_adapter(adapter_dir: Path | None, base: str = "default"):
    """(model, tokenizer): the base in float32 on the CPU, eval mode, with the adapter merged in; None: the base alone."""
    if adapter_dir is not None:
        # checked before peft opens anything, so that a refused folder is never loaded
        problems = check_adapter(Path(adapter_dir), base=base)
        if problems:
            raise AdapterRefused("the adapter is refused: " + " ".join(problems))
    model, tokenizer = load_causal_lm(base, dtype=torch.float32, device="cpu")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        model = model.merge_and_unload()  # one plain model: generation pays no adapter matmuls
    model.eval()
    return model, tokenizer


def evaluate(adapter_dir: Path | None, tickets: Sequence[Ticket], base: str = "default", batch_size: int | None = None,
             progress: bool = False) -> dict:
    """`score()` of greedy replies to the tickets, plus `seconds` taken, loading included."""
    if not tickets:
        raise ValueError("no tickets to evaluate")
    started = time.perf_counter()
    model, tokenizer = load_with_adapter(adapter_dir, base)
    replies = chat_generate(model, tokenizer, [prompt_messages(t) for t in tickets], max_new_tokens=MAX_NEW_TOKENS,
                            batch_size=batch_size, progress=progress)
    result = score(replies, tickets)
    result["seconds"] = time.perf_counter() - started
    return result


# -------------------------------------------------------------------------------------------------- job


@dataclass(frozen=True)
class Job:
    """One evaluation job: the adapter folder (None: the prompting baseline), the tickets and the base model."""

    adapter: Path | None
    tickets: list[Ticket]
    base: str = "default"


def _ticket(raw, i: int) -> Ticket:
    if not isinstance(raw, dict) or set(raw) != {"text", "intent", "priority"}:
        raise ValueError(f"ticket {i} must be an object with exactly text, intent and priority")
    if not isinstance(raw["text"], str) or not raw["text"].strip():
        raise ValueError(f"ticket {i}: text must be a non-empty string")
    if raw["intent"] not in INTENTS or raw["priority"] not in PRIORITIES:
        raise ValueError(f"ticket {i}: intent must be one of {INTENTS} and priority one of {PRIORITIES}, "
                         f"got {raw['intent']!r} and {raw['priority']!r}")
    return Ticket(raw["text"], raw["intent"], raw["priority"])


def read_job(path: Path) -> Job:
    """The job in a JSON file, checked; a clear ValueError for anything malformed."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"cannot read the job file {path}: {error}") from None
    if not isinstance(raw, dict) or not {"adapter", "tickets"} <= set(raw) or set(raw) - JOB_KEYS:
        raise ValueError(f"the job must be an object with keys adapter and tickets (and optionally base), got "
                         f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
    adapter = raw["adapter"]
    if adapter is not None and (not isinstance(adapter, str) or not adapter):
        raise ValueError(f"adapter must be a folder path or null, got {adapter!r}")
    base = raw.get("base", "default")
    if not isinstance(base, str) or not base:
        raise ValueError(f"base must be a model name, got {base!r}")
    tickets = raw["tickets"]
    if not isinstance(tickets, list) or not tickets:
        raise ValueError("tickets must be a non-empty list")
    folder = Path(path).parent
    return Job(adapter=None if adapter is None else folder / adapter,  # an absolute path stays as it is
               tickets=[_ticket(t, i) for i, t in enumerate(tickets)], base=base)


def run_job(path: Path) -> dict:
    """Evaluate the job in a file: the score dict."""
    job = read_job(path)
    where, _ = resolve(job.base)
    if not Path(where).is_dir():  # the sandbox has no network: a hub id would hang or fail late
        raise ValueError(f"the base model {job.base!r} is not on this machine (it resolves to {where!r})")
    return evaluate(job.adapter, job.tickets, job.base)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m course_lib.capstone.evaluate JOB.json`: write result.json next to the job; 0 on success, 1 on error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m course_lib.capstone.evaluate JOB.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        result, code = run_job(path), 0
    except Exception as error:  # every failure becomes a result the grader can show, never a traceback alone
        result, code = {"error": f"{type(error).__name__}: {error}"}, 1
    print(JOB_RESULT_PREFIX + json.dumps(result), flush=True)
    try:
        (path.parent / RESULT_FILE).write_text(json.dumps(result, indent=1), encoding="utf-8")
    except OSError as error:  # a sandbox box the job may read but not write: the printed line is the answer
        print(f"could not write {RESULT_FILE}: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
