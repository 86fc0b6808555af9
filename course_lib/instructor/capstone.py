"""Grade the capstone's artifact: each student's adapter, scored in the sandbox on a test split only the grader has.

The hidden split is generated from a secret: a random string in a file the instructor keeps (by default
~/.config/course/capstone-secret, made on first use, readable by its owner alone). No kernel ever sees it: the
students' notebooks run in the sandbox without it, and the adapter evaluation is a separate sandboxed job that runs
no student code (the adapter is safetensors and a checked JSON config) and gets the hidden rows in its own box.
Results are kept per student under GRADING_DIR/capstone/, where `course leaderboard` reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from course_lib.capstone import rules, support
from course_lib.capstone.adapter_check import check_adapter
from course_lib.instructor.jobs import JobError, run_job
from course_lib.instructor.sandbox import Limits, readable_paths

ARTIFACT_CELL = "capstone_adapter"  # the grade id of notebook 08's cell whose points the adapter earns
EVALUATOR = "course_lib.capstone.evaluate"
JOB_TIMEOUT_S = 300  # the evaluation takes under a minute on 2 cores; this only stops a stuck one
DEFAULT_SECRET = Path.home() / ".config" / "course" / "capstone-secret"
REUSED = "the same adapter bytes were already scored on this split: that score is reused"
HIDDEN_ROWS = 120  # enough to tell 0.8 from 0.7 macro-F1; evaluated in under a minute on 2 cores


@dataclass
class ArtifactResult:
    """What one student's adapter scored on the hidden split, and the points it earned."""

    student: str
    name: str
    score: float | None  # None: no adapter was scored (missing, refused, or it failed to load)
    points: float
    max_points: float
    note: str
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    adapter_sha256: str = ""


def is_capstone(solution: Path) -> bool:
    """Whether a solution notebook is graded by its artifact: it has the artifact's grade cell."""
    notebook = nbformat.read(solution, as_version=4)
    return any(c.metadata.get("nbgrader", {}).get("grade_id") == ARTIFACT_CELL for c in notebook.cells)


def artifact_points(solution: Path) -> float:
    """The points the artifact cell of a capstone solution is worth."""
    notebook = nbformat.read(solution, as_version=4)
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == ARTIFACT_CELL:
            return float(cell.metadata["nbgrader"]["points"])
    raise ValueError(f"{solution} has no cell with grade id {ARTIFACT_CELL}")


def read_secret(path: Path | None = None, create: bool = True) -> str:
    """The instructor's secret that seeds the hidden split; made (owner-only) on first use when `create`."""
    path = Path(path) if path is not None else DEFAULT_SECRET
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as file:
            file.write(secrets.token_hex(16) + "\n")
    if not path.is_file():
        raise FileNotFoundError(f"capstone secret not found: {path}")
    inside = [p for p in readable_paths() if path.resolve().is_relative_to(p.resolve())]
    if inside:  # every kernel may read those folders: a secret there would hand students the hidden split
        raise ValueError(f"{path} lies inside {inside[0]}, which the students' sandboxed kernels can read: keep the "
                         "capstone secret elsewhere (the default is ~/.config/course/capstone-secret)")
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 16:
        raise ValueError(f"{path}: the capstone secret must have at least 16 characters (a guessable seed would "
                         "let anyone regenerate the hidden split)")
    return secret


def folder_sha256(folder: Path | None) -> str:
    """One digest of a folder's file names and bytes ('' for no folder): what a resumed run compares."""
    if folder is None or not Path(folder).is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        digest.update(path.name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()


class CapstoneGrader:
    """Scores adapters on the hidden split in the sandbox; caches the prompting baseline and the reference."""

    def __init__(self, out: Path, secret: str, reference: Path | None = None, limits: Limits | None = None,
                 n_test: int = HIDDEN_ROWS):
        self.folder = Path(out) / "capstone"
        (self.folder / "students").mkdir(parents=True, exist_ok=True)
        self.limits = limits or Limits()
        self.tickets = [asdict(t) for t in support.hidden_test(secret, n=n_test)]
        self.split_id = hashlib.sha256((secret + str(n_test)).encode()).hexdigest()[:16]  # names, never reveals
        self.baseline = self._cached("baseline", None)
        self.reference = self._cached("reference", Path(reference)) if reference is not None else None
        self._scored: dict[str, dict] | None = None  # adapter digest -> its metrics on this split, built on first use

    def _cached(self, role: str, adapter: Path | None) -> dict:
        """The score of the base model (role baseline) or of the instructor's adapter, evaluated once per split."""
        key = self._key(folder_sha256(adapter))
        path = self.folder / f"{role}.json"
        if path.is_file():
            kept = json.loads(path.read_text(encoding="utf-8"))
            if kept.get("key") == key:
                return kept
        if adapter is not None and (problems := check_adapter(adapter)):
            raise ValueError(f"the reference adapter {adapter} is refused: {'; '.join(problems)}")
        metrics = evaluate_adapter(adapter, self.tickets, self.limits)
        kept = {"key": key, "role": role, **metrics}
        path.write_text(json.dumps(kept, indent=1), encoding="utf-8")
        return kept

    def _key(self, digest: str) -> str:
        """What a kept baseline or reference score is filed under: this split and the adapter's bytes."""
        return f"{self.split_id}-{digest[:16]}"

    def cached(self, student: str, digest: str, max_points: float) -> ArtifactResult | None:
        """The result kept from an earlier run for this very adapter, split and baseline; None when there is none."""
        kept = self.folder / "students" / f"{student}.json"
        if not kept.is_file():
            return None
        earlier = json.loads(kept.read_text(encoding="utf-8"))
        if earlier.get("adapter_sha256") == digest and earlier.get("split_id") == self.split_id \
                and earlier.get("max_points") == max_points and earlier.get("baseline") == self.baseline["score"]:
            earlier.pop("split_id"), earlier.pop("baseline")
            return ArtifactResult(**earlier)
        return None

    def keep(self, result: ArtifactResult) -> None:
        """Keep a student's result for the leaderboard and for a resumed run."""
        kept = self.folder / "students" / f"{result.student}.json"
        kept.write_text(json.dumps({**asdict(result), "split_id": self.split_id, "baseline": self.baseline["score"]},
                                   indent=1), encoding="utf-8")
        if self._scored is not None and result.score is not None and result.adapter_sha256:
            self._scored.setdefault(result.adapter_sha256, result.metrics)

    def measured(self, digest: str) -> dict | None:
        """The metrics already measured on this split for an adapter of these very bytes (the reference's or another
        student's), or None: the evaluation is deterministic, so identical bytes are not evaluated twice."""
        if not digest:
            return None
        if self._scored is None:
            self._scored = {}
            for path in sorted((self.folder / "students").glob("*.json")):
                kept = json.loads(path.read_text(encoding="utf-8"))
                if kept.get("split_id") == self.split_id and kept.get("score") is not None and kept.get("metrics"):
                    self._scored.setdefault(kept["adapter_sha256"], kept["metrics"])
        if self.reference is not None and self.reference["key"] == self._key(digest):
            return {k: v for k, v in self.reference.items() if k not in ("key", "role")}
        return self._scored.get(digest)

    def grade(self, student: str, name: str, adapter: Path | None, max_points: float, found_note: str = ""
              ) -> ArtifactResult:
        """Check and score one student's adapter here; the result is also kept for the leaderboard."""
        digest = folder_sha256(adapter)
        result = self.cached(student, digest, max_points)
        if result is None:
            result = score_adapter(student, name, adapter, max_points, found_note, self.baseline["score"],
                                   self.tickets, self.limits, digest, self.measured(digest))
            self.keep(result)
        return result


def evaluate_adapter(adapter: Path | None, tickets: list[dict], limits: Limits) -> dict:
    """Score an adapter (None: the base model alone) on `tickets` in a sandboxed job; its metrics and seconds."""
    started = time.perf_counter()
    job = {"adapter": "adapter" if adapter is not None else None, "tickets": tickets}
    files = {"adapter": adapter} if adapter is not None else {}
    metrics = run_job(EVALUATOR, job, files, limits, timeout=JOB_TIMEOUT_S)
    if "error" in metrics:
        raise JobError(metrics["error"])
    return {**metrics, "seconds": round(time.perf_counter() - started, 2)}


def score_adapter(student: str, name: str, adapter: Path | None, max_points: float, found_note: str,
                  baseline: float, tickets: list[dict], limits: Limits, digest: str = "", measured: dict | None = None
                  ) -> ArtifactResult:
    """Check one student's adapter and score it on the hidden rows (or take `measured`, the metrics of an identical
    adapter already scored on them): points by the notebook's thresholds."""
    if adapter is None:
        why = found_note or f"no {rules.ADAPTER_FOLDER}/ folder in the submission"
        return ArtifactResult(student, name, None, 0.0, max_points, f"adapter: {why}: 0/{max_points:g}")
    problems = check_adapter(adapter)
    if problems:
        return ArtifactResult(student, name, None, 0.0, max_points,
                              f"adapter refused: {'; '.join(problems)}: 0/{max_points:g}", adapter_sha256=digest)
    if measured is not None:
        score = float(measured["score"])
        return ArtifactResult(student, name, score, rules.points(score, baseline, max_points), max_points,
                              f"{rules.explain(score, baseline, max_points)} ({REUSED})", measured, 0.0, digest)
    try:
        metrics = evaluate_adapter(adapter, tickets, limits)
    except JobError as error:
        return ArtifactResult(student, name, None, 0.0, max_points,
                              f"adapter could not be scored: {error}: 0/{max_points:g}", adapter_sha256=digest)
    score = float(metrics["score"])
    return ArtifactResult(student, name, score, rules.points(score, baseline, max_points), max_points,
                          rules.explain(score, baseline, max_points), metrics, metrics["seconds"], digest)
