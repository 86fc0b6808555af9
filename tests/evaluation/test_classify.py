"""The classification task, its metrics (against hand-computed cases) and the real encoder with LoRA."""

import pytest

from course_lib.evaluation import classify


def test_generator_is_seeded_balanced_enough_and_splits_do_not_overlap():
    a, b = classify.make_splits(80, 20, 40, seed=1), classify.make_splits(80, 20, 40, seed=1)
    assert a == b
    texts = [set(e.text for e in a[k]) for k in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    labels = [e.label for e in a["train"]]
    assert set(labels) == set(range(len(classify.LABELS)))
    noisy = classify.make_splits(80, 20, 40, seed=1, label_noise=0.5)
    flipped = sum(x.label != y.label for x, y in zip(a["train"], noisy["train"]))
    assert 20 < flipped < 60
    assert noisy["test"] == a["test"]  # noise touches training labels only
    with pytest.raises(ValueError, match="label_noise"):
        classify.make_splits(label_noise=1.0)


def test_metrics_on_a_hand_computed_case():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0, 2]
    assert classify.confusion_matrix(y_true, y_pred) == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 3, 0], [0, 0, 1, 0]]
    assert classify.accuracy(y_true, y_pred) == 0.6
    # class 0: P 2/3 R 2/3 F 2/3; class 1: P 1/2 R 1/2 F 1/2; class 2: P 3/5 R 3/4 F 2/3; class 3: F 0
    assert classify.per_class_f1(y_true, y_pred) == pytest.approx([2 / 3, 1 / 2, 2 / 3, 0.0])
    assert classify.macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 4)
    chance = classify.chance_level([2, 2, 1], y_true)
    assert chance == {"uniform": 0.25, "majority": 0.4, "majority_class": 2}
    with pytest.raises(ValueError, match="example 0"):
        classify.confusion_matrix([7], [0])


def test_macro_f1_matches_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    import random

    rng = random.Random(0)
    y_true = [rng.randrange(4) for _ in range(200)]
    y_pred = [t if rng.random() < 0.6 else rng.randrange(4) for t in y_true]
    assert classify.macro_f1(y_true, y_pred) == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))
    assert classify.confusion_matrix(y_true, y_pred) == metrics.confusion_matrix(y_true, y_pred).tolist()


def test_lora_classifier_on_the_real_encoder_trains_only_adapters_and_head():
    model, tokenizer = classify.load_classifier(r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable)
    assert any("lora_A" in n and ".query." in n for n in trainable)
    assert all("lora_" in n or "classifier" in n for n in trainable)
    assert not any("value" in n and "lora" not in n for n in trainable)
    splits = classify.make_splits(32, 16, 16, seed=0)
    head_before = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" in n and p.requires_grad}
    run = classify.train_classifier(model, tokenizer, splits["train"], splits["validation"], steps=4, batch_size=8,
                             learning_rate=5e-3, eval_every=2, progress=False)
    assert [r["step"] for r in run.history] == [1, 2, 3, 4]
    assert [r["step"] for r in run.eval_history] == [2, 4]
    assert any(not p.detach().equal(head_before[n]) for n, p in model.named_parameters() if n in head_before)
    predictions = classify.predict(model, tokenizer, [e.text for e in splits["test"]], batch_size=5)
    assert len(predictions) == 16 and all(0 <= p < 4 for p in predictions)
    report = classify.classification_report([e.label for e in splits["test"]], predictions, [e.label for e in splits["train"]])
    assert sum(map(sum, report.matrix)) == 16 and "chance" in str(report)


def test_diagnose_run_judges_against_chance_not_the_first_loss():
    assert classify.diagnose_run([1.4, 0.6, 0.2], [1.3, 1.0, 1.6], 4) == "overfit"
    assert classify.diagnose_run([4.0, 2.0, 1.3], [3.5, 1.8, 1.3], 4) == "underfit"  # halved, but no better than chance
    assert classify.diagnose_run([0.70, 0.6, 0.5], [0.7, 0.6, 0.55], 2) == "good"  # never halved, past chance (0.69)
    with pytest.raises(ValueError):
        classify.diagnose_run([], [1.0], 4)
