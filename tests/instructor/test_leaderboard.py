"""The capstone's hand-in and leaderboard: the adapter folder found beside the notebook without trusting the export,
and the page and CSV built from what the grader kept. Pure file logic, no model."""

import csv
import json
import os
import zipfile

import pytest

from course_lib.capstone import rules
from course_lib.instructor import intake
from course_lib.instructor.leaderboard import read_rows, write_leaderboard

STEM = "08_capstone"
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


def _hand_in(folder, files):
    adapter = folder / rules.ADAPTER_FOLDER
    adapter.mkdir(parents=True)
    (folder / f"{STEM}.ipynb").write_text(NOTEBOOK)
    for name, data in files.items():
        (adapter / name).write_bytes(data)
    return adapter


def test_the_adapter_folder_is_copied_beside_the_notebook_from_folders_and_zips(tmp_path):
    export = tmp_path / "export"
    _hand_in(export / "ana", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * 10})
    nested = export / "bo" / "deep"
    _hand_in(nested, {"adapter_config.json": b"{}"})
    made = tmp_path / "zipped"
    _hand_in(made, {"adapter_config.json": b"{}"})
    with zipfile.ZipFile(export / "cy.zip", "w") as archive:
        for path in made.rglob("*"):
            archive.write(path, path.relative_to(made))
    (export / f"dee_{STEM}.ipynb").write_text(NOTEBOOK)  # a bare notebook: no folder can come with it
    found = {s.name: s for s in intake.open_submissions(export, [STEM], tmp_path / "into",
                                                         artifacts={STEM: rules.ADAPTER_FOLDER})}
    copy = found["ana"].artifacts[STEM]
    assert sorted(p.name for p in copy.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert copy.is_relative_to(tmp_path / "into") and (copy / "adapter_model.safetensors").read_bytes() == b"x" * 10
    assert (found["bo"].artifacts[STEM] / "adapter_config.json").is_file()
    assert (found["cy"].artifacts[STEM] / "adapter_config.json").is_file()
    assert STEM not in found["dee"].artifacts and "without a folder" in found["dee"].artifact_notes[STEM]


def test_links_special_files_and_oversize_files_in_the_folder_are_left_out_with_a_note(tmp_path, monkeypatch):
    export = tmp_path / "export"
    secret = tmp_path / "secret.txt"
    secret.write_text("the grader's file")
    adapter = _hand_in(export / "ana", {"adapter_config.json": b"{}", "big.safetensors": b"x" * 100})
    (adapter / "adapter_model.safetensors").symlink_to(secret)
    os.mkfifo(adapter / "pipe")
    (adapter / "sub").mkdir()
    monkeypatch.setattr(intake, "MAX_ARTIFACT_FILE_BYTES", 50)
    [ana] = intake.open_submissions(export, [STEM], tmp_path / "into", artifacts={STEM: rules.ADAPTER_FOLDER})
    assert sorted(p.name for p in ana.artifacts[STEM].iterdir()) == ["adapter_config.json"]
    note = ana.artifact_notes[STEM]
    for left_out in ("adapter_model.safetensors: a symbolic link", "pipe: a special file", "sub: a folder",
                     "big.safetensors: over"):
        assert left_out in note, note


def test_a_folder_that_is_a_link_is_not_followed(tmp_path):
    export = tmp_path / "export"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "adapter_config.json").write_text("{}")
    (export / "ana").mkdir(parents=True)
    (export / "ana" / f"{STEM}.ipynb").write_text(NOTEBOOK)
    (export / "ana" / rules.ADAPTER_FOLDER).symlink_to(elsewhere, target_is_directory=True)
    [ana] = intake.open_submissions(export, [STEM], tmp_path / "into", artifacts={STEM: rules.ADAPTER_FOLDER})
    assert STEM not in ana.artifacts
    assert "no capstone_adapter/ folder" in ana.artifact_notes[STEM] and "symbolic link" in ana.artifact_notes[STEM]


def _kept(grading, baseline=0.2, reference=0.9, students=()):
    folder = grading / "capstone"
    (folder / "students").mkdir(parents=True)
    (folder / "baseline.json").write_text(json.dumps({"score": baseline, "intent_f1": 0.3, "priority_f1": 0.1}))
    if reference is not None:
        (folder / "reference.json").write_text(json.dumps({"score": reference, "intent_f1": 0.95, "priority_f1": 0.85}))
    for student, name, score in students:
        metrics = {} if score is None else {"score": score, "intent_f1": score, "priority_f1": score}
        (folder / "students" / f"{student}.json").write_text(json.dumps({
            "student": student, "name": name, "score": score, "points": 0 if score is None else 3, "max_points": 6,
            "note": "adapter refused: pickle" if score is None else "fine", "metrics": metrics}))


def test_students_are_ranked_by_score_with_ties_sharing_a_rank_between_baseline_and_reference(tmp_path):
    _kept(tmp_path, students=[("ana", "Ana", 0.8), ("bo", "Bo", 0.95), ("cy", "Cy", 0.8), ("dee", "=Dee", None),
                              ("eve", "Eve", 0.1)])
    rows = read_rows(tmp_path)
    assert [(r.entry, r.kind) for r in rows] == [("Bo", "student"), ("reference", "reference"), ("Ana", "student"),
                                                 ("Cy", "student"), ("baseline", "baseline"), ("Eve", "student"),
                                                 ("=Dee", "student")]
    page, table = write_leaderboard(tmp_path)
    with table.open(encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["rank"], line["entry"]) for line in lines] == [
        ("1", "Bo"), ("", "reference"), ("2", "Ana"), ("2", "Cy"), ("", "baseline"), ("4", "Eve"), ("", "'=Dee")]
    text = page.read_text(encoding="utf-8")
    assert "default-src 'none'" in text and "not scored" in text and "<script" not in text
    assert f"beating the prompting baseline by {rules.BASELINE_MARGIN:g}" in text


def test_anonymized_pages_hide_names_and_notes_but_keep_stable_pseudonyms(tmp_path):
    _kept(tmp_path, reference=None, students=[("ana", "Ana <b>Silva</b>", 0.5)])
    first = [r.entry for r in read_rows(tmp_path, anonymize=True)]
    assert first == [r.entry for r in read_rows(tmp_path, anonymize=True)]
    assert "reference" not in first and any(e.startswith("student-") for e in first)
    page, _ = write_leaderboard(tmp_path, tmp_path / "public", anonymize=True)
    text = page.read_text(encoding="utf-8")
    assert "Silva" not in text and "fine" not in text


def test_a_folder_never_graded_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="course grade"):
        read_rows(tmp_path)


def test_the_leaderboard_command_writes_both_files_and_names_a_missing_folder(tmp_path, capsys):
    from course_lib.instructor.cli import main

    _kept(tmp_path / "grading", students=[("ana", "Ana", 0.5)])
    assert main(["leaderboard", str(tmp_path / "grading"), "--output", str(tmp_path / "out"), "--anonymize"]) == 0
    assert (tmp_path / "out" / "leaderboard.html").is_file() and (tmp_path / "out" / "leaderboard.csv").is_file()
    assert main(["leaderboard", str(tmp_path / "nothing")]) == 2
    assert "course grade" in capsys.readouterr().out


def test_a_grader_failure_on_one_adapter_costs_that_adapter_only(tmp_path, monkeypatch):
    """Fault injection: whatever breaks while scoring an adapter, the unit answers zero and the reason."""
    from course_lib.instructor import capstone, units
    from course_lib.instructor.grading import CellGrade, NotebookGrade
    from course_lib.instructor.sandbox import Limits

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(capstone, "score_adapter", broken)
    job = units.ArtifactJob({"adapter_config.json": b"{}"}, "", 6.0, 0.07, [], "abc")
    unit = units.Unit(STEM, b"", "ana", "Ana", None, {}, 10, Limits(), artifact=job)
    result = units.score_artifact(unit, tmp_path / "adapter")
    assert result.points == 0.0 and result.score is None
    assert "the grader failed on the adapter: OSError: disk full" in result.note
    grade = NotebookGrade(STEM, "ana", (CellGrade("test_x", 2.0, 2.0), CellGrade("capstone_adapter", 6.0, 6.0)))
    got = units.with_artifact(grade, result)
    assert {c.name: c.score for c in got.cells} == {"test_x": 2.0, "capstone_adapter": 0.0}
    assert result.note in got.note


def test_an_adapter_file_name_that_is_a_path_is_refused(tmp_path):
    from course_lib.instructor import units
    from course_lib.instructor.sandbox import Limits

    job = units.ArtifactJob({"../escape.json": b"{}"}, "", 6.0, 0.07, [], "abc")
    result = units.score_artifact(units.Unit(STEM, b"", "ana", "Ana", None, {}, 10, Limits(), artifact=job),
                                  tmp_path / "adapter")
    assert result.points == 0.0 and "not a plain file name" in result.note
    assert not (tmp_path / "escape.json").exists()
