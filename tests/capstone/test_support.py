"""The capstone task: tickets, splits, the hidden test split, reply parsing and the score."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from course_lib.capstone import support
from course_lib.capstone.support import (INTENTS, PRIORITIES, PUBLIC_POOL, PUBLIC_SEED, Ticket, hidden_test,
                                         make_tickets, parse_reply, prompt_messages, public_splits, score, to_messages,
                                         to_rows)


@pytest.fixture(scope="module")
def many() -> list[Ticket]:
    return make_tickets(1200, seed=3)


def test_the_generator_repeats_for_a_seed_and_differs_across_seeds():
    assert make_tickets(50, seed=1) == make_tickets(50, seed=1)
    assert [t.text for t in make_tickets(50, seed=1)] != [t.text for t in make_tickets(50, seed=2)]


def test_texts_are_distinct_and_labels_valid(many):
    assert len({t.text for t in many}) == len(many)
    assert all(t.intent in INTENTS and t.priority in PRIORITIES for t in many)
    assert many[0].answer() == f"{many[0].intent} {many[0].priority}"


def test_classes_are_roughly_balanced(many):
    intents = Counter(t.intent for t in many)
    priorities = Counter(t.priority for t in many)
    assert all(abs(intents[i] / len(many) - 1 / 6) < 0.04 for i in INTENTS), intents
    for name, share in zip(PRIORITIES, (0.30, 0.45, 0.25)):
        assert abs(priorities[name] / len(many) - share) < 0.05, priorities


def test_the_generator_is_varied(many):
    assert all(len(templates) >= 8 for templates in support._REQUESTS.values())
    assert len({t.text.split()[0] for t in many}) > 20  # openings differ: greetings, cues, requests
    assert len({t.text for t in many}) == len(many) and max(map(len, (t.text for t in many))) > 150


def test_one_keyword_does_not_solve_the_task(many):
    """Distractors name other intents, and some low-priority cues say 'urgent' or 'today'."""
    first_word = [next((w for w in re.findall(r"[a-z]+", t.text.lower()) if w in INTENTS), None) for t in many]
    mentioned = [(w, t) for w, t in zip(first_word, many) if w is not None]
    assert sum(w != t.intent for w, t in mentioned) > 0.1 * len(mentioned)
    urgent_word = [t for t in many if re.search(r"\b(urgent|today)\b", t.text.lower())]
    assert Counter(t.priority for t in urgent_word)["low"] > 0.1 * len(urgent_word)


def test_capitals_appear_only_in_urgent_tickets(many):
    shouting = [t for t in many if re.search(r"\b[A-Z]{2,}\b", t.text)]
    assert shouting and {t.priority for t in shouting} == {"urgent"}


def test_public_splits_are_disjoint_prefixes_of_the_public_pool():
    splits = public_splits()
    assert [len(splits["train"]), len(splits["validation"])] == [400, 100]
    assert not {t.text for t in splits["train"]} & {t.text for t in splits["validation"]}
    assert splits["train"] + splits["validation"] == make_tickets(500, PUBLIC_SEED)
    with pytest.raises(ValueError, match="n_train"):
        public_splits(n_train=PUBLIC_POOL, n_val=1)


def test_hidden_test_is_disjoint_from_public_data_and_keyed_by_the_secret():
    test = hidden_test("instructor secret")
    assert len(test) == 120 and len({t.text for t in test}) == 120
    assert not {t.text for t in test} & {t.text for t in make_tickets(PUBLIC_POOL, PUBLIC_SEED)}
    assert hidden_test("instructor secret") == test
    other = hidden_test("another secret")
    assert len({t.text for t in other} & {t.text for t in test}) < 10
    assert hidden_test("instructor secret", n=10) == test[:10]
    with pytest.raises(ValueError, match="secret"):
        hidden_test("")


def test_hidden_test_skips_public_texts_it_draws(monkeypatch):
    """A secret whose stream starts with public tickets still gets none of them."""
    public = make_tickets(PUBLIC_POOL, PUBLIC_SEED)
    monkeypatch.setattr(support, "_secret_seed", lambda secret: PUBLIC_SEED)  # the public stream itself
    test = hidden_test("x", n=20)
    assert len(test) == 20 and not {t.text for t in test} & {t.text for t in public}


def test_messages_and_rows():
    ticket = Ticket("My parcel is late. No rush.", "shipping", "low")
    assert prompt_messages(ticket) == [{"role": "system", "content": support.INSTRUCTION},
                                       {"role": "user", "content": ticket.text}]
    assert to_messages(ticket)[-1] == {"role": "assistant", "content": "shipping low"}
    assert "Reply with only the intent and the priority, separated by a space" in support.INSTRUCTION
    assert all(word in support.INSTRUCTION for word in INTENTS + PRIORITIES)
    rows = to_rows(make_tickets(5, seed=0))
    assert len(rows) == 5 and rows[0]["messages"][2]["role"] == "assistant"
    with pytest.raises(ValueError, match="row 0"):
        to_rows([Ticket(" ", "billing", "low")])  # an empty user turn is a bad row


@pytest.mark.parametrize("reply, expected", [
    ("refund urgent", ("refund", "urgent")),
    ("Refund, URGENT.", ("refund", "urgent")),
    ("urgent refund", ("refund", "urgent")),
    ("intent: billing\npriority: low", ("billing", "low")),
    ("shipping billing normal low", ("shipping", "normal")),
    ("refunds urgently", (None, None)),  # whole words only
    ("cancel", ("cancel", None)),
    ("", (None, None)),
    ("technical-normal", ("technical", "normal")),
])
def test_parse_reply(reply, expected):
    assert parse_reply(reply) == expected


def test_score_matches_a_hand_computed_macro_f1():
    tickets = [Ticket("a", "billing", "low"), Ticket("b", "billing", "urgent"), Ticket("c", "refund", "normal"),
               Ticket("d", "cancel", "low")]
    replies = ["billing low", "refund urgent", "refund normal", "no idea"]
    result = score(replies, tickets)
    # intent F1 per class: billing 2/3 (1 hit, 1 predicted, 2 true), refund 2/3 (1 hit, 2 predicted, 1 true),
    # cancel 0; the three classes that occur nowhere are left out (scikit-learn's macro average), and the invalid
    # reply is wrong but its class is not averaged: 4/3 / 3
    assert result["intent_f1"] == pytest.approx(4 / 9)
    # priority: low 2/3 (1 hit, 1 predicted, 2 true), normal 1, urgent 1
    assert result["priority_f1"] == pytest.approx(8 / 9)
    assert result["score"] == pytest.approx((4 / 9 + 8 / 9) / 2)
    assert (result["n"], result["invalid"]) == (4, 1)


def test_score_is_one_for_right_answers_and_checks_lengths():
    tickets = make_tickets(60, seed=5)
    assert score([t.answer() for t in tickets], tickets)["score"] == pytest.approx(1.0)
    assert score(["billing low"], [Ticket("x", "billing", "low")])["score"] == 1.0  # absent classes do not count
    assert score(["nothing"] * 60, tickets) == {"score": 0.0, "intent_f1": 0.0, "priority_f1": 0.0, "n": 60,
                                                "invalid": 60}
    with pytest.raises(ValueError, match="59 replies for 60 tickets"):
        score(["x"] * 59, tickets)


def test_notebook_08s_reference_metric_is_the_graders():
    """What 08's Exercise 2 teaches (its reference answer) scores exactly as the grader's `score` does."""
    import random
    import re as _re

    from course_lib.capstone import support
    from tests.helpers import cell_sources

    namespace = {"support": support}
    exec(_re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n", "", cell_sources("08_capstone")["triage_score"]), namespace)
    rng = random.Random(3)
    for n in (1, 5, 60):
        tickets = make_tickets(n, seed=n)
        replies = [rng.choice([t.answer(), "no idea", "billing", f"{rng.choice(support.INTENTS)} urgent"])
                   for t in tickets]
        mine, graders = namespace["triage_score"](replies, tickets), score(replies, tickets)
        for key in ("intent_f1", "priority_f1", "score"):
            assert mine[key] == pytest.approx(graders[key]), (n, key)
