"""Data sources (course_lib.data.sources): files, lists, DataFrames and Datasets to plain rows, with their origins."""

import csv
import json

import pytest

from course_lib.data.sources import FILE_FORMATS, FileFormatError, LoadedRows, UnreadableRow, load_rows, read_text

CHAT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def write(folder, name, content, encoding="utf-8"):
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


# ------------------------------------------------------------------------------------------------- encodings

def test_excel_csv_with_utf8_bom_keeps_the_first_column_name(tmp_path):
    path = write(tmp_path, "excel.csv", "instruction,output\r\nAdd.,4\r\nSay hi.,Hi\r\n", "utf-8-sig")
    rows = load_rows(path)
    assert rows == [{"instruction": "Add.", "output": "4"}, {"instruction": "Say hi.", "output": "Hi"}]
    assert rows.origins == ["excel.csv line 2", "excel.csv line 3"] and rows.name == "excel.csv"


def test_semicolon_csv_as_european_excel_writes_it(tmp_path):
    path = write(tmp_path, "de.csv", "id;text\n007;Grüße, aus Köln\n8;\n9;Tschüss\n")
    assert load_rows(path) == [{"id": "007", "text": "Grüße, aus Köln"}, {"id": "8", "text": None},
                               {"id": "9", "text": "Tschüss"}]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files_with_a_bom(tmp_path, encoding):
    bom = {"utf-16-be": b"\xfe\xff"}.get(encoding, b"")
    path = write(tmp_path, "chat.jsonl", bom + '{"text": "é"}\r\n{"text": "ü"}\r\n'.encode(encoding))
    rows = load_rows(path)
    assert rows == [{"text": "é"}, {"text": "ü"}] and rows.origins == ["chat.jsonl line 1", "chat.jsonl line 2"]
    assert read_text(path) == '{"text": "é"}\r\n{"text": "ü"}\r\n'


def test_a_latin1_byte_is_named_with_its_line_and_an_encoding_to_try(tmp_path):
    path = write(tmp_path, "scores.csv", "name,score\nAnna,3\nRené,4\nZoë,5\n", "cp1252")
    with pytest.raises(FileFormatError) as caught:
        load_rows(path)
    message = str(caught.value)
    assert message.startswith("scores.csv, line 3: byte 0xE9 is not UTF-8") and "encoding='" in message
    rows = load_rows(path, encoding="cp1252")
    assert rows == [{"name": "Anna", "score": "3"}, {"name": "René", "score": "4"}, {"name": "Zoë", "score": "5"}]


def test_a_wrong_explicit_encoding_also_names_the_line(tmp_path):
    path = write(tmp_path, "notes.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "café"}\n')
    with pytest.raises(FileFormatError, match=r"notes.jsonl, line 3: byte 0xC3 is not ascii"):
        read_text(path, encoding="ascii")
    assert load_rows(path, encoding="utf-8")[2] == {"text": "café"}


# ----------------------------------------------------------------------------------------------- JSONL, JSON

def test_a_broken_jsonl_line_is_kept_in_place_as_unreadable(tmp_path):
    lines = ['{"text": "one"}', "", '{"text": "two" "x": 1}', '{"text": "three"}', "   ", '["not", "a", "dict"]']
    rows = load_rows(write(tmp_path, "data.jsonl", "\n".join(lines) + "\n"))
    assert len(rows) == 4 and rows[0] == {"text": "one"} and rows[2] == {"text": "three"}
    assert rows[1] == UnreadableRow("not valid JSON (Expecting ',' delimiter at column 16)")
    assert rows[3] == ["not", "a", "dict"]  # kept: validation names it
    assert rows.origins == ["data.jsonl line 1", "data.jsonl line 3", "data.jsonl line 4", "data.jsonl line 6"]


def test_jsonl_with_bom_and_old_mac_line_endings(tmp_path):
    rows = load_rows(write(tmp_path, "bom.ndjson", '{"text": "a"}\r{"text": "b"}\r', "utf-8-sig"))
    assert rows == [{"text": "a"}, {"text": "b"}] and rows.origins == ["bom.ndjson line 1", "bom.ndjson line 2"]


def test_json_list(tmp_path):
    rows = load_rows(write(tmp_path, "list.json", json.dumps([{"text": "a"}, {"text": ""}, 3], indent=2)))
    assert rows == [{"text": "a"}, {"text": ""}, 3] and rows.origins == ["list.json item 0", "list.json item 1",
                                                                         "list.json item 2"]


@pytest.mark.parametrize("document", [{"data": [{"text": "a"}, {"text": "b"}]},
                                      {"version": 1, "rows": [{"text": "a"}, {"text": "b"}], "tags": ["x"]}])
def test_json_object_holding_one_list_of_rows(tmp_path, document):
    key = next(k for k, v in document.items() if isinstance(v, list) and isinstance(v[0], dict))
    rows = load_rows(write(tmp_path, "wrapped.json", json.dumps(document)))
    assert rows == [{"text": "a"}, {"text": "b"}]
    assert rows.origins == [f"wrapped.json {key}[0]", f"wrapped.json {key}[1]"]


def test_json_object_that_is_a_row_and_objects_that_are_not(tmp_path):
    single = load_rows(write(tmp_path, "one.json", json.dumps({"messages": CHAT})))
    assert single == [{"messages": CHAT}] and len(single.origins) == 1
    with pytest.raises(FileFormatError, match="several lists of rows"):
        load_rows(write(tmp_path, "two.json", json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]})))
    with pytest.raises(FileFormatError, match="single number"):
        load_rows(write(tmp_path, "n.json", "42"))


def test_jsonl_saved_as_json_is_read_line_by_line(tmp_path):
    path = write(tmp_path, "really.json", '{"text": "a"}\n{"text": "b"}\n{"text": \n{"text": "d"}\n')
    rows = load_rows(path)
    assert rows[:2] == [{"text": "a"}, {"text": "b"}] and rows[3] == {"text": "d"}
    assert rows[2] == UnreadableRow("not valid JSON (Expecting value at column 10)")
    assert rows.origins[3] == "really.json line 4"


def test_json_syntax_error_names_line_and_column(tmp_path):
    with pytest.raises(FileFormatError, match=r"bad.json, line 3, column 16: not valid JSON"):
        load_rows(write(tmp_path, "bad.json", '[\n  {"text": "a"},\n  {"text": "b",}\n]\n'))


def test_other_suffixes_are_sniffed(tmp_path):
    jsonl = load_rows(write(tmp_path, "rows.txt", '\n{"text": "a"}\n{"text": "b"}\n'))
    assert jsonl == [{"text": "a"}, {"text": "b"}] and jsonl.origins == ["rows.txt line 2", "rows.txt line 3"]
    assert load_rows(write(tmp_path, "export", '  [{"text": "a"}]')) == [{"text": "a"}]
    with pytest.raises(FileFormatError, match="file_format="):
        load_rows(write(tmp_path, "table.txt", "text,label\nhi,1\n"))
    assert load_rows(tmp_path / "table.txt", file_format="csv") == [{"text": "hi", "label": "1"}]


# ---------------------------------------------------------------------------------------------------- CSV, TSV

def test_csv_record_spanning_lines_is_named_by_its_first_line(tmp_path):
    text = 'text,label\n"line one\nline two\nline three",a\n\nplain,b\n,\n"x ""quoted""",\n'
    rows = load_rows(write(tmp_path, "multi.csv", text))
    assert rows == [{"text": "line one\nline two\nline three", "label": "a"}, {"text": "plain", "label": "b"},
                    {"text": 'x "quoted"', "label": None}]
    assert rows.origins == ["multi.csv line 2", "multi.csv line 6", "multi.csv line 8"]


def test_csv_chat_columns_hold_json(tmp_path):
    path = tmp_path / "chat.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerows([["id", "messages", "prompt"], ["1", json.dumps(CHAT), "[INST] hi"],
                          ["2", " [not json", '[{"role": "user", "content": "q"}]']])
    rows = load_rows(path)
    assert rows[0] == {"id": "1", "messages": CHAT, "prompt": "[INST] hi"}
    assert rows[1] == {"id": "2", "messages": " [not json", "prompt": [{"role": "user", "content": "q"}]}


def test_csv_cell_counts(tmp_path):
    rows = load_rows(write(tmp_path, "cells.csv", "text,label,note\nok,1,x\ntoo,many,cells,here\nshort\n"))
    assert rows[0] == {"text": "ok", "label": "1", "note": "x"}
    assert rows[1] == UnreadableRow("has 4 cells but the header has 3")
    assert rows[2] == {"text": "short", "label": None, "note": None}
    assert rows.origins == ["cells.csv line 2", "cells.csv line 3", "cells.csv line 4"]


def test_tsv_and_header_problems(tmp_path):
    assert load_rows(write(tmp_path, "t.tsv", "text\tlabel\na, b; c\t1\n")) == [{"text": "a, b; c", "label": "1"}]
    with pytest.raises(FileFormatError, match="no header row"):
        load_rows(write(tmp_path, "empty.csv", "\n\n"))
    with pytest.raises(FileFormatError, match="repeats the column name 'text'"):
        load_rows(write(tmp_path, "dup.csv", "text,label,text\na,b,c\n"))
    with pytest.raises(FileFormatError, match="no name for column 2"):
        load_rows(write(tmp_path, "blank.csv", "text,,label\na,b,c\n"))


# ------------------------------------------------------------------------------------ pandas, datasets, parquet

def frame_with_numpy_values():
    import numpy as np
    import pandas as pd

    messages = [np.array(CHAT, dtype=object), np.array(CHAT[:1], dtype=object)]
    return pd.DataFrame({"id": np.array([7, 8], dtype="int64"), "messages": messages, "source": ["web", np.nan],
                         "score": [np.float32(0.5), None], "keep": pd.array([True, pd.NA], dtype="boolean")},
                        index=[10, 20])


def test_dataframe_values_become_plain_python(tmp_path):
    rows = load_rows(frame_with_numpy_values())
    assert rows == [{"id": 7, "messages": CHAT, "source": "web", "score": 0.5, "keep": True},
                    {"id": 8, "messages": CHAT[:1], "source": None, "score": None, "keep": None}]
    assert type(rows[0]["id"]) is int and type(rows[0]["messages"]) is list and type(rows[0]["score"]) is float
    assert rows.origins == ["DataFrame index 10", "DataFrame index 20"] and rows.name == "DataFrame"


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "data.parquet"
    frame_with_numpy_values().to_parquet(path)
    rows = load_rows(path)
    assert rows == load_rows(frame_with_numpy_values())  # no index column, same plain values
    assert rows.origins == ["data.parquet row 0", "data.parquet row 1"] and rows.name == "data.parquet"
    with pytest.raises(FileFormatError, match="not a readable Parquet file"):
        load_rows(write(tmp_path, "fake.parquet", "text\n"))


def test_dataset_and_dataset_dict():
    from datasets import Dataset, DatasetDict

    train = Dataset.from_list([{"text": "a", "n": 1}, {"text": None, "n": 2}])
    rows = load_rows(train)
    assert rows == [{"text": "a", "n": 1}, {"text": None, "n": 2}] and rows.origins == ["row 0", "row 1"]
    assert rows.name == "Dataset"
    splits = load_rows(DatasetDict({"train": train, "test": Dataset.from_list([{"text": "c", "n": 3}])}))
    assert [row["text"] for row in splits] == ["a", None, "c"]
    assert splits.origins == ["split 'train' row 0", "split 'train' row 1", "split 'test' row 0"]
    assert splits.name == "DatasetDict"
    # IterableDataset is left out: making one imports torch, which would cost this file more than a second


# ------------------------------------------------------------------------------------------------ Python rows

def test_python_rows_are_kept_as_they_are():
    row = {"text": ""}
    rows = load_rows([row, "not a row", None])
    assert rows == [row, "not a row", None] and rows[0] is row and rows.origins == ["row 0", "row 1", "row 2"]
    assert rows.name == "list" and isinstance(rows, LoadedRows)
    generated = load_rows({"text": str(i)} for i in range(3))
    assert generated == [{"text": "0"}, {"text": "1"}, {"text": "2"}] and generated.origins[2] == "row 2"
    assert load_rows(({"text": "a"},)).name == "tuple"


def test_wrong_sources_say_what_to_pass(tmp_path):
    with pytest.raises(TypeError, match="pass a list of rows"):
        load_rows({"text": "a"})
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_rows(tmp_path / "missing.jsonl")
    with pytest.raises(FileFormatError, match="folder"):
        load_rows(tmp_path)
    with pytest.raises(ValueError, match="'parquet'"):
        load_rows([], file_format="xlsx")
    assert FILE_FORMATS == ("auto", "jsonl", "json", "csv", "tsv", "parquet")


def test_json_wrappers_and_every_pandas_orient_give_their_rows(tmp_path):
    import pandas as pd

    rows = [{"instruction": f"Add {i} and 1.", "output": str(i + 1)} for i in range(3)]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"text": "my dataset, version 2", "data": rows}), encoding="utf-8")
    assert load_rows(wrapped) == rows
    frame = pd.DataFrame(rows)
    for orient in ("columns", "index", "split", "records"):
        path = tmp_path / f"{orient}.json"
        frame.to_json(path, orient=orient)
        assert load_rows(path) == rows, orient
    stream = tmp_path / "pretty.jsonl"
    stream.write_text("".join(json.dumps(row, indent=2) + "\n" for row in rows), encoding="utf-8")
    loaded = load_rows(stream)
    assert loaded == rows and loaded.origins == ["pretty.jsonl line 1", "pretty.jsonl line 5", "pretty.jsonl line 9"]
