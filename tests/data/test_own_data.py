"""A learner's own data: every file gets in, every bad row is named, no good row is lost (issue: bring your own data).

One test per class of problem, each with several real rows of that class mixed with good ones, run through the
same path a learner uses (`pipeline.prepare`, `validate_rows`, `course data check`).
"""

import json
import math

import pytest

from course_lib.core import tasks
from course_lib.data import pipeline, splits, tokenize
from course_lib.data.check import check_data
from course_lib.data.validate import RowError, validate_rows

U = {"role": "user", "content": "Where is Lyon?"}


def chat(question, answer, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    return {"messages": turns + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def good_rows(n, seed=0):
    return [{"messages": tasks.to_messages(e)} for e in tasks.make_examples(n, seed=seed)]


def test_rows_that_pass_validation_tokenize_and_keep_their_mask(tokenizer):
    replies = ["\n\nParis is north of Lyon.", "  two spaces first", "\tA tab first", " \n a newline after a space",
               "\r\nWindows line ending", "ok \u200b zero width", "🍕 only an emoji 🍕", "مرحبا بالعالم"]
    rows = [chat(f"Question {i}?", reply) for i, reply in enumerate(replies)]
    rows.append({"instruction": "Say hi.", "output": "\n\nhi"})
    rows.append({"prompt": "Say hi:", "completion": "  hi"})
    good, summary = validate_rows(rows, on_error="drop", tokenizer=tokenizer)
    assert summary.drops == [] and len(good) == len(rows)
    for row, reply in zip(good, replies):
        encoded = tokenize.tokenize_row(row, tokenizer)
        # the learned tokens are the reply, exactly, and the end of turn; the prompt is tokenized as at inference
        assert tokenize.learned_text(encoded, tokenizer) == reply + tokenizer.eos_token
        prompt = tokenize.render_prompt(row["messages"][:-1], tokenizer)
        assert encoded["input_ids"][: len(tokenizer(prompt)["input_ids"])] == tokenizer(prompt)["input_ids"]
    prepared = pipeline.prepare(good_rows(40) + rows, tokenizer, fractions={"train": 0.8, "test": 0.2})
    assert sum(len(ds) for ds in prepared.splits.values()) == 40 + len(rows)


def test_a_lone_surrogate_is_named_and_the_other_rows_are_kept(tokenizer):
    broken = [chat("Nice \ud83d day?", "Yes."), chat("Fine?", "Sure \udc4d"), {"text": "cut \ud83d"},
              {"instruction": "Reply.", "input": "x\ud800y", "output": "ok"}]
    rows = good_rows(30) + broken
    prepared = pipeline.prepare(rows, tokenizer, fractions={"train": 0.8, "test": 0.2})
    drops = prepared.validation.drops
    assert [(e.row, e.field, e.kind) for e in drops] == [
        (30, "messages[0].content", "encoding"), (31, "messages[1].content", "encoding"), (32, "text", "encoding"),
        (33, "input", "encoding")]
    assert "U+D83D" in str(drops[0]) and "surrogate" in str(drops[0])
    assert sum(len(ds) for ds in prepared.splits.values()) == 30
    with pytest.raises(RowError, match="row 30, field 'messages\\[0\\].content'"):
        validate_rows(rows, tokenizer=tokenizer)


def test_fields_whose_type_changes_between_rows_cost_no_row(tokenizer):
    rows = good_rows(20)
    for i, row in enumerate(rows):  # an id that is int here and str there; a nested field of changing type
        row["id"] = i if i % 2 else f"r{i}"
        row["meta"] = {"score": 1} if i % 3 else {"score": "high", "tags": ["a"]}
    rows.append({"text": "a document", "id": 3.5, "meta": "flat"})
    rows.append(chat("How many?", 7))  # nested content of the wrong type: only this row goes
    prepared = pipeline.prepare(rows, tokenizer, fractions={"train": 0.8, "test": 0.2})
    assert [(e.row, e.field, e.kind) for e in prepared.validation.drops] == [(21, "messages[1].content", "content")]
    assert prepared.validation.ignored == {"id": 21, "meta": 21}
    assert "'id' (21 rows)" in str(prepared) and sum(len(ds) for ds in prepared.splits.values()) == 21


def test_a_dataset_too_small_for_its_splits_gets_one_clear_error(tokenizer):
    rows = good_rows(5)
    with pytest.raises(splits.SplitTooSmallError) as caught:
        pipeline.prepare(rows, tokenizer)
    message = str(caught.value)
    assert "5 rows in 5 distinct prompts" in message and "need at least 8 distinct prompts" in message
    assert "Column" not in message
    prepared = pipeline.prepare(rows, tokenizer, fractions={"train": 0.8, "test": 0.2})
    assert {name: len(ds) for name, ds in prepared.splits.items()} == {"train": 4, "test": 1}
    empty, report = tokenize.tokenize_dataset(pipeline.to_dataset(rows).select([]), tokenizer)
    assert len(empty) == 0 and "num_tokens" in empty.column_names and report.rows == 0


def test_the_key_keeps_symbols_and_joins_an_example_in_every_form(tokenizer):
    from course_lib.data import formats

    operators = [chat(f"What is 7{op}2?", f"answer {op}") for op in "+-*/%^"]
    emoji = [chat(f"Rate {e}", f"{e} rated") for e in "🍕🍔🌮"]
    instruction = {"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit"}
    same = [instruction, formats.to_chat(instruction)]
    relabelled = chat("WHAT IS 7+2?", "a different answer")  # same prompt as operators[0]: a conflict, kept together
    rows = good_rows(30) + operators + emoji + same + [relabelled]
    prepared = pipeline.prepare(rows, tokenizer, fractions={"train": 0.8, "test": 0.2})
    normalized = prepared.dedup[1]
    assert normalized.duplicates == [(40, 39)]  # only the chat form of the instruction row
    assert prepared.conflicts == [[30, 41]]
    assert "conflicts: 1 prompts have different answers (rows 30 & 41)" in str(prepared)
    where = {name: set(ds["source_row"]) for name, ds in prepared.splits.items()}
    assert [name for name, rows_ in where.items() if 30 in rows_] == [name for name, rows_ in where.items() if 41 in rows_]


def test_every_control_token_of_the_tokenizer_is_refused_by_name(tokenizer):
    tokens = ["<|im_start|>", "<|endoftext|>", "<repo_name>", "<jupyter_code>", "<file_sep>", "<issue_comment>"]
    rows = [chat(f"Explain {t} please", "ok") for t in tokens[:3]] + [chat("Hi", f"see {t}") for t in tokens[3:]]
    for given in (tokenizer, None):
        good, summary = validate_rows(good_rows(3) + rows, on_error="drop", tokenizer=given)
        assert len(good) == 3 and summary.counts() == {"special_token": len(tokens)}
        for error, token in zip(summary.drops, tokens):
            assert error.kind == "special_token" and repr(token) in str(error)


def test_plain_text_that_already_ends_with_eos_keeps_exactly_one(tokenizer):
    eos = tokenizer.eos_token
    rows = [{"text": f"A document.{eos}"}, {"text": f"Another one.{eos}\n"}, {"text": "No EOS yet."},
            {"instruction": "Say hi.", "output": f"hi{eos}"}, {"prompt": "2+2=", "completion": f"4{eos}"}]
    good, summary = validate_rows(rows, on_error="drop", tokenizer=tokenizer)
    assert summary.drops == [] and len(good) == 5
    for row in good:
        ids = tokenize.tokenize_row(row, tokenizer)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1, row
    with pytest.raises(RowError, match="special token"):  # EOS anywhere but the end is still refused
        validate_rows([{"text": f"half{eos} and more"}], tokenizer=tokenizer)


def test_the_ecosystems_types_and_schemas_are_accepted(tokenizer, tmp_path):
    import pandas as pd
    from datasets import Dataset, DatasetDict, load_dataset

    frame = pd.DataFrame({"instruction": [f"Add {i} and 1." for i in range(12)], "input": [math.nan] * 6 + ["x"] * 6,
                          "output": [str(i + 1) for i in range(12)]})
    frame.loc[3, "output"] = math.nan  # a missing required value: only this row goes
    prepared = pipeline.prepare(frame, tokenizer, fractions={"train": 0.75, "test": 0.25})
    assert [(e.row, e.field, e.kind) for e in prepared.validation.drops] == [(3, "output", "missing")]
    assert sum(len(ds) for ds in prepared.splits.values()) == 11

    path = pipeline.write_jsonl(good_rows(12), tmp_path / "rows.jsonl")
    loaded = load_dataset("json", data_files=str(path))  # a DatasetDict, as load_dataset returns
    assert isinstance(loaded, DatasetDict)
    assert sum(len(ds) for ds in pipeline.prepare(loaded, tokenizer, fractions={"train": 0.75, "test": 0.25})
               .splits.values()) == 12

    schemas = [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": [U], "completion": [{"role": "assistant", "content": "In France."}]},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
                           {"from": "gpt", "value": "Hello."}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe Lyon."}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "A city."}]}]},
        {"text": "Plain text.", "input": None},
    ]
    good, summary = validate_rows(schemas, tokenizer=tokenizer)
    assert summary.schemas == {"prompt_completion": 1, "conversational prompt_completion": 1, "sharegpt": 1,
                               "messages": 1, "text": 1}
    assert good[2]["messages"][1] == {"role": "user", "content": "Hi?"}
    assert tokenize.learned_text(tokenize.tokenize_row(good[0], tokenizer), tokenizer) == " Paris." + tokenizer.eos_token
    bad = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hey"}]},
           {"prompt": [U], "completion": [{"role": "user", "content": "Hm"}]},
           {"prompt": "text", "completion": [{"role": "assistant", "content": "list"}]}]
    _, summary = validate_rows(bad, on_error="drop", tokenizer=tokenizer)
    assert [(e.field, e.kind) for e in summary.drops] == [
        ("conversations[1].from", "role"), ("completion[0].role", "last_turn"), ("prompt", "type")]

    as_list = tokenize.tokenize_dataset(good_rows(4), tokenizer)[0]  # plain rows and DataFrames are accepted too
    assert len(as_list) == 4 and as_list["source_row"] == [0, 1, 2, 3]
    parts = splits.split_dataset(pd.DataFrame({"text": [f"doc {i}" for i in range(10)]}), {"train": 0.8, "test": 0.2})
    assert {name: len(ds) for name, ds in parts.items()} == {"train": 8, "test": 2}
    assert isinstance(Dataset.from_list([{"a": 1}]), Dataset)


def test_files_from_excel_and_other_encodings(tokenizer, tmp_path):
    excel = tmp_path / "excel.csv"
    lines = ["instruction;input;output"] + [f"Translate to French.;word {i};mot {i}" for i in range(10)]
    excel.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))  # BOM, semicolons, CRLF: Excel's CSV
    prepared = pipeline.prepare(excel, tokenizer, fractions={"train": 0.8, "test": 0.2})
    assert prepared.validation.kept == 10 and prepared.validation.schemas == {"alpaca": 10}

    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\nfirst row\ncafé au lait\n".encode("latin-1"))
    with pytest.raises(pipeline.FileFormatError, match=r"latin.csv, line 3: byte 0xE9 is not UTF-8.*encoding="):
        pipeline.prepare(latin, tokenizer)
    good, _ = validate_rows(pipeline.read_rows(latin, encoding="latin-1"), tokenizer=tokenizer)
    assert good[1] == {"text": "café au lait"}

    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(json.dumps(r) for r in good_rows(3)) + '\n{"text": "unclosed\n{"text": "ok"}\n',
                      encoding="utf-8")
    good, summary = validate_rows(broken, on_error="drop", tokenizer=tokenizer)
    assert len(good) == 4 and [(e.row, e.kind, e.origin) for e in summary.drops] == [(3, "unreadable", "broken.jsonl line 4")]
    assert str(summary.drops[0]).startswith("row 3 (broken.jsonl line 4): not valid JSON")


def test_course_data_check_reports_kept_dropped_and_lengths(tokenizer, tmp_path, capsys):
    from course_lib.instructor.cli import main

    path = tmp_path / "mine.jsonl"
    rows = good_rows(12) + [chat("Hi", ""), chat("Hi", "x<|im_start|>"), {"text": 5}, good_rows(1)[0]]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    result = check_data(path, tokenizer)
    assert result.usable == 12 and result.validation.total == 17
    reasons = {reason: (n, first) for reason, n, _, first in result.reasons()}
    assert reasons == {"empty": (1, [12]), "special_token": (1, [13]), "type": (1, [14]), "unreadable": (1, [16]),
                       "duplicate (exact)": (1, [15])}
    assert sum(count for _, _, count in result.histogram()) == 12
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "17 rows read, 12 usable, 5 would be dropped" in out and "16 (mine.jsonl line 17)" in out
    assert "tokens per usable row" in out and "#" in out

    nothing = tmp_path / "nothing.csv"
    nothing.write_text("text,id\n,1\n,2\n", encoding="utf-8")
    assert main(["data", "check", str(nothing)]) == 1
    assert "nothing usable is left" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2


def test_rows_with_nothing_to_learn_are_named_by_validation_and_the_report_agrees_with_prepare(tokenizer):
    eos = tokenizer.eos_token
    long_prompt = [chat("word " * 400 + str(i), "short answer") for i in range(3)]  # the answer starts after 256 tokens
    empty = [{"text": eos}, {"instruction": "Say it.", "output": f" {eos}"}, {"text": "\u200b"}, chat("Hi", "\u200b\u2060")]
    rows = good_rows(30) + long_prompt + empty
    result = check_data(rows, tokenizer, max_length=256)
    prepared = pipeline.prepare(rows, tokenizer, max_length=256)
    assert result.usable == sum(len(ds) for ds in prepared.splits.values()) == 30
    assert [(e.row, e.kind) for e in prepared.validation.drops] == [(30, "too_long"), (31, "too_long"), (32, "too_long"),
                                                                  (33, "empty"), (34, "empty"), (35, "empty"), (36, "empty")]
    assert "leaves nothing to learn" in str(prepared.validation.drops[0])
    assert all(not report.dropped for report in prepared.tokenization.values())


def test_csv_cells_stay_text_unless_they_hold_turns_and_an_unclosed_quote_is_named(tokenizer, tmp_path):
    import csv

    path = tmp_path / "pc.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion"])
        for e in tasks.make_examples(6, seed=3):
            messages = tasks.to_messages(e)
            writer.writerow([messages[1]["content"], messages[2]["content"]])  # the answer is a JSON object
        writer.writerow(["List three numbers.", "[1, 2, 3]"])
        writer.writerow([json.dumps([U]), json.dumps([{"role": "assistant", "content": "In France."}])])
    good, summary = validate_rows(path, tokenizer=tokenizer)
    assert summary.schemas == {"prompt_completion": 7, "conversational prompt_completion": 1}
    assert good[0]["completion"].startswith("{") and good[6]["completion"] == "[1, 2, 3]"

    broken = tmp_path / "quote.csv"
    lines = ["instruction,output"] + [f"Add {i} and 1.,{i + 1}" for i in range(100)]
    lines[6] = 'Add 5 and 1.,"6'
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(pipeline.FileFormatError, match="quote.csv, line 7: a quote .* never closed"):
        validate_rows(broken, tokenizer=tokenizer)


def test_empty_values_of_another_schema_and_tool_fields_are_absent(tokenizer):
    import pandas as pd

    m = chat("Where?", "Here.")["messages"]
    rows = [dict(chat("Where?", "Here."), input=""), {"text": "doc", "output": ""}, dict(chat("Hm?", "Yes."), prompt=[]),
            {"messages": [dict(m[0], name="", tool_calls=[]), dict(m[1], tool_calls=None)]},
            {"text": ""}]  # an empty text of its own schema is still empty
    good, summary = validate_rows(rows, on_error="drop", tokenizer=tokenizer)
    assert len(good) == 4 and [(e.row, e.field, e.kind) for e in summary.drops] == [(4, "text", "empty")]
    frame = pd.DataFrame(good_rows(4) + [{"instruction": "Add 1 and 1.", "output": "2"}]).fillna("")
    assert validate_rows(frame, tokenizer=tokenizer)[1].kept == 5


def test_numpy_rows_raw_datasets_and_pandas_numbers(tokenizer, tmp_path):
    import pandas as pd
    from datasets import Dataset

    records = Dataset.from_list(good_rows(3)).to_pandas().to_dict("records")  # messages as numpy arrays
    assert validate_rows(records, tokenizer=tokenizer)[1].kept == 3
    sharegpt = [{"conversations": [{"from": "human", "value": f"Q{i}?"}, {"from": "gpt", "value": f"A{i}"}]}
                for i in range(10)]
    parts = splits.split_dataset(Dataset.from_list(sharegpt), {"train": 0.8, "test": 0.2})  # validated, not crashed
    assert sum(len(ds) for ds in parts.values()) == 10
    conversational = [{"prompt": [U], "completion": [{"role": "assistant", "content": f"A{i}"}]} for i in range(3)]
    assert len(tokenize.tokenize_dataset(Dataset.from_list(conversational), tokenizer)[0]) == 3
    numbers = pd.DataFrame({"instruction": [f"Add {i} and 1." for i in range(4)], "output": [1, 2, 3, 4]})
    with pytest.raises(RowError, match="must be text, got int .*dtype=str"):
        validate_rows(numbers, tokenizer=tokenizer)
    bad = Dataset.from_list([{"text": "a", "source_row": 5}, {"text": " ", "source_row": 5}, {"text": "b", "source_row": 6}])
    from course_lib.data.validate import validate_dataset
    kept, summary = validate_dataset(bad, on_error="drop", tokenizer=tokenizer)
    assert kept["source_row"] == [5, 6] and summary.rows() == [5]


def test_sharegpt_and_odd_turns_are_named_by_the_learners_fields(tokenizer):
    rows = [{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
            {"conversations": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "a"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}, {"role": "assistant", "content": "a"}]},
            {"prompt": [], "completion": []},
            {"messages": [{"role": "user", "content": "x", 1: "y"}, {"role": "assistant", "content": "a"}]}]
    good, summary = validate_rows(rows, on_error="drop", tokenizer=tokenizer)
    assert len(good) == 1 and good[0]["messages"][1] == {"role": "assistant", "content": "a"}
    assert [(e.row, e.field, e.kind) for e in summary.drops] == [
        (0, "conversations[1].content", "empty"), (2, "messages[0].content[0].text", "content"),
        (3, "prompt", "empty"), (4, "messages[0].1", "unknown_key")]


def test_tokens_added_to_the_tokenizer_later_are_refused_too():
    from course_lib.core.models import load_tokenizer

    fresh = load_tokenizer()
    assert validate_rows([chat("Use <tool_call>", "ok")], tokenizer=fresh)[1].kept == 1
    fresh.add_special_tokens({"additional_special_tokens": ["<tool_call>"]})
    fresh.add_tokens(["[TOOL]", "<<SYS>>"])
    _, summary = validate_rows([chat("Use <tool_call>", "ok"), chat("hi", "[TOOL] x"), chat("<<SYS>> be nice", "ok"),
                                chat("plain", "ok")], on_error="drop", tokenizer=fresh)
    assert [(e.row, e.kind) for e in summary.drops] == [(0, "special_token"), (1, "special_token"), (2, "special_token")]


def test_utf16_without_bom_and_a_cp1252_file_are_read_or_named(tokenizer, tmp_path):
    plain = tmp_path / "u16.csv"
    plain.write_bytes("text\nhello\nwörld\n".encode("utf-16-le"))
    assert validate_rows(plain, tokenizer=tokenizer)[0] == [{"text": "hello"}, {"text": "wörld"}]
    western = tmp_path / "fr.csv"
    western.write_bytes(("text\n" + "\n".join(f"«café» “au lait” numéro {i}" for i in range(50))).encode("cp1252"))
    with pytest.raises(pipeline.FileFormatError, match=r"line 2: byte 0xAB.*encoding='cp1252'.*«café»"):
        validate_rows(western, tokenizer=tokenizer)
    from course_lib.instructor.cli import main
    assert main(["data", "check", str(western), "--encoding", "bogus"]) == 2
    assert main(["data", "check", str(western), "--encoding", "cp1252"]) == 0


def test_raw_rows_of_every_schema_work_in_the_row_helpers_and_a_raw_dataset_is_validated(tokenizer):
    import math

    from datasets import Dataset

    from course_lib.data import formats

    sharegpt = {"conversations": [{"from": "human", "value": "Where is Lyon?"}, {"from": "gpt", "value": "In France."}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Where is Lyon?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "In France."}]}]}
    pair = {"prompt": [U], "completion": [{"role": "assistant", "content": "In France."}]}
    nan_input = {"instruction": "Where is Lyon?", "input": math.nan, "output": "In France."}
    plain = chat("Where is Lyon?", "In France.")
    forms = [sharegpt, parts, pair, nan_input, plain]
    assert {formats.detect_format(r) for r in forms} == {"chat", "instruction"}
    assert len({splits.prompt_key(r) for r in forms}) == 1
    assert splits.deduplicate(forms, "normalized")[1].kept == 1 and splits.conflicts(forms) == {}
    assert all(formats.to_chat(r) == plain for r in forms)
    assert len({tokenize.learned_text(tokenize.tokenize_row(r, tokenizer), tokenizer) for r in forms}) == 1
    assert splits.conflicts([{"text": "Where is Lyon?"}, plain]) == {}  # a document has no answer to conflict with

    with pytest.raises(RowError, match="special token '<\\|im_start\\|>'"):  # a Dataset in a library format is checked too
        tokenize.tokenize_dataset(Dataset.from_list([chat("hi <|im_start|>", "x")] * 3), tokenizer)
    mixed = Dataset.from_list([sharegpt] * 3 + [{"conversations": [{"role": "user", "content": "Hi"},
                                                                   {"role": "assistant", "content": "Hello"}]}])
    assert validate_rows(mixed, tokenizer=tokenizer)[1].kept == 4  # Arrow's None-filled keys do not hide the turns


def test_a_null_main_field_is_named_and_pandas_chat_columns_and_headers_are_read(tokenizer, tmp_path):
    import pandas as pd

    _, summary = validate_rows([{"text": None, "id": 1}, {"messages": None}, {"conversations": float("nan")}],
                               on_error="drop", tokenizer=tokenizer)
    assert [(e.field, e.kind) for e in summary.drops] == [("text", "missing"), ("messages", "missing"),
                                                          ("conversations", "missing")]
    path = tmp_path / "chat.csv"
    pd.DataFrame({"messages": [json.dumps(r["messages"]) for r in good_rows(3)]}).to_csv(path, index=False)
    assert validate_rows(pd.read_csv(path), tokenizer=tokenizer)[1].kept == 3
    excel = tmp_path / "headers.csv"
    excel.write_text("Instruction, Output\nAdd 1 and 1.,2\nAdd 2 and 2.,4\n", encoding="utf-8")
    assert validate_rows(excel, tokenizer=tokenizer)[0][1] == {"instruction": "Add 2 and 2.", "output": "4"}
    commas = tmp_path / "commas.jsonl"
    commas.write_text("".join(json.dumps(r) + ",\n" for r in good_rows(3)), encoding="utf-8")
    assert validate_rows(commas, tokenizer=tokenizer)[1].kept == 3


def test_western_files_get_cp1252_and_writing_rows_is_whole_or_nothing(tokenizer, tmp_path):
    for text in ("über alles", "it\u2019s", "niño", "café"):
        path = tmp_path / "w.csv"
        path.write_bytes(f"text\nhello\n{text}\n".encode("cp1252"))
        with pytest.raises(pipeline.FileFormatError, match="encoding='cp1252'"):
            validate_rows(path, tokenizer=tokenizer)
    out = tmp_path / "out.jsonl"
    pipeline.write_jsonl([{"text": "kept"}], out)
    with pytest.raises(ValueError, match="row 1 cannot be written"):
        pipeline.write_jsonl([{"text": "ok"}, {"text": "cut \ud83d"}], out)
    assert pipeline.read_jsonl(out) == [{"text": "kept"}]
    with pytest.raises(ValueError, match="row 0 cannot be written"):
        pipeline.write_jsonl([{"text": "x", "score": float("nan")}], out)
