"""The data pipeline (course_lib.data.pipeline): files in, every row accounted for, tokenized splits out."""

import json

import pytest

from course_lib.core import tasks
from course_lib.data import pipeline
from course_lib.data.formats import task_row
from course_lib.data.tokenize import tokenize_row


def test_jsonl_round_trip_and_blank_lines(tmp_path):
    rows = [{"text": "José"}, {"instruction": "Add.", "output": "4"}]
    path = pipeline.write_jsonl(rows, tmp_path / "rows.jsonl")
    assert "José" in path.read_text(encoding="utf-8")
    path.write_text(path.read_text(encoding="utf-8") + "\n\n", encoding="utf-8")
    assert pipeline.read_rows(path) == rows


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"\n', encoding="utf-8")
    with pytest.raises(pipeline.FileFormatError, match="bad.jsonl line 3"):
        pipeline.read_jsonl(path)


def test_rows_that_arrow_cannot_hold_still_load_and_reach_validation(tmp_path):
    lines = [{"instruction": "a", "output": "x"}, {"instruction": "b", "output": 5}, [1, 2]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    assert pipeline.read_rows(path) == lines


def test_csv_keeps_text_and_decodes_messages(tmp_path):
    import csv

    path = tmp_path / "rows.csv"
    chat = [{"role": "user", "content": "Hi, you"}, {"role": "assistant", "content": "Yo"}]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["instruction", "input", "output", "messages"], ["Add.", "", "007", ""],
                          ["", "", "", json.dumps(chat)], ["", "", "", "{not json"]])
    rows = pipeline.read_rows(path)
    assert rows[0] == {"instruction": "Add.", "input": None, "output": "007", "messages": None}  # "007" stays text
    assert rows[1]["messages"] == chat
    assert rows[2]["messages"] == "{not json"


def test_unknown_suffix_and_empty_csv(tmp_path):
    (tmp_path / "rows.dat").write_text("plain words\n", encoding="utf-8")
    with pytest.raises(pipeline.FileFormatError, match="rows.dat"):
        pipeline.read_rows(tmp_path / "rows.dat")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(pipeline.FileFormatError, match="no header"):
        pipeline.read_rows(tmp_path / "empty.csv")


def test_task_rows():
    rows = pipeline.task_rows(3, seed=2, fmt="instruction")
    assert rows == [task_row(e, "instruction") for e in tasks.make_examples(3, seed=2)]


def test_prepare_accounts_for_every_row(tokenizer):
    rows = pipeline.task_rows(60, seed=6)
    rows += [rows[0], {"messages": [{"role": "user", "content": "Hi"}]}, {"text": ""}]  # a duplicate, two bad rows
    shouted = {"messages": [dict(m) for m in rows[1]["messages"]]}
    shouted["messages"][1]["content"] = shouted["messages"][1]["content"].upper()
    shouted["messages"][2]["content"] = "{}"
    rows.append(shouted)  # same prompt after normalization, another answer: it must share row 1's split
    prepared = pipeline.prepare(rows, tokenizer, max_length=256, seed=0)
    assert prepared.validation.rows() == [61, 62]
    assert prepared.dedup[0].duplicates == [(60, 0)] and prepared.dedup[1].duplicates == []
    assert set(prepared.leakage_proof["overlaps"].values()) == {0}
    sources = {name: ds["source_row"] for name, ds in prepared.splits.items()}
    assert sorted(i for s in sources.values() for i in s) == sorted(set(range(len(rows))) - {60, 61, 62})
    assert [name for name, s in sources.items() if 1 in s] == [name for name, s in sources.items() if 63 in s]
    assert all(report.truncated == [] and report.dropped == [] for report in prepared.tokenization.values())
    assert "kept 62 of 64" in str(prepared)


def test_prepare_with_nothing_valid(tokenizer):
    with pytest.raises(ValueError, match="no valid rows"):
        pipeline.prepare([{"text": ""}], tokenizer)


def test_to_dataset_keeps_the_fields_of_every_row():
    from datasets import Dataset

    rows = [{"text": "a"}, {"instruction": "Add.", "output": "4", "id": 7}]
    assert Dataset.from_list(rows).column_names == ["text"]  # the trap: columns come from the first row only
    dataset = pipeline.to_dataset(rows)
    assert dataset.column_names == ["text", "instruction", "output", "id"]
    assert dataset[1] == {"text": None, "instruction": "Add.", "output": "4", "id": 7}


def test_to_dataset_names_a_field_with_mixed_types():
    with pytest.raises(ValueError, match="field 'id' holds values of several types: number \\(row 0\\), str \\(row 2\\)"):
        pipeline.to_dataset([{"text": "a", "id": 1}, {"text": "b"}, {"text": "c", "id": "x"}])


def test_prepare_with_truncation_off_drops_long_rows_in_validation(tokenizer):
    rows = pipeline.task_rows(30, seed=1)
    lengths = [len(tokenize_row(r, tokenizer)["input_ids"]) for r in rows]
    limit = sorted(lengths)[15]
    long_rows = [i for i, n in enumerate(lengths) if n > limit]
    prepared = pipeline.prepare(rows, tokenizer, max_length=limit, truncation=False)
    assert prepared.validation.rows() == long_rows and set(prepared.validation.counts()) == {"too_long"}
    assert all(report.truncated == [] for report in prepared.tokenization.values())
    assert max(n for ds in prepared.splits.values() for n in ds["num_tokens"]) <= limit
