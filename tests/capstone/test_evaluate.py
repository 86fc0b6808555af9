"""Scoring an adapter: loading with the adapter merged, the score of the replies, and the job command."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from dataclasses import asdict

import pytest
import torch

from course_lib.capstone import evaluate as evaluate_module
from course_lib.capstone.evaluate import (MAX_NEW_TOKENS, RESULT_FILE, AdapterRefused, evaluate, load_with_adapter,
                                          main, read_job)
from course_lib.core.checks import JOB_RESULT_PREFIX as RESULT_PREFIX
from course_lib.capstone.support import make_tickets, prompt_messages

TICKETS = make_tickets(4, seed=11)


def _job(folder, adapter, base, tickets=TICKETS, **extra):
    path = folder / "job.json"
    path.write_text(json.dumps({"adapter": adapter, "tickets": [asdict(t) for t in tickets], "base": base, **extra}))
    return path


def test_the_adapter_is_merged_into_a_plain_float32_cpu_model(tiny_base, tiny_adapter):
    base, _ = load_with_adapter(None, base=str(tiny_base))
    merged, _ = load_with_adapter(tiny_adapter, base=str(tiny_base))
    assert type(merged) is type(base) and not merged.training  # merged: no peft wrapper left
    weight = "model.layers.0.self_attn.q_proj.weight"
    merged_weight, base_weight = merged.state_dict()[weight], base.state_dict()[weight]
    assert merged_weight.dtype == torch.float32 and merged_weight.device.type == "cpu"
    assert not torch.equal(merged_weight, base_weight)  # the adapter's B is not zero: merging changed the weight


def test_a_refused_adapter_is_never_loaded(tmp_path, tiny_base, tiny_adapter):
    folder = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(AdapterRefused, match="pickle files are refused"):
        load_with_adapter(folder, base=str(tiny_base))


def test_evaluate_scores_greedy_short_replies_to_the_prompts(monkeypatch, tiny_base):
    seen = {}

    def fake_generate(model, tokenizer, conversations, max_new_tokens, batch_size, progress):
        seen.update(conversations=conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
        return [t.answer() for t in TICKETS[:-1]] + ["nonsense"]

    monkeypatch.setattr(evaluate_module, "chat_generate", fake_generate)
    result = evaluate(None, TICKETS, base=str(tiny_base), batch_size=3)
    assert seen == {"conversations": [prompt_messages(t) for t in TICKETS], "max_new_tokens": MAX_NEW_TOKENS,
                    "batch_size": 3}
    assert (result["n"], result["invalid"]) == (4, 1) and 0 < result["score"] < 1 and result["seconds"] > 0


def test_evaluate_runs_the_real_loop_on_a_tiny_model(tiny_base, tiny_adapter):
    result = evaluate(tiny_adapter, TICKETS, base=str(tiny_base))
    assert set(result) == {"score", "intent_f1", "priority_f1", "n", "invalid", "seconds"}
    assert result["n"] == 4 and 0 <= result["score"] <= 1 and 0 <= result["invalid"] <= 4


def test_main_writes_the_result_next_to_the_job(tmp_path, tiny_base, tiny_adapter, capsys):
    shutil.copytree(tiny_adapter, tmp_path / "submission")
    job = _job(tmp_path, "submission", str(tiny_base))  # relative to the job's folder
    assert read_job(job).adapter == tmp_path / "submission"
    assert main([str(job)]) == 0
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    assert result["n"] == 4 and "error" not in result
    assert json.loads(capsys.readouterr().out.splitlines()[-1].removeprefix(RESULT_PREFIX)) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json", RESULT_FILE, "submission"]


@pytest.mark.parametrize("adapter, tickets, extra, expected", [
    ("missing", TICKETS, {}, "does not exist"),
    (None, [], {}, "tickets must be a non-empty list"),
    (None, TICKETS, {"secret": "x"}, "the job must be an object"),
    (3, TICKETS, {}, "adapter must be a folder path or null"),
])
def test_main_reports_a_bad_job_as_an_error(tmp_path, tiny_base, adapter, tickets, extra, expected):
    job = _job(tmp_path, adapter, str(tiny_base), tickets, **extra)
    assert main([str(job)]) == 1
    assert expected in json.loads((tmp_path / RESULT_FILE).read_text())["error"]


def test_main_checks_each_ticket(tmp_path, tiny_base):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"adapter": None, "base": str(tiny_base),
                               "tickets": [{"text": "hi", "intent": "sales", "priority": "low"}]}))
    assert main([str(job)]) == 1
    assert "ticket 0: intent must be one of" in json.loads((tmp_path / RESULT_FILE).read_text())["error"]


def test_main_answers_on_stdout_when_it_cannot_write(tmp_path, tiny_base, capsys):
    """In the grader's sandbox the job's folder may be read-only: the printed line still carries the answer."""
    job = _job(tmp_path, None, str(tiny_base), TICKETS[:1])
    (tmp_path / RESULT_FILE).mkdir()  # writing the result file fails
    assert main([str(job)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1].removeprefix(RESULT_PREFIX))["n"] == 1
    assert f"could not write {RESULT_FILE}" in err


def test_main_refuses_a_base_that_is_not_on_this_machine(tmp_path):
    job = _job(tmp_path, None, "someone/else-model")
    assert main([str(job)]) == 1
    assert "is not on this machine" in json.loads((tmp_path / RESULT_FILE).read_text())["error"]


def test_the_module_runs_as_a_command(tmp_path, tiny_base, monkeypatch):
    """`python -m course_lib.capstone.evaluate JOB.json`, run in this process (a fresh interpreter costs 10-30 s)."""
    job = _job(tmp_path, None, str(tiny_base), TICKETS[:2])
    monkeypatch.setattr(sys, "argv", ["evaluate", str(job)])
    with pytest.warns(RuntimeWarning, match="found in sys.modules"), pytest.raises(SystemExit) as done:
        runpy.run_module("course_lib.capstone.evaluate", run_name="__main__")
    assert done.value.code == 0
    assert json.loads((tmp_path / RESULT_FILE).read_text())["n"] == 2
    assert main([]) == 2  # usage
