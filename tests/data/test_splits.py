"""Splits (course_lib.data.splits): normalized deduplication and leakage-free splits, with the proof."""

import pytest

from course_lib.core import tasks
from course_lib.data import splits
from course_lib.data.formats import task_row


def chat(user, answer="x", system="Be brief."):
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]}


@pytest.mark.parametrize("a, b", [("Ana is 34.", "ana  is 34."), ("Ana  is\n34!", " ANA IS 34! "),
                                  ("Ｔｏｋｙｏ", "tokyo"), ("Straße", "STRASSE"), ("café", "cafe\u0301"),
                                  ("Where\u00a0is Lyon?", "where is lyon？"), ("It\u2019s \u201cok\u201d", "it's \"ok\""),
                                  ("zero\u200bwidth", "zerowidth")])
def test_normalized_texts_that_should_match(a, b):
    assert splits.normalize_text(a) == splits.normalize_text(b)


@pytest.mark.parametrize("a, b", [("3.5", "35"), ("Ana is 34", "Ana is 43"), ("a b", "ab"), ("2+3", "2-3"),
                                  ("2*3", "2/3"), ("x < y", "x > y"), ("costs $5", "costs €5"), ("I love 🍕", "I love 🍔"),
                                  ("I love 🍕", "I love"), ("Is it?", "Is it!"), ("a == b", "a != b"), ("C++", "C#")])
def test_normalized_texts_that_must_stay_apart(a, b):
    assert splits.normalize_text(a) != splits.normalize_text(b)


def test_prompt_text_per_format():
    assert splits.prompt_text({"text": "Hello"}) == "Hello"
    assert splits.prompt_text({"instruction": "Add.", "input": "2+2", "output": "4"}) == "Add.\n2+2"
    assert splits.prompt_text({"instruction": "Add.", "output": "4"}) == "Add."
    assert splits.prompt_text({"prompt": "2+2=", "completion": "4"}) == "2+2="
    multi = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                          {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                          {"role": "assistant", "content": "A2"}]}
    assert splits.prompt_text(multi) == "S\nQ1\nA1\nQ2"  # everything before the final answer
    # the system prompt is part of the question: the library writes an instruction with an input as a system turn
    assert splits.prompt_key(chat("Good morning", system="To French.")) != splits.prompt_key(chat("Good morning",
                                                                                                   system="To German."))


def test_one_example_has_one_key_in_every_form():
    from course_lib.data import formats

    instruction = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    as_chat = formats.to_chat(instruction)
    plain = {"instruction": "Where is Lyon?", "output": "In France."}
    forms = [plain, formats.to_chat(plain), {"prompt": "Where is Lyon?", "completion": "In France."},
             {"messages": [{"role": "user", "content": "where is  Lyon?"}, {"role": "assistant", "content": "In France."}]}]
    assert splits.prompt_key(instruction) == splits.prompt_key(as_chat)
    assert splits.normalize_text(splits.row_text(instruction)) == splits.normalize_text(splits.row_text(as_chat))
    assert len({splits.prompt_key(r) for r in forms}) == 1
    assert len({splits.normalize_text(splits.row_text(r)) for r in forms}) == 1
    # so deduplication keeps one of them, and a split never separates them
    kept, report = splits.deduplicate([instruction, as_chat, plain, forms[2]], "normalized")
    assert kept == [instruction, plain] and report.duplicates == [(1, 0), (3, 2)]
    many = [formats.to_chat(r) if i % 2 else r for i, r in enumerate(
        {"instruction": f"Q{i // 2}", "output": "A"} for i in range(60))]
    parts = splits.split_rows(many, seed=0)
    splits.assert_no_leakage(parts)


def test_exact_dedup_keeps_first_and_names_what_it_dropped():
    rows = [{"text": "a"}, {"text": "b"}, {"text": "a"}, {"text": "A"}, {"text": "b"}]
    kept, report = splits.deduplicate(rows, "exact")
    assert kept == [{"text": "a"}, {"text": "b"}, {"text": "A"}]
    assert report.duplicates == [(2, 0), (4, 1)] and report.kept == 3
    assert "dropped 2" in str(report) and "2→0" in str(report)


def test_normalized_dedup_catches_case_spacing_and_unicode_forms():
    rows = [chat("Ana is 34.", "A"), chat("ana  is 34．", "a"), chat("Ana is 35.", "A")]
    kept, report = splits.deduplicate(rows, "normalized")
    assert kept == [rows[0], rows[2]] and report.duplicates == [(1, 0)]
    assert splits.deduplicate(rows, "exact")[1].duplicates == []
    with pytest.raises(ValueError, match="mode"):
        splits.deduplicate(rows, "fuzzy")


def test_deduplicate_dataset_matches_the_list_version():
    from datasets import Dataset

    rows = [chat("Q1"), chat("q1!"), chat("Q2"), chat("Q1")]
    for mode in ("exact", "normalized"):
        kept, report = splits.deduplicate_dataset(Dataset.from_list(rows), mode)
        expected, expected_report = splits.deduplicate(rows, mode)
        assert kept.to_list() == expected and report.duplicates == expected_report.duplicates
    named = Dataset.from_list([dict(r, source_row=i + 10) for i, r in enumerate(rows)])
    assert splits.deduplicate_dataset(named, "exact")[1].duplicates == [(13, 10)]


def test_conflicting_answers_are_reported():
    rows = [chat("Q1", "yes"), chat("q1", "no"), chat("Q2", "x"), chat("Q1", "yes")]
    assert splits.conflicts(rows) == {"be brief. q1": [0, 1]}


def test_prompts_that_differ_in_an_operator_symbol_or_emoji_are_neither_duplicates_nor_conflicts():
    prompts = ["What is 2+3?", "What is 2-3?", "What is 2*3?", "What is 2/3?", "Price in $?", "Price in €?",
               "Rate this: 🍕", "Rate this: 🍔", "Is x < y?", "Is x > y?"]
    rows = [chat(p, f"answer {i}") for i, p in enumerate(prompts)]
    assert splits.deduplicate(rows, "normalized")[1].duplicates == []
    assert splits.conflicts(rows) == {}
    shouted = [chat(p.upper(), "other") for p in prompts[:2]]
    assert list(splits.conflicts(rows + shouted).values()) == [[0, 10], [1, 11]]


def test_split_groups_never_separates_equal_keys_and_follows_fractions():
    keys = [f"k{i % 150}" for i in range(300)]  # every key twice
    indices = splits.split_groups(keys, seed=3)
    assert sorted(i for idx in indices.values() for i in idx) == list(range(300))
    owner = {}
    for name, idx in indices.items():
        for i in idx:
            assert owner.setdefault(keys[i], name) == name
    assert [len(indices[n]) for n in ("train", "validation", "test")] == [240, 30, 30]
    assert splits.split_groups(keys, seed=3) == indices
    assert splits.split_groups(keys, seed=4) != indices
    assert splits.split_groups(list(reversed(keys)), seed=3) != indices  # positions change, groups do not
    with pytest.raises(ValueError, match="sum to 1"):
        splits.split_groups(keys, {"train": 0.9, "test": 0.2})


def test_split_rows_has_no_leakage_and_proves_it():
    rows = [task_row(e) for e in tasks.make_examples(120, seed=1)]
    rows += [chat(r["messages"][1]["content"].upper(), "different answer", system=r["messages"][0]["content"])
             for r in rows[:20]]  # same prompts, shouted
    parts = splits.split_rows(rows, seed=0)
    assert sum(len(p) for p in parts.values()) == len(rows)
    proof = splits.assert_no_leakage(parts)
    assert set(proof["overlaps"].values()) == {0}
    assert proof["rows"] == {name: len(p) for name, p in parts.items()}
    assert sum(proof["distinct_prompts"].values()) == 120


def test_leakage_is_detected_and_named():
    parts = {"train": [chat("Where is Lyon?"), chat("Q2")], "test": [chat("where is  LYON?")]}
    assert splits.leakage(parts) == {"be brief. where is lyon?": {"train": [0], "test": [0]}}
    with pytest.raises(splits.LeakageError, match="where is lyon"):
        splits.assert_no_leakage(parts)


def test_split_dataset_gives_a_leakage_free_dataset_dict():
    from datasets import Dataset

    rows = [task_row(e) for e in tasks.make_examples(50, seed=2)]
    rows += [chat(r["messages"][1]["content"] + "  ") for r in rows[:10]]
    result = splits.split_dataset(Dataset.from_list(rows), {"train": 0.6, "test": 0.4}, seed=1)
    assert list(result) == ["train", "test"] and result["train"].column_names == ["messages"]
    assert len(result["train"]) + len(result["test"]) == 60
    splits.assert_no_leakage({name: ds.to_list() for name, ds in result.items()})


def test_fingerprint_depends_on_prompts_not_order():
    rows = [chat("a"), chat("b")]
    assert splits.fingerprint(rows) == splits.fingerprint(rows[::-1]) != splits.fingerprint([chat("c")])


def test_row_text_covers_every_field():
    assert splits.row_text({"text": "a"}) == "a"
    assert splits.row_text({"instruction": "i", "input": "x", "output": "o"}) == "system: i\nuser: x\nassistant: o"
    assert splits.row_text({"prompt": "p", "completion": "c"}) == "user: p\nassistant: c"
    assert splits.row_text(chat("q", "a", system="s")) == "system: s\nuser: q\nassistant: a"


def test_a_split_too_small_for_its_fractions_says_how_many_rows_it_needs():
    rows = [chat(f"Q{i}") for i in range(5)]
    with pytest.raises(splits.SplitTooSmallError, match=r"'validation'.*5 rows in 5 distinct prompts.*at least 8 distinct"):
        splits.split_rows(rows)
    assert [splits.prompts_needed(f) for f in (None, {"train": 0.8, "test": 0.2}, {"train": 0.9, "test": 0.1})] == [8, 3, 5]
    for fractions in (None, {"train": 0.8, "test": 0.2}, {"train": 0.9, "test": 0.1}):  # the number is the true minimum
        n = splits.prompts_needed(fractions)
        splits.split_rows([chat(f"Q{i}") for i in range(n)], fractions)
        with pytest.raises(splits.SplitTooSmallError):
            splits.split_rows([chat(f"Q{i}") for i in range(n - 1)], fractions)
    crowded = [chat("same")] * 90 + [chat(f"Q{i}") for i in range(20)]
    with pytest.raises(splits.SplitTooSmallError, match="largest repeats one prompt 90 times"):
        splits.split_rows(crowded)
    parts = splits.split_rows(rows, {"train": 0.8, "test": 0.2})
    assert [len(p) for p in parts.values()] == [4, 1]
