"""The course's one data path: notebook 01 validates, splits and writes the task's chat rows; 03–06 train on them.

The files are JSONL, one per split, in `data_dir()` ($COURSE_DATA, else ~/course_data), with a manifest naming
the seed and the rows' fingerprint. A notebook opened before 01 was run (or graded alone, in its own sandbox) builds
the same rows the same way and says so in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from course_lib.core import tasks
from course_lib.data.pipeline import read_jsonl, write_jsonl
from course_lib.data.splits import assert_no_leakage
from course_lib.data.validate import validate_rows

SIZES = {"train": 400, "validation": 50, "test": 100}
MANIFEST = "manifest.json"


def data_dir() -> Path:
    """Where notebook 01 writes the course data and 03–06 read it."""
    return Path(os.environ.get("COURSE_DATA") or Path.home() / "course_data")


def build(seed: int = 0) -> dict[str, list[dict]]:
    """The course task as validated chat rows, split with no prompt shared between splits."""
    examples = tasks.make_splits(SIZES["train"], SIZES["validation"], SIZES["test"], seed=seed)
    splits = {}
    for name, part in examples.items():
        rows = [{"messages": tasks.to_messages(e)} for e in part]
        splits[name] = validate_rows(rows, on_error="raise")[0]
    assert_no_leakage(splits)
    return splits


def write(splits: dict[str, list[dict]], seed: int = 0, folder: str | Path | None = None) -> Path:
    """Write the splits as JSONL with a manifest; returns the folder."""
    folder = Path(folder) if folder is not None else data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, rows in splits.items():  # each file whole or not at all; the manifest last, so a reader never mixes
        partial = write_jsonl(rows, folder / f".{name}.jsonl.partial")
        digests[name] = _digest(partial)
        os.replace(partial, folder / f"{name}.jsonl")
    manifest = {"seed": seed, "rows": {name: len(rows) for name, rows in splits.items()}, "sha256": digests}
    partial = folder / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(partial, folder / MANIFEST)
    return folder


def read(folder: str | Path | None = None, seed: int = 0, quiet: bool = False) -> dict[str, list[dict]]:
    """The chat rows notebook 01 wrote; where it has not run here, the same rows built now (one line says so)."""
    folder = Path(folder) if folder is not None else data_dir()
    manifest = folder / MANIFEST
    if manifest.is_file():
        written = json.loads(manifest.read_text(encoding="utf-8"))
        for name in written["rows"]:
            if _digest(folder / f"{name}.jsonl") != written["sha256"][name]:
                raise ValueError(f"{folder / (name + '.jsonl')} changed after notebook 01 wrote it; run 01's last "
                                 "section again")
        return {name: read_jsonl(folder / f"{name}.jsonl") for name in written["rows"]}
    if not quiet:
        print(f"course data: notebook 01 has not written {folder} here, so the same rows were built now")
    return build(seed)


def _digest(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run notebook 01's last section again")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_example(row: dict) -> tasks.Example:
    """A chat row of the course task back as an Example: the user's text and the assistant's JSON answer."""
    messages = row["messages"]
    user = next(m["content"] for m in messages if m["role"] == "user")
    answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
    return tasks.Example(text=user, answer=json.loads(answer))


def splits(n_train: int, n_val: int, n_test: int, folder: str | Path | None = None,
           seed: int = 0) -> dict[str, list[tasks.Example]]:
    """Train/validation/test examples from the course data, `tasks.make_splits`' shape: what 03–06 train on."""
    rows = read(folder, seed)
    sizes = {"train": n_train, "validation": n_val, "test": n_test}
    return {name: [to_example(r) for r in rows[name][:n]] for name, n in sizes.items()}
