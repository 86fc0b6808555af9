"""Grade a folder of submissions (an LMS export) into a gradebook, a CSV and per-student feedback.

Each entry of the folder is one student (see `intake` for how entries, ids and files are read). Everything the run
produces lives in one output folder, and the run can be repeated: a notebook whose file (and solution) has not
changed since it was graded is not run again, so an interrupted run continues where it stopped. The batch always
finishes: a notebook that makes the grader raise gets a failed row with the reason, and one that killed an earlier
run outright is recorded as failed instead of being run again.
"""

from __future__ import annotations

import concurrent.futures as futures
import csv
import hashlib
import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from course_lib.capstone import rules
from course_lib.instructor import capstone, intake, runners, units
from course_lib.instructor.feedback import write_feedback
from course_lib.instructor.grading import CELL_TIMEOUT_S, Course, NotebookGrade
from course_lib.instructor.sandbox import Limits

STATE_VERSION = 2
COLUMNS = ["student", "name", "notebook", "exercise", "score", "max_score", "note"]
RESULTS = "results.json"  # every grade with its failure messages, status and seconds: what `course report` reads
RESULTS_EVERY_S = 10.0  # a long batch rewrites results.json at most this often while it runs (and at the end)


@dataclass(frozen=True)
class BatchResult:
    """What `grade_folder` wrote and the grades it holds."""

    grades: list[NotebookGrade]
    csv: Path
    gradebook: Path
    feedback: Path
    reused: int  # notebooks not run again because they were graded before
    names: dict[str, str]  # student id -> the name the export gave


@dataclass
class _Job:
    """One student's notebook on its way through the batch."""

    order: int  # place in the gradebook's order (students, then notebooks), whatever order units finish in
    submission: intake.Submission
    stem: str
    key: str  # what a resumed run compares: the notebook's, the solution's and the adapter's digests
    intake_note: str
    solo: bool = False  # suspected of killing the grader: runs with nothing else in flight
    started: float = 0.0


def grade_folder(submissions: Path, solutions: list[Path], out: Path,
                 progress: Callable[[str], None] = lambda line: None,
                 timeout: int = CELL_TIMEOUT_S, limits: Limits | None = None,
                 capstone_secret: Path | None = None, capstone_reference: Path | None = None,
                 workers: int = 1, dask: str | None = None,
                 tick: Callable[[int, int], None] = lambda done, total: None) -> BatchResult:
    """Grade every student's copy of every solution notebook; write gradebook, grades.csv and feedback/ under `out`.

    `workers` > 1 grades that many notebooks at once in local processes; `dask` (a scheduler's address) sends them
    to a Dask cluster instead. Grades, gradebook and feedback are the same whichever runs them. A capstone
    notebook's adapter is scored on the hidden split that `capstone_secret` (a file) seeds; the instructor's own
    adapter, `capstone_reference`, becomes the leaderboard's reference row. `tick(done, total)` follows the units."""
    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {submissions}")
    out.mkdir(parents=True, exist_ok=True)
    limits = limits or Limits()
    course = Course(solutions, root=out / "nbgrader", timeout=timeout, limits=limits)
    solution_bytes = {Path(p).stem: Path(p).read_bytes() for p in solutions}
    solution_keys = {stem: _sha256(data)[:16] for stem, data in solution_bytes.items()}
    artifacts = {Path(p).stem: capstone.artifact_points(Path(p)) for p in solutions if capstone.is_capstone(Path(p))}
    state_path, csv_path = out / "state.json", out / "grades.csv"
    state = _load_state(state_path, progress)
    students = intake.open_submissions(submissions, course.stems, out / "intake", progress, skip=(out,),
                                       artifacts={stem: rules.ADAPTER_FOLDER for stem in artifacts})
    names = {s.student: s.name for s in students}
    runner = runners.open_runner(workers, dask)
    work = out / "work"  # the local workers' own course folders
    try:
        if runner.workers > 1 or runner.remote:
            progress(f"grading on {'the Dask cluster at ' + dask if dask else 'local processes'}: "
                     f"{runner.workers} worker(s)")
        pending = _start_references(course, runner, solution_bytes, timeout, limits, work)
        grader = None
        if artifacts:  # scored here while the workers run the reference solutions
            progress("capstone: scoring the prompting baseline" + (" and the reference adapter" if capstone_reference
                                                                    else "") + " on the hidden split")
            grader = capstone.CapstoneGrader(out, capstone.read_secret(capstone_secret), capstone_reference, limits)
        references = _collect_references(course, pending)
        batch = _Batch(course, runner, state, state_path, out, names, progress, tick, grader, artifacts,
                       references, solution_bytes, timeout, limits, work)
        for submission in students:
            for stem in course.stems:
                batch.add(submission, stem, solution_keys[stem])
        batch.run()
    finally:
        runner.close()
        shutil.rmtree(work, ignore_errors=True)  # the local workers' course folders
    grades = [batch.grades[order] for order in sorted(batch.grades)]
    _write_csv(grades, names, csv_path)
    _write_results(batch, out / RESULTS)
    return BatchResult(grades, csv_path, course.root / "gradebook.db", out / "feedback", batch.reused, names)


def _start_references(course: Course, runner, solution_bytes: dict[str, bytes], timeout: int, limits: Limits,
                      work: Path) -> dict[str, futures.Future | dict]:
    """Every notebook's reference reports: cached, or a unit that runs the reference solution once, all at once."""
    found: dict[str, futures.Future | dict] = {}
    for stem in course.stems:
        cached = course._cached_reference(stem, units.PROFILE)
        if cached is not None:
            found[stem] = cached
        elif isinstance(runner, runners.InProcess):  # here the batch's own course folder runs it
            found[stem] = course.reference_reports(stem, units.PROFILE)
        else:
            found[stem] = runner.submit(units.reference_unit, stem, solution_bytes[stem], timeout, limits,
                                        None if runner.remote else str(work))
    return found


def _collect_references(course: Course, pending: dict[str, futures.Future | dict]) -> dict[str, dict]:
    """The reference reports once every unit has answered, cached in the batch's course folder too."""
    found = {}
    for stem, reports in pending.items():
        if isinstance(reports, futures.Future):
            try:
                reports = reports.result()
            except RuntimeError:  # the reference solution fails its own tests: nothing can be graded against it
                raise
            except Exception as error:  # noqa: BLE001  (a worker that died or could not run it)
                raise RuntimeError(f"the reference solution of {stem} could not be run: "
                                   f"{intake.describe(error)}") from error
            course.seed_reference(stem, reports, units.PROFILE)
        found[stem] = reports
    return found


class _Batch:
    """The batch's bookkeeping: which units to run, how many are in flight, and what each answer is written to."""

    def __init__(self, course, runner, state, state_path, out, names, progress, tick, grader, artifacts, references,
                 solution_bytes, timeout, limits, work):
        self.course, self.runner, self.state, self.state_path, self.out = course, runner, state, state_path, out
        self.names, self.progress, self.tick, self.grader, self.artifacts = names, progress, tick, grader, artifacts
        self.references, self.solution_bytes, self.timeout, self.limits = references, solution_bytes, timeout, limits
        self.work = work
        self.grades: dict[int, NotebookGrade] = {}
        self.seconds: dict[int, float] = {}
        self.statuses: dict[int, str] = {}
        self.queue: list[_Job] = []
        self.reused = 0
        self.total = 0
        self._written = 0.0

    def add(self, submission: intake.Submission, stem: str, solution_key: str) -> None:
        """Queue one student's notebook, or settle it from an earlier run."""
        order, student = self.total, submission.student
        self.total += 1
        notebook = submission.notebooks.get(stem)
        key = (_sha256(notebook.read_bytes()) if notebook else "missing") + ":" + solution_key
        if stem in submission.artifacts:  # a new adapter alone is graded again too
            key += ":" + capstone.folder_sha256(submission.artifacts[stem])[:16]
        job = _Job(order, submission, stem, key, submission.notes.get(stem, ""))
        done = self.state["students"].get(student, {}).get(stem)
        if done and done.get("sha256") == key:
            if done.get("status") == "running" and not done.get("alone", True):
                job.solo = True  # it was in flight beside others when a run died: it may be innocent, so run it alone
            else:
                grade = self._earlier(job, done)
                if grade is not None:
                    self.reused += 1
                    self._settle(job, grade, done.get("status", "graded"), float(done.get("seconds", 0.0)),
                                 reused=True)
                    return
        self.queue.append(job)

    def _earlier(self, job: _Job, done: dict) -> NotebookGrade | None:
        """An earlier run's grade (None: grade again); a notebook that stopped the grader alone stays failed."""
        student, stem = job.submission.student, job.stem
        status, note = done.get("status", "graded"), done.get("note", "")
        if status == "running":
            note = ("the grader stopped while grading this notebook in an earlier run, so it was not run again "
                    "(delete its entry in state.json to retry)")
            done.update(status="failed", note=note)
            _save(self.state, self.state_path, student, stem, done)
            status = "failed"
        grade = _reuse(self.course, stem, student, status, note)
        if grade is not None and stem in self.artifacts:
            result = self.grader.cached(student, capstone.folder_sha256(job.submission.artifacts.get(stem)),
                                        self.artifacts[stem])
            if result is None:
                return None  # the adapter's score is not kept (another baseline or split): grade both again
            grade = units.with_artifact(grade, result)
        return grade

    def run(self) -> None:
        """Run every queued unit; suspects alone, the rest up to twice the workers in flight."""
        in_flight: dict[futures.Future, _Job] = {}
        solo = [job for job in self.queue if job.solo]
        rest = [job for job in self.queue if not job.solo]
        self.tick(self.total - len(self.queue), self.total)
        try:
            while solo or rest or in_flight:
                while solo and not in_flight:
                    self._submit(solo.pop(0), in_flight, alone=True)
                while not solo and rest and len(in_flight) < 2 * self.runner.workers:
                    self._submit(rest.pop(0), in_flight, alone=self.runner.workers == 1)
                if not in_flight:
                    continue
                finished, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
                broken = []
                for future in finished:
                    job = in_flight.pop(future)
                    error = future.exception()
                    if error is not None and runners.is_broken_pool(error) and not job.solo:
                        broken.append(job)  # a pool process died: which unit killed it is not known yet
                        continue
                    self._finish(job, future.result() if error is None else self._lost(job, error))
                if broken:
                    broken += list(in_flight.values())
                    in_flight.clear()
                    self.progress(f"a grading process died: {len(broken)} notebook(s) in flight are graded again, "
                                  "one at a time")
                    self.runner.restart()
                    for job in sorted(broken, key=lambda j: j.order):
                        job.solo = True
                        solo.append(job)
        except KeyboardInterrupt:
            for job in in_flight.values():  # not the units' fault: the next run grades them again
                _save(self.state, self.state_path, job.submission.student, job.stem, None)
            self.runner.close(cancel=True)
            raise

    def _submit(self, job: _Job, in_flight: dict, alone: bool) -> None:
        # marked before running: if this notebook kills the whole grader, the next run knows
        _save(self.state, self.state_path, job.submission.student, job.stem,
              {"sha256": job.key, "status": "running", "alone": alone})
        job.started = time.perf_counter()
        unit = self._unit(job)
        if isinstance(self.runner, runners.InProcess):
            try:
                future = self.runner.submit(units.grade_unit, unit, None, self.course)
            except KeyboardInterrupt:  # not the unit's fault: the next run grades it again
                _save(self.state, self.state_path, job.submission.student, job.stem, None)
                raise
        else:
            future = self.runner.submit(units.grade_unit, unit, None if self.runner.remote else str(self.work))
        in_flight[future] = job

    def _unit(self, job: _Job) -> units.Unit:
        submission, stem = job.submission, job.stem
        notebook = submission.notebooks.get(stem)
        artifact = None
        if stem in self.artifacts:
            folder = submission.artifacts.get(stem)
            digest = capstone.folder_sha256(folder)
            artifact = units.ArtifactJob(units.pack_folder(folder), submission.artifact_notes.get(stem, ""),
                                         self.artifacts[stem], self.grader.baseline["score"], self.grader.tickets,
                                         digest, self.grader.measured(digest))
        # local workers share out the cores; a Dask worker's machine keeps its own setting
        local = self.runner.workers > 1 and not self.runner.remote
        threads = max(1, runners.cores() // self.runner.workers) if local else 0
        return units.Unit(stem, self.solution_bytes[stem], submission.student, submission.name,
                          notebook.read_bytes() if notebook else None, self.references[stem], self.timeout,
                          self.limits, threads, artifact)

    def _lost(self, job: _Job, error: BaseException) -> units.Graded:
        """A unit whose worker died or could not run it: zero, with the reason."""
        why = ("the grading process died while grading this notebook, also when it ran alone"
               if runners.is_broken_pool(error) else f"the grader failed on this notebook: {intake.describe(error)}")
        grade = units.failed_grade(self.course, job.stem, job.submission.student, why)
        result = None
        if job.stem in self.artifacts:
            result = capstone.ArtifactResult(job.submission.student, job.submission.name, None, 0.0,
                                             self.artifacts[job.stem], f"adapter not scored: {why}")
        return units.Graded(grade, "failed", None, round(time.perf_counter() - job.started, 2),
                            "".join(traceback.format_exception(error)), result)

    def _finish(self, job: _Job, graded: units.Graded) -> None:
        """Write one answer into the gradebook, state, feedback and (now and then) the CSV."""
        student, stem = job.submission.student, job.stem
        grade = graded.grade
        if not isinstance(self.runner, runners.InProcess) or graded.status == "failed":
            try:
                self.course.record(grade, graded.autograded)
            except Exception as error:  # noqa: BLE001  (the CSV still gets the grade; the gradebook's failure is noted)
                _log_error(self.out, student, stem, error)
                grade = NotebookGrade(grade.notebook, grade.student, grade.cells, "; ".join(filter(None, [
                    grade.note, f"the gradebook could not be updated: {intake.describe(error)}"])))
        elif graded.artifact is not None:
            try:
                self.course.set_score(stem, student, capstone.ARTIFACT_CELL, graded.artifact.points)
            except Exception as error:  # noqa: BLE001  (the CSV still gets the points; the gradebook's failure is noted)
                _log_error(self.out, student, stem, error)
                grade = NotebookGrade(grade.notebook, grade.student, grade.cells, "; ".join(filter(None, [
                    grade.note, f"the gradebook could not be updated: {intake.describe(error)}"])))
        if graded.error:
            _log_error(self.out, student, stem, graded.error)
        if graded.artifact is not None and self.grader is not None:
            self.grader.keep(graded.artifact)
        grader_note = graded.grade.note if graded.artifact is None else \
            graded.grade.note.removesuffix(graded.artifact.note).rstrip("; ")
        _save(self.state, self.state_path, student, stem,
              {"sha256": job.key, "status": graded.status, "note": grader_note, "seconds": graded.seconds})
        self._settle(job, grade, graded.status, graded.seconds)

    def _settle(self, job: _Job, grade: NotebookGrade, status: str, seconds: float, reused: bool = False) -> None:
        note = "; ".join(filter(None, [job.intake_note, grade.note]))
        grade = _write_feedback(NotebookGrade(grade.notebook, grade.student, grade.cells, note), self.out,
                                job.submission.name)
        self.grades[job.order], self.seconds[job.order], self.statuses[job.order] = grade, seconds, status
        submission = job.submission
        label = submission.student if submission.name == submission.student else \
            f"{submission.student} ({submission.name})"
        self.progress(f"{label} {job.stem}: {grade.score:g}/{grade.max_score:g}" + (f" ({grade.note})" if grade.note
                                                                                    else ""))
        if not reused:
            self.tick(len(self.grades), self.total)
        _write_csv([self.grades[o] for o in sorted(self.grades)], self.names, self.out / "grades.csv")  # a killed
        # run leaves a usable CSV; the larger results file is rewritten now and then, and at the end
        if time.monotonic() - self._written > RESULTS_EVERY_S:
            self._written = time.monotonic()
            _write_results(self, self.out / RESULTS)


def _write_feedback(grade: NotebookGrade, out: Path, name: str) -> NotebookGrade:
    """Write the student's page for this notebook; a failure is logged and noted, and the grade stands."""
    try:
        write_feedback(grade, out / "feedback" / grade.student, name)
    except Exception as error:  # the grade stands; the instructor learns the page is missing
        _log_error(out, grade.student, grade.notebook, error)
        grade = NotebookGrade(grade.notebook, grade.student, grade.cells, "; ".join(
            filter(None, [grade.note, f"feedback could not be written: {intake.describe(error)}"])))
    return grade


def _reuse(course: Course, stem: str, student: str, status: str, note: str) -> NotebookGrade | None:
    """An earlier run's grade from the gradebook, or None when it cannot be read (then the notebook is graded again)."""
    if status == "failed":
        return units.failed_grade(course, stem, student, note)
    try:
        return course._read(stem, student, note)
    except Exception:  # a gradebook deleted or out of step with state.json: grade it again
        return None


def _load_state(path: Path, progress: Callable[[str], None]) -> dict:
    """What earlier runs finished; a missing, unreadable or older state file means starting afresh."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(state, dict) and state.get("version") == STATE_VERSION and isinstance(state.get("students"), dict):
            return state
        progress(f"{path.name} is from an older grader: grading everything again")
    except FileNotFoundError:
        pass
    except ValueError:
        progress(f"{path.name} could not be read: grading everything again")
    return {"version": STATE_VERSION, "students": {}}


def _save(state: dict, path: Path, student: str, stem: str, entry: dict | None) -> None:
    notebooks = state["students"].setdefault(student, {})
    if entry is None:
        notebooks.pop(stem, None)
    else:
        notebooks[stem] = entry
    _atomic_write(path, json.dumps(state, indent=1, ensure_ascii=False))


def _log_error(out: Path, student: str, stem: str, error: BaseException | str) -> None:
    """The whole traceback for the instructor, next to the CSV (the row holds one line)."""
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
    try:
        with (out / "errors.log").open("a", encoding="utf-8", errors="backslashreplace") as log:
            log.write(f"--- {student} {stem}\n{text}\n")
    except OSError:  # a full disk must not turn one failed notebook into a failed batch
        pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _text(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading = + - @ would otherwise make it a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _write_csv(grades: list[NotebookGrade], names: dict[str, str], path: Path) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for grade in grades:
            for cell in grade.cells:
                writer.writerow([grade.student, _text(names.get(grade.student, grade.student)), grade.notebook,
                                 cell.name, f"{cell.score:g}", f"{cell.max_score:g}", _text(grade.note)])
    tmp.replace(path)
    return path


def _write_results(batch: "_Batch", path: Path) -> Path:
    """Every grade so far with its cells' messages, status and seconds, for `course report`."""
    rows = []
    for order in sorted(batch.grades):
        grade = batch.grades[order]
        rows.append({"student": grade.student, "name": batch.names.get(grade.student, grade.student),
                     "notebook": grade.notebook, "status": batch.statuses[order], "seconds": batch.seconds[order],
                     "note": grade.note, "score": grade.score, "max_score": grade.max_score,
                     "cells": [{"name": c.name, "score": c.score, "max_score": c.max_score, "message": c.message}
                               for c in grade.cells]})
    _atomic_write(path, json.dumps({"version": 1, "grades": rows}, indent=1, ensure_ascii=False))
    return path
