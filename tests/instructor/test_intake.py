"""Reading an LMS export without trusting its shape: ids, entries, links, special files, zips, duplicate grade ids.
Pure file logic, no kernel (one test grades a repaired notebook for real and is marked `grading`)."""

import copy
import json
import os
import re
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib.instructor import intake
from course_lib.instructor.grading import Course
from course_lib.instructor.intake import (
    bare_student,
    find_notebook,
    open_submissions,
    repair_notebook,
    student_id,
    student_ids,
    unpack_zip,
)
from tests.instructor.tiny_assignment import FULL, STEM, TINY, graded_cell, released, solution

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NOTEBOOK = nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]))


def test_ids_are_unique_safe_and_readable_where_possible():
    names = ["李明", "王芳", "José Díaz", "Jose_Diaz", "José_Díaz", "Ana", "ana", "bob", "Ana Silva (ana@x.org)", ""]
    ids = student_ids({n: n for n in names})
    chosen = [ids[n][0] for n in names]
    assert all(SAFE_ID.match(i) for i in chosen), chosen
    assert len({i.lower() for i in chosen}) == len(names)  # unique even on a case-blind file system
    assert ids["bob"] == ("bob", "")  # a plain, unique name is its own id
    assert re.fullmatch(r"Ana_Silva_ana_x\.org-[0-9a-f]{8}", ids["Ana Silva (ana@x.org)"][0])  # lossy: hashed
    assert re.fullmatch(r"student-[0-9a-f]{8}", ids["李明"][0]) and "no Latin letters" in ids["李明"][1]
    for name in ("José Díaz", "Jose_Diaz", "José_Díaz"):  # one readable form, three students
        assert re.fullmatch(r"Jose_Diaz-[0-9a-f]{8}", ids[name][0])
        assert "name collision" in ids[name][1]
    assert "name collision" in ids["Ana"][1] and ids["Ana"][0] != ids["ana"][0]
    same = student_ids({"ana": "ana", "ana.zip": "ana"})  # a folder and a zip of one name: two entries, two ids
    assert same["ana"][0] != same["ana.zip"][0] and "name collision" in same["ana"][1]


def test_ids_are_stable_across_reruns_and_other_names():
    alone = student_ids({"José Díaz": "José Díaz", "bob": "bob"})
    crowd = student_ids({n: n for n in ["zoe", "José Díaz", "bob", "李明"]})
    assert alone["José Díaz"][0] == crowd["José Díaz"][0] == student_id("José Díaz")
    assert alone["bob"][0] == crowd["bob"][0] == "bob"


def test_a_name_crafted_to_equal_another_id_does_not_take_it():
    victim = student_id("José Díaz")
    ids = student_ids({"José Díaz": "José Díaz", victim: victim})
    assert ids["José Díaz"][0] != ids[victim][0]
    assert ids["José Díaz"][0] == victim  # the honest name keeps its id; the crafted one moves
    assert "collision" in ids[victim][1]


@pytest.mark.parametrize("filename, student", [
    ("tiny_assignment.ipynb", "tiny_assignment.ipynb"),
    ("tiny_assignment - Ana Silva.ipynb", "Ana Silva"),
    ("Ana_Silva_tiny_assignment.ipynb", "Ana_Silva"),
    ("ana_12345_TINY_ASSIGNMENT_late.IPYNB", "ana_12345 late"),
    ("scratch.ipynb", "scratch"),
])
def test_a_bare_notebook_belongs_to_the_rest_of_its_name(filename, student):
    assert bare_student(filename, ["tiny", "tiny_assignment"]) == student


def test_a_zip_that_escapes_its_folder_is_refused(tmp_path):
    for name in ("../../evil.py", "/etc/evil.py", "..\\..\\evil.py", "C:/evil.py"):
        archive = tmp_path / "mallory.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr(name, "print('pwned')")
        with pytest.raises(ValueError, match="unsafe entry"):
            unpack_zip(archive, tmp_path / "out")
        assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil.py").exists()


def test_zip_bombs_are_refused_by_ratio_and_by_count(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr(f"{STEM}.ipynb", b"\0" * 20 * 2**20)
    with pytest.raises(ValueError, match="zip bomb"):
        unpack_zip(bomb, tmp_path / "bomb")
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zipped:
        for i in range(intake.MAX_ZIP_MEMBERS + 1):
            zipped.writestr(f"f{i}", "")
    with pytest.raises(ValueError, match="entries"):
        unpack_zip(many, tmp_path / "many")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zipped:
        info = zipfile.ZipInfo(f"{STEM}.ipynb")
        info.external_attr = 0o120777 << 16
        zipped.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="unsafe entry"):
        unpack_zip(link, tmp_path / "link")


def test_the_shallowest_regular_copy_is_found_and_everything_else_skipped_with_a_note(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    for path in ("a/b/nb.ipynb", "a/nb.ipynb", ".ipynb_checkpoints/nb.ipynb"):
        (tmp_path / path).write_text("{}")
    (tmp_path / "nb.ipynb").symlink_to("/etc/passwd")
    (tmp_path / "a" / "b" / "c").mkdir()
    (tmp_path / "a" / "b" / "c" / "nb.ipynb").mkdir()
    os.mkfifo(tmp_path / "a" / "b" / "c" / "x")
    (tmp_path / "escape").symlink_to(Path("/etc"))  # a link to a folder is not walked into
    found, note = find_notebook(tmp_path, "nb")
    assert found == tmp_path / "a" / "nb.ipynb"
    assert "ignored: nb.ipynb is a symbolic link" in note and "a/b/c/nb.ipynb is a folder" in note
    assert "2 copies" in note
    assert find_notebook(tmp_path, "other") == (None, "found nb.ipynb but no other.ipynb")
    assert find_notebook(tmp_path, "passwd") == (None, "found nb.ipynb but no passwd.ipynb")


def _export(root: Path) -> Path:
    """One entry of every shape an export can hold, without a kernel needed to read them."""
    subs = root / "subs"
    for folder in ("李明", "José Díaz", "Jose_Diaz", ".hidden_student", "links", "special", "huge"):
        (subs / folder).mkdir(parents=True)
    for folder in ("李明", "José Díaz", "Jose_Diaz", ".hidden_student"):
        (subs / folder / f"{STEM}.ipynb").write_text(NOTEBOOK)
    (subs / "links" / f"{STEM}.ipynb").symlink_to("/etc/passwd")
    (subs / "links" / "deeper").mkdir()
    (subs / "links" / "deeper" / f"{STEM}.ipynb").symlink_to("/dev/zero")
    os.mkfifo(subs / "special" / f"{STEM}.ipynb")  # opening it for reading would wait forever
    with (subs / "huge" / f"{STEM}.ipynb").open("wb") as handle:
        handle.truncate(intake.MAX_NOTEBOOK_BYTES + 1)  # sparse: the size is all the grader may look at
    with zipfile.ZipFile(subs / "Upper.ZIP", "w") as zipped:
        zipped.writestr(f"export/{STEM}.ipynb", NOTEBOOK)
    with zipfile.ZipFile(subs / "dirzip.zip", "w") as zipped:
        zipped.writestr(f"{STEM}.ipynb/", "")
        zipped.writestr(f"{STEM}.ipynb/readme.txt", "not a notebook")
        zipped.writestr(f"work/{STEM}.ipynb", NOTEBOOK)
    (subs / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    (subs / f"{STEM} - Bare Student.ipynb").write_text(NOTEBOOK)
    (subs / "notes.pdf").write_bytes(b"%PDF-1.4")
    (subs / "linked_student").symlink_to(subs / "李明")
    (subs / ".DS_Store").write_bytes(b"\0")
    (subs / "__MACOSX").mkdir()
    (subs / "grading" / "intake").mkdir(parents=True)  # the output folder, put inside the export by mistake
    return subs


def test_every_entry_of_an_export_becomes_a_submission_with_notes(tmp_path):
    lines = []
    subs = _export(tmp_path)
    found = {s.name: s for s in open_submissions(subs, [STEM], subs / "grading" / "intake", lines.append,
                                                 skip=(subs / "grading",))}
    assert sorted(found) == sorted(["李明", "José Díaz", "Jose_Diaz", ".hidden_student", "links", "special", "huge",
                                    "Upper", "dirzip", "broken", "Bare Student", "notes.pdf", "linked_student"])
    assert any(".DS_Store" in line and "__MACOSX" in line for line in lines)
    assert any("José Díaz" in line and "name collision" in line for line in lines)
    assert len({s.student for s in found.values()}) == len(found)
    graded = {name for name, s in found.items() if STEM in s.notebooks}
    assert graded == {"李明", "José Díaz", "Jose_Diaz", ".hidden_student", "Upper", "dirzip", "Bare Student"}
    for submission in found.values():
        for copy_ in submission.notebooks.values():
            assert copy_.read_text() == NOTEBOOK and copy_.is_relative_to(subs / "grading" / "intake" / submission.student)
    notes = {name: s.notes[STEM] for name, s in found.items()}
    assert "symbolic link" in notes["links"] and "deeper/" in notes["links"]
    assert "special file" in notes["special"] and "over 50 MiB" in notes["huge"]
    assert f"ignored: {STEM}.ipynb is a folder" in notes["dirzip"]
    assert "broken.zip could not be unpacked: BadZipFile" in notes["broken"]
    assert "not a submission" in notes["notes.pdf"] and "symbolic link" in notes["linked_student"]
    assert "not in a folder" in notes["Bare Student"]
    assert "root:" not in json.dumps(notes) and "root:" not in "".join(lines)


def _duplicated(nb, grade_id, first_try):
    """`nb` with the cell `grade_id` copy-pasted above itself (as JupyterLab does: metadata and id kept)."""
    cell = graded_cell(nb, grade_id)
    older = copy.deepcopy(cell)
    older.source = first_try
    nb.cells.insert(nb.cells.index(cell), older)
    return nb


def test_a_duplicated_grade_id_keeps_the_last_copy_graded(tmp_path):
    from nbgrader.nbgraderformat import MetadataValidator

    release = tmp_path / "release.ipynb"
    release.write_text(released())
    nb = _duplicated(solution(), "add", "def add(a, b):\n    return 0  # first try")
    submitted = tmp_path / "in" / f"{STEM}.ipynb"
    submitted.parent.mkdir()
    submitted.write_text(json.dumps(nb))  # as saved: the pasted cell still has the same cell id too
    with pytest.raises(Exception, match="Duplicate grade id"):
        MetadataValidator().validate_nb(nbformat.read(submitted, as_version=4))
    path, notes = repair_notebook(submitted, release, tmp_path / "out")
    assert path == tmp_path / "out" / f"{STEM}.ipynb"
    assert notes == ["cell add appeared 2 times; graded the last copy"]
    repaired = nbformat.read(path, as_version=4)
    MetadataValidator().validate_nb(repaired)
    assert "return a + b" in graded_cell(repaired, "add").source
    older = next(c for c in repaired.cells if "first try" in c.source)
    assert "nbgrader" not in older.metadata and older.cell_type == "code"
    assert len({c.id for c in repaired.cells}) == len(repaired.cells)


def test_repair_leaves_a_sound_notebook_alone_and_refuses_what_is_not_one(tmp_path):
    release = tmp_path / "release.ipynb"
    release.write_text(released())
    sound = tmp_path / "sound" / f"{STEM}.ipynb"
    sound.parent.mkdir()
    sound.write_text(released())
    path, notes = repair_notebook(sound, release, tmp_path / "out")
    assert notes == [] and path.read_bytes() == sound.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {"not_json.ipynb": "{ not json", "a_list.ipynb": "[1, 2]", "deep.ipynb": "[" * 100_000,
             "bad_cells.ipynb": '{"cells": "x"}', "no_schema.ipynb": '{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "x"}]}'}
    for name, text in cases.items():
        (bad / name).write_text(text)
    (bad / "link.ipynb").symlink_to("/etc/passwd")
    (bad / "zero.ipynb").symlink_to("/dev/zero")
    os.mkfifo(bad / "fifo.ipynb")
    for name in [*cases, "link.ipynb", "zero.ipynb", "fifo.ipynb"]:
        path, notes = repair_notebook(bad / name, release, tmp_path / "out")
        assert path is None and len(notes) == 1 and "not a valid notebook" in notes[0], (name, notes)
        assert "root:" not in notes[0]
    assert "symbolic link" in repair_notebook(bad / "link.ipynb", release, tmp_path / "out")[1][0]


@pytest.mark.grading
def test_a_repaired_notebook_gets_full_marks(tmp_path):
    nb = _duplicated(solution(), "is_even", "def is_even(n):\n    return True  # first try")
    submitted = tmp_path / f"{STEM}.ipynb"
    submitted.write_text(json.dumps(nb))
    course = Course([TINY], root=tmp_path / "course")
    path, notes = repair_notebook(submitted, course.student_notebook(STEM), tmp_path / "repaired")
    assert notes == ["cell is_even appeared 2 times; graded the last copy"]
    assert course.autograde(STEM, "pasted_twice", path).by_cell() == FULL
