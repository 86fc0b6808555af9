"""Run one course_lib module over trusted input in the sandbox, outside any kernel, and read back its answer.

The capstone's adapter evaluation is such a job: the learner's adapter files and the hidden test rows go into a
fresh box (the only folder of the grader's that exists inside the sandbox), the module runs there with the same
layers and limits as a kernel, and it answers with one line on stdout, which the sandbox sends to the box's log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from course_lib.core.checks import JOB_RESULT_PREFIX
from course_lib.instructor.sandbox import NOBODY, Limits


class JobError(RuntimeError):
    """A sandboxed job failed: it crashed, ran out of time or memory, or gave no answer."""


def run_job(module: str, job: dict, files: dict[str, Path] | None = None, limits: Limits | None = None,
            timeout: float = 120.0) -> dict:
    """Run `python -m module JOB.json` in the sandbox with `files` copied into its box; the JSON it answered last
    (JobError when it answered nothing: a crash, a kill by a limit, or the timeout)."""
    box = Path(tempfile.mkdtemp(prefix="cjob-", dir="/tmp"))  # short: the sandbox binds it under its own /tmp
    try:
        os.chmod(box, 0o755)
        for name, source in (files or {}).items():
            _copy_readable(Path(source), box / name)
        job_file = box / "job.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        job_file.chmod(0o644)
        command = [sys.executable, "-m", "course_lib.instructor.sandbox", "--limits", (limits or Limits()).to_json(),
                   "--run", module, "-f", str(job_file)]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise JobError(f"{module} ran past its {timeout:g} s limit") from None
        log = (box / "kernel.log").read_text(errors="replace") if (box / "kernel.log").is_file() else ""
        answers = [line[len(JOB_RESULT_PREFIX):] for line in log.splitlines() if line.startswith(JOB_RESULT_PREFIX)]
        if not answers:  # a job that failed cleanly still answers ({"error": ...}); this one crashed or was killed
            tail = (log.strip().splitlines() or done.stdout.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise JobError(f"{module} failed (exit code {done.returncode}): {tail[:300]}")
        return json.loads(answers[-1])
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _copy_readable(source: Path, target: Path) -> None:
    """Copy a regular file or a folder of them, readable by the sandbox's unprivileged user; links are refused."""
    if source.is_symlink():
        raise ValueError(f"{source} is a link: jobs take regular files only")
    if source.is_dir():
        target.mkdir(mode=0o755)
        for child in sorted(source.iterdir()):
            _copy_readable(child, target / child.name)
    elif source.is_file():
        shutil.copyfile(source, target)
        target.chmod(0o644)
    else:
        raise ValueError(f"{source} is not a regular file")
    if os.getuid() == 0:
        os.chown(target, NOBODY, NOBODY)
