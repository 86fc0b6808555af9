"""The one data path: what notebook 01 writes is what 03-06 read, and a changed file is caught, not trained on."""

import json

import pytest

from course_lib.core import tasks
from course_lib.data import course_data


def test_written_rows_read_back_as_the_task_examples(tmp_path, capsys):
    built = course_data.build(seed=0)
    assert {k: len(v) for k, v in built.items()} == course_data.SIZES
    course_data.write(built, folder=tmp_path)
    assert course_data.read(tmp_path) == built
    assert capsys.readouterr().out == ""  # read from the files: nothing to say
    splits = course_data.splits(5, 2, 3, folder=tmp_path)
    assert splits == {name: part[:n] for (name, part), n in zip(tasks.make_splits(400, 50, 100).items(), (5, 2, 3))}


def test_without_the_files_the_same_rows_are_built_and_it_says_so(tmp_path, capsys):
    rows = course_data.read(tmp_path / "never-written")
    assert "has not written" in capsys.readouterr().out
    assert rows == course_data.build(seed=0)


def test_a_file_changed_after_01_wrote_it_is_refused(tmp_path):
    course_data.write(course_data.build(seed=0), folder=tmp_path)
    path = tmp_path / "train.jsonl"
    rows = path.read_text().splitlines()
    row = json.loads(rows[0])
    row["messages"][-1]["content"] = row["messages"][-1]["content"].replace('"name"', '"nome"')
    path.write_text("\n".join([json.dumps(row)] + rows[1:]) + "\n")
    with pytest.raises(ValueError, match="train.jsonl changed"):
        course_data.read(tmp_path)
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises((ValueError, FileNotFoundError), match="jsonl"):
        course_data.read(tmp_path)
