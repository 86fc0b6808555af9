"""The parts of batch grading that need no kernel: student ids, safe unzip, finding a notebook."""

import zipfile

import pytest

from course_lib.instructor.batch import find_notebook, student_id, unpack_zip


def test_student_ids_are_safe_path_parts():
    assert student_id("Ana Silva (ana@x.org)") == "Ana_Silva_ana_x.org"
    with pytest.raises(ValueError, match="student id"):
        student_id("...")


def test_a_zip_that_escapes_its_folder_is_refused(tmp_path):
    archive = tmp_path / "mallory.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../../evil.py", "print('pwned')")
    with pytest.raises(ValueError, match="unsafe entry"):
        unpack_zip(archive, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists() and not (tmp_path.parent / "evil.py").exists()


def test_the_shallowest_copy_is_graded_and_checkpoints_ignored(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    for path in ("a/b/nb.ipynb", "a/nb.ipynb", ".ipynb_checkpoints/nb.ipynb"):
        (tmp_path / path).write_text("{}")
    found, note = find_notebook(tmp_path, "nb")
    assert found == tmp_path / "a" / "nb.ipynb" and "2 copies" in note
    assert find_notebook(tmp_path, "other") == (None, "found nb.ipynb but no other.ipynb")
