"""Turn an LMS export into submissions the grader can trust: every entry gets a unique id and safe copies.

Rules (the README's "For instructors" section sums them up):

- Entries: a folder is one student; a `.zip` (any case) is one student named by the file without `.zip`; top-level
  notebook files (`.ipynb`, any case) are grouped by the student part of their name (below). OS junk
  (`.DS_Store`, `__MACOSX`, `Thumbs.db`, `desktop.ini`) is skipped and said so; anything else (a symbolic link, a
  FIFO, a `.pdf`) is "not a submission" and still gets its zero rows. Dot-names are ordinary entries.
- Bare notebook files: the longest course notebook name found in the file name (ignoring case) says which notebook
  it is; what is left, trimmed of spaces, `_`, `-` and `.`, is the student (`tiny - Ana.ipynb`, `Ana_tiny.ipynb`
  -> `Ana`). A file named exactly like a notebook names no student: it is its own student, named by the file.
- Student ids: the name folded to ASCII (accents dropped) with every run of other characters made `_`. A name that
  folds to itself and shares its folded form with no other entry (ignoring case) is its own id; any other name
  gets `-` and 8 hex digits of the SHA-256 of its exact entry name (for bare notebooks: their file names joined by
  `/`). Of ids that still clash (a crafted name), the plainer ones take 8, then 16, then 64 hex digits. So an id depends only on the name and,
  for a collision, on the set of names: reruns give the same ids.
- Files: links are never followed and special files never opened; a file or folder named like the notebook that is
  not a regular file is skipped with a note; a notebook over MAX_NOTEBOOK_BYTES is refused unread. The notebook
  graded is the shallowest regular copy, copied into the grading area (the student's folder itself is not copied).
- Zips: no absolute paths, no `..`, no links, no encryption, at most MAX_ZIP_MEMBERS entries and
  MAX_UNZIPPED_BYTES in all, no entry over 1 MiB packed more than MAX_ZIP_RATIO times; a zip that breaks a rule
  or cannot be read is a note for that student, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat

MAX_NOTEBOOK_BYTES = 50 * 2**20
MAX_ARTIFACT_FILE_BYTES = 64 * 2**20  # a file of a handed-in folder (the capstone's adapter); larger ones are refused
MAX_UNZIPPED_BYTES = 200 * 2**20
MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_RATIO = 200  # deflate tops out near 1000:1; notebooks pack 3-20:1, pages of repeated output more
RATIO_FLOOR = 2**20  # a small entry may pack as well as it likes: it cannot fill a disk
JUNK = {".ds_store", "__macosx", "thumbs.db", "desktop.ini"}
SKIPPED_INSIDE = {"__MACOSX", ".ipynb_checkpoints"}
MAX_READABLE = 64
SEPARATORS = " _-."


@dataclass(frozen=True)
class Submission:
    """One entry of the export, made safe to grade: who it is and our copies of their notebooks."""

    name: str  # as the export spells it, printable
    student: str  # unique, safe as a folder name
    notebooks: dict[str, Path]  # notebook stem -> our copy, for the notebooks found
    notes: dict[str, str]  # notebook stem -> what intake saw (the whole entry's notes first)
    artifacts: dict[str, Path] = field(default_factory=dict)  # stem -> our copy of the folder it hands in beside it
    artifact_notes: dict[str, str] = field(default_factory=dict)  # stem -> why no folder (or what was left out)


@dataclass
class _Entry:
    key: str  # exact entry name(s): unique in the export, hashed into the id
    name: str
    kind: str  # folder, zip, bare, other
    paths: list[Path]
    notes: list[str]


def printable(name: str) -> str:
    """A file name as text that prints and encodes: undecodable bytes and control characters escaped."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def readable(name: str) -> str:
    """The ASCII form of a name: accents dropped, runs of anything but letters, digits, `_`, `.`, `-` made `_`."""
    folded = unicodedata.normalize("NFKD", printable(name)).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", folded).strip("._-")[:MAX_READABLE].rstrip("._-")


def student_ids(names: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Unique, rerun-stable ids for entries (exact entry name -> student name): key -> (id, note on a collision)."""
    base = {key: readable(name) or "student" for key, name in names.items()}
    groups: dict[str, list[str]] = {}
    for key in names:
        groups.setdefault(base[key].lower(), []).append(key)
    # 0: the readable form itself; 1, 2, 3: with 8, 16, 64 hex digits of the exact name's hash
    level = {key: 0 if base[key] == names[key] and len(groups[base[key].lower()]) == 1 else 1 for key in names}
    clashed: set[str] = set()
    while True:
        ids = {key: _with_hash(base[key], key, level[key]) for key in names}
        owners: dict[str, list[str]] = {}
        for key, found in ids.items():
            owners.setdefault(found.lower(), []).append(key)  # lower: a case-blind file system would merge them
        # of an id wanted twice, the plainer forms move on: a name crafted to equal a hashed id cannot take it
        bump = [k for keys in owners.values() if len(keys) > 1
                for k in keys if level[k] == min(level[o] for o in keys) and level[k] < 3]
        if not bump:
            break
        for key in bump:
            level[key] += 1
            clashed.add(key)
    notes = {}
    for key in names:
        group = groups[base[key].lower()]
        others = [printable(names[k]) for k in group if k != key]
        if readable(names[key]) == "":
            note = f"the name has no Latin letters: its id is {ids[key]}"
        elif others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            note = f"name collision with {shown} (all read as {base[key]}): its id is {ids[key]}"
        elif key in clashed:
            note = f"id collision: its id is {ids[key]}"
        else:
            note = ""
        notes[key] = (ids[key], note)
    return notes


def _with_hash(base: str, key: str, level: int) -> str:
    if level == 0:
        return base
    return f"{base}-{hashlib.sha256(os.fsencode(key)).hexdigest()[:(8, 16, 64)[level - 1]]}"


def student_id(name: str) -> str:
    """The id of a student whose name collides with no other's (see `student_ids`)."""
    return student_ids({name: name})[name][0]


def open_submissions(submissions: Path, stems: list[str], into: Path,
                     progress: Callable[[str], None] = lambda line: None,
                     skip: tuple[Path, ...] = (), artifacts: dict[str, str] | None = None) -> list[Submission]:
    """Every entry of `submissions` as a Submission; our copies of their notebooks go under `into`, and of the
    folders `artifacts` names (stem -> folder name, handed in beside that notebook) too."""
    entries, junk = _scan(Path(submissions), stems, skip)
    if junk:
        progress(f"ignored {', '.join(junk)}: operating-system files, not submissions")
    ids = student_ids({e.key: e.name for e in entries})
    shutil.rmtree(into, ignore_errors=True)  # copies of an earlier run may belong to other ids now
    found = []
    for entry in entries:
        student, collision = ids[entry.key]
        if collision:
            progress(f"{printable(entry.name)}: {collision}")
        notes = [collision, *entry.notes] if collision else list(entry.notes)
        try:
            notebooks, per_stem, folders, folder_notes = _gather(entry, stems, Path(into) / student, artifacts or {})
        except Exception as error:  # whatever the entry holds, it must cost only its own grade
            notebooks, per_stem = {}, {stem: f"could not be read: {describe(error)}" for stem in stems}
            folders, folder_notes = {}, {stem: f"could not be read: {describe(error)}" for stem in artifacts or {}}
        if entry.kind == "other":
            progress(f"{printable(entry.name)}: {entry.notes[0]}")
        found.append(Submission(printable(entry.name), student, notebooks,
                                {stem: "; ".join(filter(None, [*notes, per_stem.get(stem, "")])) for stem in stems},
                                folders, folder_notes))
    return found


def describe(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _scan(submissions: Path, stems: list[str], skip: tuple[Path, ...]) -> tuple[list[_Entry], list[str]]:
    """Sort the export's entries into folders, zips, groups of bare notebooks and things that are not submissions."""
    entries, junk, bare = [], [], {}
    skipped = {os.path.realpath(p) for p in skip}
    for item in sorted(os.scandir(submissions), key=lambda e: e.name):
        path, name = Path(item.path), item.name
        if name.lower() in JUNK:
            junk.append(printable(name))
            continue
        if os.path.realpath(path) in skipped:
            continue  # the output folder, put inside the export
        mode = os.lstat(path).st_mode
        lower = name.lower()
        if stat.S_ISLNK(mode):
            entries.append(_Entry(name, name, "other", [], ["not a submission: a symbolic link (links are not followed)"]))
        elif stat.S_ISDIR(mode):
            entries.append(_Entry(name, name, "folder", [path], []))
        elif stat.S_ISREG(mode) and lower.endswith(".zip"):
            entries.append(_Entry(name, name[:-4] or name, "zip", [path], []))
        elif stat.S_ISREG(mode) and lower.endswith(".ipynb"):
            bare.setdefault(bare_student(name, stems), []).append(path)
        elif stat.S_ISREG(mode):
            entries.append(_Entry(name, name, "other", [], [
                "not a submission: a file that is not a folder, a .zip or a notebook"]))
        else:
            entries.append(_Entry(name, name, "other", [], ["not a submission: a special file (FIFO, socket, device)"]))
    for student, paths in bare.items():
        files = sorted(p.name for p in paths)
        entries.append(_Entry("/".join(files), student, "bare", sorted(paths),
                              [f"handed in as {', '.join(printable(f) for f in files)}, not in a folder"]))
    return sorted(entries, key=lambda e: e.key), junk


def bare_student(filename: str, stems: list[str]) -> str:
    """The student a top-level notebook file belongs to: its name without the course notebook's name in it."""
    base = filename[: -len(".ipynb")]
    matches = [m for stem in stems if (m := re.search(re.escape(stem), base, re.IGNORECASE))]
    if not matches:
        return base or filename
    match = max(matches, key=lambda m: m.end() - m.start())
    parts = [base[: match.start()].strip(SEPARATORS), base[match.end():].strip(SEPARATORS)]
    return " ".join(filter(None, parts)) or filename


def bare_stem(filename: str, stems: list[str]) -> str | None:
    """Which course notebook a top-level notebook file is (the longest notebook name in its name), if any."""
    found = [stem for stem in stems if re.search(re.escape(stem), filename[: -len(".ipynb")], re.IGNORECASE)]
    return max(found, key=len) if found else None


def _gather(entry: _Entry, stems: list[str], into: Path, artifacts: dict[str, str]
            ) -> tuple[dict[str, Path], dict[str, str], dict[str, Path], dict[str, str]]:
    """Copy the entry's notebooks and handed-in folders into `into`: stem -> copy and stem -> note, for each."""
    notebooks: dict[str, Path] = {}
    notes: dict[str, str] = {}
    folders: dict[str, Path] = {}
    folder_notes = {stem: f"handed in without a folder, so no {name}/ beside the notebook"
                    for stem, name in artifacts.items()}
    if entry.kind == "other":
        return notebooks, notes, folders, folder_notes
    if entry.kind == "bare":
        for stem in stems:
            mine = [p for p in entry.paths if bare_stem(p.name, stems) == stem]
            if not mine:
                others = [printable(p.name) for p in entry.paths if bare_stem(p.name, stems) is None]
                notes[stem] = f"found {', '.join(others)} but no {stem}.ipynb" if others else ""
                continue
            extra = f"{len(mine)} files for {stem}; graded {printable(mine[0].name)}" if len(mine) > 1 else ""
            notes[stem] = _take(mine[0], into / f"{stem}.ipynb", notebooks, stem, [extra])
        return notebooks, notes, folders, folder_notes
    with tempfile.TemporaryDirectory(prefix="unzip-") as scratch:
        folder = entry.paths[0]
        if entry.kind == "zip":
            try:
                folder = unpack_zip(folder, Path(scratch) / "files")
            except Exception as error:  # a broken or hostile zip: a note for this student only
                problem = f"{printable(entry.paths[0].name)} could not be unpacked: {_reason(error)}"
                return notebooks, {stem: problem for stem in stems}, folders, {stem: problem for stem in artifacts}
        for stem in stems:
            path, found = find_notebook(folder, stem)
            notes[stem] = _take(path, into / f"{stem}.ipynb", notebooks, stem, [found]) if path else found
        for stem, name in artifacts.items():
            source, found = find_folder(folder, name)
            folder_notes[stem] = found
            if source is not None:
                folders[stem], folder_notes[stem] = copy_folder(source, into / f"{stem}.{name}", found)
    return notebooks, notes, folders, folder_notes


def find_folder(folder: Path, name: str) -> tuple[Path | None, str]:
    """The shallowest real folder called `name` under `folder`, links never followed, and a note on what was not."""
    found, skipped = [], []
    for parent, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_INSIDE)
        for entry in sorted(set(dirs) | set(files)):
            if entry == name:
                path = Path(parent) / entry
                kind = _kind(os.lstat(path).st_mode)
                (found if kind == "a folder" else skipped).append(path)
    notes = [f"ignored {printable(str(p.relative_to(folder)))}: {_kind(os.lstat(p).st_mode)}" for p in skipped]
    if not found:
        return None, "; ".join([f"no {name}/ folder in the submission", *notes])
    found.sort(key=lambda p: (len(p.parts), str(p)))
    if len(found) > 1:
        notes.append(f"{len(found)} folders named {name}; took {printable(str(found[0].relative_to(folder)))}")
    return found[0], "; ".join(notes)


def copy_folder(source: Path, target: Path, note: str = "") -> tuple[Path, str]:
    """Copy the regular files directly inside `source` (no links, none over MAX_ARTIFACT_FILE_BYTES) into `target`;
    the copy and a note on what was left out."""
    notes = [note] if note else []
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            notes.append(f"ignored {printable(source.name)}/{printable(entry.name)}: a folder (only the files "
                         "directly inside are taken)")
            continue
        try:
            data = read_regular(Path(entry.path), cap=MAX_ARTIFACT_FILE_BYTES)
        except (ValueError, OSError) as error:
            reason = str(error) if isinstance(error, ValueError) else describe(error)
            notes.append(f"ignored {printable(source.name)}/{printable(entry.name)}: {reason}")
            continue
        (target / entry.name).write_bytes(data)
    return target, "; ".join(notes)


def _take(source: Path, target: Path, notebooks: dict[str, Path], stem: str, notes: list[str]) -> str:
    problem = copy_notebook(source, target)
    if problem:
        notes.append(f"{printable(source.name)} refused: {problem}")
    else:
        notebooks[stem] = target
    return "; ".join(filter(None, notes))


def _reason(error: BaseException) -> str:
    return str(error) if isinstance(error, ValueError) and str(error) else describe(error)


def find_notebook(folder: Path, stem: str) -> tuple[Path | None, str]:
    """The shallowest regular file `stem`.ipynb under `folder`, links never followed, and a note on what was skipped."""
    wanted = f"{stem}.ipynb"
    regular, skipped, others, unreadable = [], [], set(), []
    for parent, dirs, files in os.walk(folder, onerror=unreadable.append, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_INSIDE)
        for name in sorted(set(dirs) | set(files)):
            path = Path(parent) / name
            if name == wanted:
                kind = _kind(os.lstat(path).st_mode)
                if kind == "file" and os.lstat(path).st_size > MAX_NOTEBOOK_BYTES:
                    skipped.append(f"{printable(str(path.relative_to(folder)))} is over "
                                   f"{MAX_NOTEBOOK_BYTES // 2**20} MiB")
                elif kind == "file":
                    regular.append(path)
                else:
                    skipped.append(f"{printable(str(path.relative_to(folder)))} is {kind}")
            elif name.lower().endswith(".ipynb") and name in files:
                others.add(printable(name))
    notes = [f"ignored: {s}" for s in skipped] + [f"could not read {printable(e.filename or '')}" for e in unreadable]
    regular.sort(key=lambda p: (len(p.parts), str(p)))
    if len(regular) > 1:
        notes.append(f"{len(regular)} copies of {wanted}; graded {printable(str(regular[0].relative_to(folder)))}")
    if not regular and others:
        notes.append(f"found {', '.join(sorted(others))} but no {wanted}")
    return (regular[0] if regular else None), "; ".join(notes)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "a symbolic link (links are not followed)"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file (FIFO, socket or device)"


def read_regular(path: Path, cap: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """A regular file's bytes, refusing links (symbolic or hard), special files and files over `cap` unread."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: a link fails to open at all
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if os.path.islink(path):
            raise ValueError("a symbolic link (links are not followed)") from error
        raise
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(_kind(info.st_mode))
        if info.st_nlink > 1:  # a hard link (from an unpacked tar, say) may point at any file of the machine
            raise ValueError("a hard link (links are not followed)")
        if info.st_size > cap:
            raise ValueError(f"over {cap // 2**20} MiB")
        data = file.read(cap + 1)
    if len(data) > cap:  # it grew while we read
        raise ValueError(f"over {cap // 2**20} MiB")
    return data


def copy_notebook(source: Path, target: Path) -> str:
    """Copy one file into the grading area without following links; why it was refused, or ''."""
    try:
        data = read_regular(source)
    except (ValueError, OSError) as error:
        return str(error) if isinstance(error, ValueError) else describe(error)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return ""


def unpack_zip(archive: Path, into: Path) -> Path:
    """Extract a student's .zip into a new folder, refusing the whole zip if any entry breaks a rule (ValueError)."""
    with open(read_path(archive), "rb") as handle, zipfile.ZipFile(handle) as zipped:
        members = zipped.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise ValueError(f"more than {MAX_ZIP_MEMBERS} entries")
        if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
            raise ValueError(f"unpacks to more than {MAX_UNZIPPED_BYTES // 2**20} MiB")
        for member in members:
            parts = _member_parts(member)
            kind = (member.external_attr >> 16) & 0o170000
            if parts is None or kind == stat.S_IFLNK:
                raise ValueError(f"unsafe entry {member.filename!r}")
            if member.flag_bits & 0x1:
                raise ValueError(f"entry {member.filename!r} is encrypted")
            if member.file_size > RATIO_FLOOR and member.file_size > MAX_ZIP_RATIO * max(member.compress_size, 1):
                raise ValueError(f"entry {member.filename!r} is packed {member.file_size // max(member.compress_size, 1)}"
                                 f" times smaller than it unpacks: a zip bomb?")
        into.mkdir(parents=True)
        for member in members:
            parts = _member_parts(member)
            if not parts:
                continue
            target = into.joinpath(*parts)
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract(zipped, member, target)
    return into


def read_path(path: Path) -> Path:
    """`path` itself when it is a regular file, not a link (ValueError otherwise)."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(_kind(mode))
    return path


def _member_parts(member: zipfile.ZipInfo) -> list[str] | None:
    """The path parts of a zip entry, or None when it is absolute or climbs out (`\\` counts as a separator too)."""
    name = member.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return None if ".." in parts else parts


def _extract(zipped: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    # O_EXCL: a second entry of the same name is refused, not written over the first
    handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    written = 0
    with os.fdopen(handle, "wb") as out, zipped.open(member) as source:
        while chunk := source.read(2**20):
            written += len(chunk)
            if written > member.file_size:  # it claims less than it holds
                raise ValueError(f"entry {member.filename!r} is larger than it says")
            out.write(chunk)


def repair_notebook(path: Path, released: Path, into: Path) -> tuple[Path | None, list[str]]:
    """Write `into`/<name> with each duplicated nbgrader grade id kept on its last cell only; (copy, notes).

    A cell copy-pasted in JupyterLab keeps its nbgrader metadata, and nbgrader refuses a notebook with a grade id
    twice. The last copy is the one graded (what the student most likely edited last); the others lose their
    nbgrader metadata and run as ordinary cells. An unreadable notebook gives (None, [why]); links are not followed.
    """
    try:
        text = read_regular(Path(path)).decode("utf-8")
        notebook = json.loads(text)
        cells = notebook.get("cells", [])  # none: an old format nbformat upgrades; it has no grade ids to repair
        if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
            raise ValueError("its cells are not a list of cells")
    except (ValueError, OSError, AttributeError, RecursionError) as error:
        return None, [f"{printable(Path(path).name)} is not a valid notebook: {_reason(error)}"]
    known = {_grade_id(c) for c in nbformat.read(released, as_version=4).cells} - {None}
    copies: dict[str, list[dict]] = {}
    for cell in cells:
        if (grade_id := _grade_id(cell)) is not None:
            copies.setdefault(grade_id, []).append(cell)
    notes = []
    for grade_id, same in copies.items():
        if len(same) < 2:
            continue
        for cell in same[:-1]:
            del cell["metadata"]["nbgrader"]
        what = "cell" if grade_id in known else "cell (not in the released notebook)"
        notes.append(f"{what} {grade_id} appeared {len(same)} times; graded the last copy")
    if notes:
        _unique_cell_ids(cells)
        text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    try:
        nbformat.validate(nbformat.reads(text, as_version=4))
    except Exception as error:  # schema errors of every kind mean the same: not a notebook nbgrader can grade
        return None, notes + [f"{printable(Path(path).name)} is not a valid notebook: {describe(error)}"]
    target = Path(into) / Path(path).name
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(target.name + ".tmp")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(target)  # replace, not write through: whatever sat at `target` (a link too) is swapped out
    return target, notes


def _grade_id(cell: object) -> str | None:
    """The grade id nbgrader checks for duplicates: of cells that are graded, a solution or locked."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    nbgrader = meta.get("nbgrader") if isinstance(meta, dict) else None
    if not isinstance(nbgrader, dict) or not any(nbgrader.get(k) for k in ("grade", "solution", "locked")):
        return None
    grade_id = nbgrader.get("grade_id")
    return grade_id if isinstance(grade_id, str) else None


def _unique_cell_ids(cells: list[dict]) -> None:
    """Give every cell but the last of each repeated cell id a new one (a pasted cell may keep its id)."""
    seen = {c.get("id") for c in cells}
    last = {c.get("id"): i for i, c in enumerate(cells)}
    for index, cell in enumerate(cells):
        if isinstance(cell.get("id"), str) and last[cell["id"]] != index:
            fresh = next(f"{cell['id'][:50]}-copy{n}" for n in range(1, len(cells) + 2)
                         if f"{cell['id'][:50]}-copy{n}" not in seen)
            seen.add(fresh)
            cell["id"] = fresh
