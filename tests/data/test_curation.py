"""Curation (course_lib.data.curation) on planted faults (course_lib.data.noise): filters, near-duplicates, balance."""

import itertools
import random

import pytest

from course_lib.core import tasks
from course_lib.data import curation, noise, splits
from course_lib.data.pipeline import task_rows


def chat(user, answer):
    return {"messages": [{"role": "system", "content": tasks.INSTRUCTION}, {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]}


def answer(**fields):
    return tasks.answer_to_json({k: fields.get(k) for k in tasks.FIELDS})


@pytest.fixture(scope="module")
def clean():
    return task_rows(400, seed=0)


def test_clean_task_rows_pass_every_check(clean):
    kept, report = curation.filter_rows(clean)
    assert report.dropped == [] and kept == clean
    assert "kept 400 of 400" in str(report)


@pytest.mark.parametrize("user, reply, reason", [
    ("Ana is 34.", '{"name": "Ana", "age": 3', "not_json"),
    ("Ana is 34.", "Sure! Here is the JSON you asked for.", "not_json"),
    ("Ana is 34.", '["Ana", 34]', "not_json"),
    ("Ana is 34.", '{"name": "Ana", "age": "34", "city": null, "job": null}', "schema"),  # a number as text
    ("Ana is 34.", '{"name": "Ana", "age": 34, "city": null}', "schema"),  # a key missing
    ("Ana is 34.", '{"name": "Ana", "age": 34, "city": null, "job": null, "mood": "ok"}', "schema"),
    ("Ana is 34.", answer(name="Ana", age=43), "ungrounded"),  # digits swapped
    ("Ana is 34.", answer(name="Anna", age=34), "ungrounded"),
    ("Ana is 34.", answer(name="Ana", age=34, city="Lisbon"), "ungrounded"),
    ("Ana turned 136 today.", answer(name="Ana", age=36), "ungrounded"),  # 36 is not in 136
    ("Ana is thirty-six.", answer(name="Ana", age=30), "ungrounded"),  # thirty is not thirty-six
    ("JosÃ© is 34.", answer(name="JosÃ©", age=34), "garbage"),  # mojibake
    ("Ana is 34 â€“ a nurse.", answer(name="Ana", age=34, job="nurse"), "garbage"),
    ("Ana is 34!!!!!!!!!!!!", answer(name="Ana", age=34), "garbage"),
    ("1234 5678 90 12 34 5", answer(age=34), "garbage"),  # mostly not letters
    ("Ana", answer(name="Ana"), "too_short"),
    ("Ana is 34. " * 40, answer(name="Ana", age=34), "too_long"),
])
def test_a_faulty_row_is_dropped_for_its_reason(user, reply, reason):
    row = chat(user, reply)
    kept, report = curation.filter_rows([row])
    assert kept == [] and report.dropped == [(0, reason)], report


@pytest.mark.parametrize("user, reply", [
    ("José, a thirty-year-old plumber, answered the door.", answer(name="José", age=30, job="plumber")),
    ("Priya, a 36-year-old pharmacist, answered the door.", answer(name="Priya", age=36, job="pharmacist")),
    ("Noah is twenty-one.", answer(name="Noah", age=21)),
    ("Greetings from São Paulo! - Chloé", answer(name="Chloé", city="São Paulo")),
    ("Müller lives in Kraków.", answer(name="Müller", city="Kraków")),
    ("ANA LIVES IN LISBON.", answer(name="Ana", city="Lisbon")),  # grounding is judged on normalized text
])
def test_right_rows_are_kept(user, reply):
    kept, report = curation.filter_rows([chat(user, reply)])
    assert report.dropped == [], report


def test_the_first_failing_check_names_the_drop_and_the_report_counts_reasons():
    rows = [chat("Ana is 34.", answer(name="Ana", age=34)), chat("JosÃ© is 34.", '{"name": "Jo'),
            chat("Ana is 34.", '{"name": "Ana"'), chat("Ana is 34.", answer(name="Bo", age=34))]
    kept, report = curation.filter_rows(rows)
    assert report.dropped == [(1, "garbage"), (2, "not_json"), (3, "ungrounded")]
    assert report.counts() == {"garbage": 1, "not_json": 1, "ungrounded": 1} and report.kept == 1
    assert report.rows_for("not_json") == [2]
    only_json, report = curation.filter_rows(rows, [curation.answer_is_json])
    assert report.dropped == [(1, "not_json"), (2, "not_json")]


def test_length_bounds_are_checked():
    with pytest.raises(ValueError, match="low <= high"):
        curation.length_within(10, 5)
    check = curation.length_within(3, 10)
    assert check(chat("abc", "{}")) is None and check(chat("ab", "{}")) == "too_short"
    assert check(chat("a" * 11, "{}")) == "too_long"


def test_number_in_words():
    assert [curation.number_in_words(n) for n in (0, 7, 13, 20, 42, 99, 100)] == [
        "zero", "seven", "thirteen", "twenty", "forty-two", "ninety-nine", "100"]


def test_other_formats_are_read():
    instruction = {"instruction": tasks.INSTRUCTION, "input": "Ana is 34.", "output": answer(name="Ana", age=34)}
    assert curation.input_text(instruction) == "Ana is 34." and curation.answer_text(instruction).startswith("{")
    assert curation.filter_rows([instruction])[1].dropped == []
    assert curation.filter_rows([{**instruction, "output": answer(name="Bo")}])[1].dropped == [(0, "ungrounded")]


def test_near_duplicates_find_retyped_copies_that_normalized_dedup_misses(clean):
    rows = clean[:50]
    user = lambda r: r["messages"][1]["content"]  # noqa: E731
    copies = [noise._chat_with(rows[3], user=noise._typo(user(rows[3]), random.Random(1))),
              noise._chat_with(rows[7], user=user(rows[7]).rstrip(".") + "!"),
              noise._chat_with(rows[9], user="FYI: " + user(rows[9]))]
    data = rows + copies
    _, normalized = splits.deduplicate(data, "normalized")
    assert normalized.duplicates == []  # none of the copies normalizes to its original
    found = curation.near_duplicates(data)
    assert [(p.dropped, p.kept) for p in found] == [(50, 3), (51, 7), (52, 9)]
    for pair in found:  # the reported similarity is the exact Jaccard similarity, above the threshold
        a, b = (curation.shingles(curation.example_text(data[i])) for i in (pair.dropped, pair.kept))
        assert pair.similarity == pytest.approx(curation.jaccard(a, b)) and pair.similarity >= 0.85
    kept, pairs = curation.drop_near_duplicates(data)
    assert kept == rows and pairs == found


def test_distinct_rows_of_one_template_are_not_near_duplicates(clean):
    # short sentences from one template share most n-grams; input and answer together keep them apart
    assert curation.near_duplicates(clean) == []
    top = curation.closest_pairs(clean[:150], k=1)[0]
    assert top[0] < 0.85
    by_input = curation.closest_pairs(clean[:150], k=1, key=curation.input_text)[0]
    assert by_input[0] > top[0]  # the input alone makes distinct rows look closer


def test_minhash_finds_what_all_pairs_finds(clean):
    noisy, _ = noise.add_noise(clean[:200], 0.3, seed=4, kinds=("near_copy",))
    sets = [curation.shingles(curation.example_text(r)) for r in noisy]
    expected = set()
    for j in range(len(noisy)):  # brute force: j has an earlier row, itself not dropped, at or above the threshold
        if any(i not in expected and curation.jaccard(sets[i], sets[j]) >= 0.85 for i in range(j)):
            expected.add(j)
    found = {p.dropped for p in curation.near_duplicates(noisy)}
    assert found == expected and len(found) >= 40


def test_minhash_estimates_jaccard(clean):
    sets = [curation.shingles(curation.example_text(r)) for r in clean[:40]]
    signatures = curation.minhash(sets, num_perm=256)
    errors = [abs((signatures[i] == signatures[j]).mean() - curation.jaccard(sets[i], sets[j]))
              for i, j in itertools.combinations(range(40), 2)]
    assert sum(errors) / len(errors) < 0.03 and max(errors) < 0.15


def test_near_duplicate_arguments_are_checked(clean):
    with pytest.raises(ValueError, match="threshold"):
        curation.near_duplicates(clean[:5], threshold=0)
    with pytest.raises(ValueError, match="multiple of bands"):
        curation.near_duplicates(clean[:5], num_perm=100, bands=32)
    assert curation.shingles("ab") == curation.shingles("AB")  # short text: one normalized shingle
    assert curation.jaccard(set(), set()) == 1.0


def test_balance_counts_what_the_answers_fill():
    rows = [chat("Ana is 34.", answer(name="Ana", age=34))] * 3 + [chat("Bo lives in Graz.", answer(name="Bo", city="Graz")),
                                                                  chat("x", "not json")]
    report = curation.balance(rows)
    assert report.counts == {"name+age": 3, "name+city": 1, "not JSON": 1} and report.ratio == 3.0
    assert "name+age" in str(report) and report.total == 5
    assert curation.field_fill_rates(rows) == {"name": 0.8, "age": 0.6, "city": 0.2, "job": 0.0}
    by_length = curation.balance(rows, key=lambda r: len(curation.input_text(r)) > 5, name="long input")
    assert by_length.counts == {"True": 4, "False": 1} and by_length.name == "long input"
    with pytest.raises(ValueError):
        curation.field_fill_rates([])


def test_add_noise_replaces_the_asked_fraction_with_known_faults(clean):
    noisy, labels = noise.add_noise(clean, 0.4, seed=3)
    assert len(noisy) == len(clean) and sum(l is not None for l in labels) == 160
    assert {l for l in labels if l} == set(noise.NOISE_KINDS)
    assert all(n == c for n, c, l in zip(noisy, clean, labels) if l is None)
    assert noise.add_noise(clean, 0.4, seed=3) == (noisy, labels)  # seeded
    kept, report = curation.filter_rows(noisy)
    caught = {labels[i] for i, _ in report.dropped}
    by_kind = {k: sum(1 for i, _ in report.dropped if labels[i] == k) for k in noise.NOISE_KINDS}
    assert None not in caught  # no clean row is dropped
    assert by_kind["truncated"] == by_kind["mojibake"] == 40  # every truncated and garbled row is caught
    assert 10 < by_kind["wrong_value"] < 35  # a pasted value is ungrounded; an emptied field is not seen
    with pytest.raises(ValueError, match="fraction"):
        noise.add_noise(clean, 1.5)
    with pytest.raises(ValueError, match="kinds"):
        noise.add_noise(clean, 0.1, kinds=("typo",))
    with pytest.raises(ValueError, match="unknown noise kind"):
        noise.corrupt(clean[0], "typo", random.Random(0), clean)
