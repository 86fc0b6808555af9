"""Grading on several local processes: a process that dies costs only the notebook that killed it, and a run that
stopped with several notebooks in flight grades the innocent ones again instead of failing them all."""

import json
import os

import nbformat
import pytest

from course_lib.instructor import batch, runners, units
from course_lib.instructor.batch import grade_folder
from course_lib.instructor.sandbox import Limits
from tests.instructor.tiny_assignment import FULL, STEM, TINY, solution, wrong_is_even

LIMITS = Limits(memory_bytes=4 * 2**30)
ZERO = {"test_add": 0.0, "test_is_even": 0.0}
pytestmark = [pytest.mark.grading]
_real_grade_unit = units.grade_unit


def _dies_for_one_student(unit, *args, **kwargs):
    """grade_unit, except that the process grading `kills_its_worker` dies outright (as an OOM kill would do it)."""
    if unit.student == "kills_its_worker":
        os._exit(9)
    return _real_grade_unit(unit, *args, **kwargs)


def _class(folder, students):
    for student, nb in students.items():
        path = folder / student / f"{STEM}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)


def test_a_dead_worker_process_costs_only_the_notebook_that_killed_it(tmp_path, monkeypatch):
    _class(tmp_path / "subs", {"a_honest": solution(), "b_wrong": wrong_is_even(solution()),
                               "kills_its_worker": solution(), "d_honest": solution()})
    monkeypatch.setattr(units, "grade_unit", _dies_for_one_student)  # the pool's processes are forked: they see it
    lines = []
    result = grade_folder(tmp_path / "subs", [TINY], tmp_path / "out", timeout=15, limits=LIMITS, workers=2,
                          progress=lines.append)
    graded = {g.student: g for g in result.grades}
    assert graded["a_honest"].by_cell() == FULL and graded["d_honest"].by_cell() == FULL
    assert graded["b_wrong"].by_cell() == {"test_add": 1.0, "test_is_even": 0.0}
    assert graded["kills_its_worker"].by_cell() == ZERO
    assert "died while grading this notebook, also when it ran alone" in graded["kills_its_worker"].note
    assert any("a grading process died" in line for line in lines)
    state = json.loads((tmp_path / "out" / "state.json").read_text())["students"]
    assert {s: e[STEM]["status"] for s, e in state.items()} == {
        "a_honest": "graded", "b_wrong": "graded", "kills_its_worker": "failed", "d_honest": "graded"}


def test_a_run_stopped_with_several_in_flight_grades_them_again_and_one_alone_stays_failed(tmp_path):
    _class(tmp_path / "subs", {"alone": solution(), "beside_others": solution(), "done": solution()})
    out = tmp_path / "out"
    first = grade_folder(tmp_path / "subs", [TINY], out, timeout=15, limits=LIMITS)
    assert all(g.by_cell() == FULL for g in first.grades)
    state = json.loads((out / "state.json").read_text())
    # as a killed run leaves it: one notebook running by itself, one running beside others
    state["students"]["alone"][STEM].update(status="running", alone=True)
    state["students"]["beside_others"][STEM].update(status="running", alone=False)
    (out / "state.json").write_text(json.dumps(state))
    again = grade_folder(tmp_path / "subs", [TINY], out, timeout=15, limits=LIMITS, workers=2)
    graded = {g.student: g for g in again.grades}
    assert graded["alone"].by_cell() == ZERO and "stopped while grading" in graded["alone"].note
    assert graded["beside_others"].by_cell() == FULL and graded["beside_others"].note == ""
    assert graded["done"].by_cell() == FULL and again.reused == 2
    results = json.loads((out / batch.RESULTS).read_text())["grades"]
    assert [(r["student"], r["status"]) for r in results] == [
        ("alone", "failed"), ("beside_others", "graded"), ("done", "graded")]
    assert all(r["seconds"] > 0 for r in results if r["student"] != "alone")


def test_default_workers_fit_the_cores_and_the_memory():
    workers, why = runners.default_workers()
    assert 1 <= workers <= runners.cores() and f"{runners.cores()} core(s)" in why


def _print_and_warn(value):
    import warnings

    print("a line a grading unit prints")
    warnings.warn("a warning a grading unit prints")
    return value


def test_a_pool_forked_inside_the_progress_display_prints_past_its_lock():
    """The grader forks its pool inside a rich display whose proxies replace stdout and stderr; the display's
    lock, held by another thread at the fork, stays held in the child, whose first printed line then hung."""
    import io
    import threading

    from rich.console import Console
    from rich.live import Live

    console = Console(file=io.StringIO(), force_terminal=True)
    with Live(console=console, redirect_stdout=True, redirect_stderr=True, auto_refresh=False) as live:
        held, release = threading.Event(), threading.Event()

        def hold_the_lock():
            with live._lock:  # as the display's refresh thread does, many times a second
                held.set()
                release.wait()

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        held.wait()
        pool = runners.LocalPool(1)
        try:
            future = pool.submit(_print_and_warn, 7)  # the pool forks its process now, with the lock held
            release.set()
            holder.join()
            assert future.result(timeout=60) == 7
        finally:
            pool.close(cancel=True)
