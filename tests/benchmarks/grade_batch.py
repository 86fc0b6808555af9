"""Benchmark: autograde a batch of submissions of every notebook in the `grade` profile.

    python tests/benchmarks/grade_batch.py [--students 20] [--notebook 00_quick_start ...]

Prints seconds per submission for each notebook (goal: 60 s or less on 2 cores) and, as the baseline
measured in the same run, nbgrader's own autograde without the sandbox (the faster of two runs).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from course_lib.instructor.batch import grade_folder
from course_lib.instructor.grading import Course

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--notebook", action="append")
    args = parser.parse_args()
    solutions = sorted((REPO / "solutions").glob("*.ipynb"))
    if args.notebook:
        solutions = [p for p in solutions if p.stem in args.notebook]
    work = Path(tempfile.mkdtemp(prefix="grade-bench-"))
    print(f"{'notebook':28} {'students':>8} {'s/submission':>13} {'nbgrader alone':>15} {'ratio':>6}")
    for solution in solutions:
        baseline = Course([solution], root=work / f"plain-{solution.stem}", sandbox=False)
        runs = []
        for attempt in range(2):  # the first run also warms the disk cache; keep the faster one
            started = time.perf_counter()
            baseline.autograde(solution.stem, f"baseline{attempt}", solution)
            runs.append(time.perf_counter() - started)
        plain = min(runs)
        submissions = work / f"submissions-{solution.stem}"
        for i in range(args.students):
            (submissions / f"student{i:03d}").mkdir(parents=True)
            shutil.copy(solution, submissions / f"student{i:03d}" / solution.name)
        started = time.perf_counter()
        result = grade_folder(submissions, [solution], work / f"out-{solution.stem}")
        per = (time.perf_counter() - started) / args.students
        full = sum(g.score == g.max_score for g in result.grades)
        print(f"{solution.stem:28} {args.students:8d} {per:13.1f} {plain:15.1f} {per / plain:6.2f}"
              f"   ({full}/{args.students} full marks)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
