"""Benchmark: autograde a batch of submissions of every notebook in the `grade` profile, serially, on local worker
processes and on a Dask cluster, and project the time for a whole course.

    python tests/benchmarks/grade_batch.py [--students 20] [--notebook 00_quick_start ...] [--workers 1 --workers 2]
                                           [--dask-workers 2] [--json results.json]

Each submission is the reference solution (so every unit does the full work); the capstone's also carries the
course's reference adapter with one weight of its own moved by one unit in the last place, so that every adapter is
scored on the hidden split, as a class's own adapters would be (identical bytes would reuse one score). For every
notebook it prints seconds per submission (batch wall time / students) at each setting, with the speed-up over
`--workers 1` measured in the same run as the baseline, then the projection for 500 students x 8 notebooks on N
cores, from the measured serial time and the measured parallel efficiency. `--dask-workers K` starts a real local
cluster (a scheduler and K workers, each a `dask` process) and grades through its address, as `course grade --dask`
does. With `--json FILE` the measurements are written after every notebook and merged with those already in FILE for
the same students and settings, so a run of several hours can go notebook by notebook (`--notebook`), and the
projection covers them all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from course_lib.capstone import rules
from course_lib.instructor import capstone
from course_lib.instructor.batch import grade_folder
from course_lib.instructor.runners import cores

REPO = Path(__file__).resolve().parents[2]
STUDENTS, NOTEBOOKS = 500, 8  # the course the projection is for
REFERENCE_ADAPTER = REPO / "tests" / "instructor" / "fixtures" / "capstone_reference_adapter"


def _student_adapter(folder: Path, student: int) -> None:
    """The reference adapter with one weight (the student's own) moved by one unit in the last place: its own bytes,
    the same score. (Adding a small float would not do: the weights are bf16, and 1e-6 rounds away.)"""
    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True)
    shutil.copy(REFERENCE_ADAPTER / "adapter_config.json", folder)
    weights = load_file(REFERENCE_ADAPTER / "adapter_model.safetensors")
    first = sorted(weights)[0]
    bits = weights[first].view(-1).view(torch.int16 if weights[first].element_size() == 2 else torch.int32)
    bits[student] += 1
    save_file(weights, folder / "adapter_model.safetensors")


def _start_dask(workers: int, folder: Path) -> tuple[str, list[subprocess.Popen]]:
    dask = str(Path(sys.executable).parent / "dask")
    scheduler_file = folder / "scheduler.json"
    processes = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                                   "--host", "127.0.0.1", "--no-dashboard"], stderr=subprocess.DEVNULL)]
    while not scheduler_file.exists():
        time.sleep(0.2)
    for _ in range(workers):
        processes.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                           "--memory-limit", "0", "--host", "127.0.0.1", "--no-dashboard"],
                                          stderr=subprocess.DEVNULL))
    address = json.loads(scheduler_file.read_text())["address"]
    from distributed import Client

    with Client(address) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, processes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--notebook", action="append")
    parser.add_argument("--workers", type=int, action="append", help="local worker counts (default: 1 and 2)")
    parser.add_argument("--dask-workers", type=int, default=2, help="workers of the local Dask cluster (0: none)")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    solutions = sorted((REPO / "solutions").glob("*.ipynb"))
    if args.notebook:
        solutions = [p for p in solutions if p.stem in args.notebook]
    settings = [f"workers={w}" for w in (args.workers or [1, 2])] + (
        [f"dask={args.dask_workers}"] if args.dask_workers else [])
    work = Path(tempfile.mkdtemp(prefix="grade-bench-"))
    secret = work / "capstone-secret"  # outside every folder a sandboxed kernel may read
    secret.write_text("grade-batch-benchmark-secret\n")
    secret.chmod(0o600)
    processes: list[subprocess.Popen] = []
    measured: dict[str, dict[str, float]] = {}
    if args.json and Path(args.json).exists():
        earlier = json.loads(Path(args.json).read_text())
        if earlier["students"] == args.students and earlier["settings"] == settings:
            measured.update(earlier["seconds_per_submission"])
    try:
        address = None
        if args.dask_workers:
            address, processes = _start_dask(args.dask_workers, work)
        print(f"{cores()} cores; {args.students} submissions of each notebook; seconds per submission")
        print(f"{'notebook':28}" + "".join(f"{s:>14}" for s in settings) + "   speed-up")
        for solution in solutions:
            submissions = work / f"submissions-{solution.stem}"
            for i in range(args.students):
                (submissions / f"student{i:03d}").mkdir(parents=True)
                shutil.copy(solution, submissions / f"student{i:03d}" / solution.name)
                if capstone.is_capstone(solution):
                    _student_adapter(submissions / f"student{i:03d}" / rules.ADAPTER_FOLDER, i)
            measured[solution.stem] = {}
            for setting in settings:
                kind, count = setting.split("=")
                options = {"dask": address} if kind == "dask" else {"workers": int(count)}
                if capstone.is_capstone(solution):
                    options |= {"capstone_secret": secret, "capstone_reference": REFERENCE_ADAPTER}
                out = work / f"out-{solution.stem}-{kind}{count}"
                started = time.perf_counter()
                result = grade_folder(submissions, [solution], out, **options)
                seconds = time.perf_counter() - started
                full = sum(g.score == g.max_score for g in result.grades)
                if full != args.students:
                    print(f"  {solution.stem} {setting}: only {full}/{args.students} full marks")
                measured[solution.stem][setting] = seconds / args.students
                shutil.rmtree(out, ignore_errors=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"cores": cores(), "students": args.students,
                                                       "settings": settings, "seconds_per_submission": measured},
                                                      indent=1))
            row = measured[solution.stem]
            base = row[settings[0]]
            print(f"{solution.stem:28}" + "".join(f"{row[s]:14.1f}" for s in settings) + "   "
                  + ", ".join(f"{base / row[s]:.2f}x" for s in settings[1:]), flush=True)
    finally:
        for process in processes:
            process.terminate()
        shutil.rmtree(work, ignore_errors=True)
    serial = sum(row[settings[0]] for row in measured.values()) / len(measured) * NOTEBOOKS
    print(f"\nProjection for {STUDENTS} students x {NOTEBOOKS} notebooks (mean of the {len(measured)} measured notebooks"
          f" x {NOTEBOOKS}):")
    for setting in settings[1:]:
        count = int(setting.split("=")[1])
        efficiency = sum(row[settings[0]] / row[setting] for row in measured.values()) / len(measured) / count
        print(f"  parallel efficiency at {setting}: {efficiency:.2f}")
        for n in (1, 2, 8, 32, 128):
            hours = STUDENTS * serial / (n * (efficiency if n > 1 else 1.0)) / 3600
            print(f"    {n:4d} workers (one per core): {hours:7.1f} h")


if __name__ == "__main__":
    main()
