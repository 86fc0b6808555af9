"""The class report and the LMS imports, from a results file written the way `course grade` writes it."""

import csv
import json
from pathlib import Path

import pytest

from course_lib.instructor.cli import main
from course_lib.instructor.lms import read_roster, write_canvas, write_moodle
from course_lib.instructor.report import failure_messages, flags, read_results, report_page, write_report

HOSTILE = "<script>alert(1)</script>"


def _grade(student, notebook, scores, note="", status="graded", seconds=12.5, name=None, messages=None):
    cells = [{"name": n, "score": s, "max_score": m, "message": (messages or {}).get(n, "" if s >= m else "failed")}
             for n, (s, m) in scores.items()]
    return {"student": student, "name": name or student, "notebook": notebook, "status": status, "seconds": seconds,
            "note": note, "score": sum(c["score"] for c in cells), "max_score": sum(c["max_score"] for c in cells),
            "cells": cells}


def _class() -> list[dict]:
    wrong = {"test_is_even": "AssertionError: is_even(3) should be False"}
    return [
        _grade("ana", "01_data", {"test_a": (1, 1), "test_is_even": (2, 2)}, name="Ana Pérez"),
        _grade("ben", "01_data", {"test_a": (1, 1), "test_is_even": (0, 2)}, messages=wrong),
        _grade("cho", "01_data", {"test_a": (0, 1), "test_is_even": (0, 2)}, messages=wrong,
               note="test cell test_is_even was edited and was restored"),
        _grade("dee", "01_data", {"test_a": (0, 1), "test_is_even": (0, 2)}, note="no 01_data.ipynb in the submission",
               seconds=0.0),
        _grade("eve", "01_data", {"test_a": (0, 1), "test_is_even": (0, 2)}, status="failed",
               note="the grader failed on this notebook: OSError: disk full"),
        _grade("ana", "02_lora", {"test_b": (3, 3)}, name="Ana Pérez", seconds=40.0),
        _grade("ben", "02_lora", {"test_b": (0, 3)}, messages={"test_b": HOSTILE}, name=f"Ben {HOSTILE}"),
    ]


def test_flags_name_the_reason_and_leave_a_missing_notebook_out():
    found = {(f.student, f.notebook): f.reason for f in flags(_class())}
    assert found == {("cho", "01_data"): "test cell test_is_even was edited and was restored",
                     ("eve", "01_data"): "the grader failed on this notebook: OSError: disk full"}


def test_failure_messages_are_counted_per_exercise():
    counts = failure_messages(_class())
    assert counts[("01_data", "test_is_even")] == {"AssertionError: is_even(3) should be False": 2, "failed": 1}
    assert counts[("01_data", "test_a")] == {"failed": 2}  # dee handed nothing in: not a failure message
    assert counts[("02_lora", "test_b")] == {HOSTILE: 1}


def test_the_page_has_every_part_escaped_text_and_inline_plots(tmp_path):
    page = report_page(_class())
    for heading in ("Notebooks", "Score distribution per notebook", "Exercises", "Most frequent failure messages",
                    "Flagged for a look by hand (2)", "Grading time", "Students"):
        assert f"{heading}</h2>" in page, heading
    assert page.count("<svg") == 3 and "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "2× AssertionError: is_even(3) should be False" in page
    assert "default-src 'none'" in page
    assert "Ana Pérez (ana)" in page and "6 / 6" in page  # ana's total of all notebooks


def test_read_results_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `course grade`"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(ValueError, match="not a results file"):
        read_results(tmp_path)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_canvas_import_has_its_columns_points_possible_and_one_row_per_student(tmp_path):
    export = write_canvas(_class(), tmp_path / "canvas.csv")
    rows = _rows(export.path)
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "01_data", "02_lora"]
    assert rows[1] == ["Points Possible", "", "", "", "", "3", "3"]
    assert rows[2] == ["Ana Pérez", "", "ana", "", "", "3", "3"]
    assert ["cho", "", "cho", "", "", "0", ""] in rows  # no 02_lora row for cho: an empty cell, not a zero
    assert export.rows == 5 and not export.unmatched


def test_a_roster_carries_the_lms_ids_and_lists_who_it_lacks(tmp_path):
    roster = tmp_path / "export.csv"
    roster.write_text("\ufeffStudent,ID,SIS User ID,SIS Login ID,Section,Quiz 1 (123)\n"
                      "    Points Possible,,,,,10\n"
                      "\"Perez, Ana\",4711,S-1,ana@uni.example,Sec A,8\n"
                      "Ben,4712,S-2,ben@uni.example,Sec A,7\n"
                      "Cho Lee,4713,cho,cho@uni.example,Sec B,9\n", encoding="utf-8")
    people = read_roster(roster)
    canvas = write_canvas(_class(), tmp_path / "canvas.csv", people)
    rows = _rows(canvas.path)
    assert ["Perez, Ana", "4711", "S-1", "ana@uni.example", "Sec A", "3", "3"] in rows  # by name, either order
    assert ["Cho Lee", "4713", "cho", "cho@uni.example", "Sec B", "0", ""] in rows  # by id
    assert canvas.unmatched == ["ben", "dee", "eve"]  # ben's name in the export is "Ben <script>..."
    moodle = write_moodle(_class(), tmp_path / "moodle.csv", people)
    assert moodle.unmatched == canvas.unmatched


def test_moodle_import_has_name_id_and_email_columns(tmp_path):
    rows = _rows(write_moodle(_class(), tmp_path / "moodle.csv").path)
    assert rows[0] == ["First name", "Last name", "ID number", "Email address", "01_data", "02_lora"]
    assert rows[1] == ["Ana", "Pérez", "ana", "", "3", "3"]


def test_a_name_that_starts_a_formula_is_text_in_both_imports(tmp_path):
    grades = [_grade("x", "01_data", {"t": (1, 1)}, name="=HYPERLINK(1)")]
    assert _rows(write_canvas(grades, tmp_path / "c.csv").path)[2][0] == "'=HYPERLINK(1)"
    assert _rows(write_moodle(grades, tmp_path / "m.csv").path)[1][0] == "'=HYPERLINK(1)"


def test_a_roster_that_is_not_an_lms_export_is_refused(tmp_path):
    roster = tmp_path / "notes.csv"
    roster.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a Canvas or Moodle gradebook export"):
        read_roster(roster)


def test_course_report_writes_the_page_and_both_imports(tmp_path, capsys):
    (tmp_path / "grading").mkdir()
    (tmp_path / "grading" / "results.json").write_text(json.dumps({"version": 1, "grades": _class()}))
    assert main(["report", str(tmp_path / "grading")]) == 0
    for name in ("report.html", "canvas.csv", "moodle.csv"):
        assert (tmp_path / "grading" / name).is_file(), name
    assert "5 students" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert write_report(tmp_path / "grading", tmp_path / "elsewhere").parent == tmp_path / "elsewhere"
