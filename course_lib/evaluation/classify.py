"""Text classification with an encoder: a generated labelled task, LoRA on attention, and its metrics.

The task: short customer messages in four classes. Every message is generated from a seed, so the splits
repeat exactly and share no text. A fraction of messages mention a second topic in passing ("I already reset
my password, but my card was charged twice"), so the classes overlap a little and the confusion matrix has
something to show. The classifier is the default encoder (all-MiniLM-L6-v2) loaded with
`AutoModelForSequenceClassification`; LoRA adapts its attention projections and the new classification head
is trained in full (`modules_to_save`), because a fresh head has nothing to adapt from.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer

from course_lib.core.models import load_encoder
from course_lib.core.runtime import detect_device
from course_lib.core.tasks import distinct
from course_lib.training.callbacks import LossHistory, ProgressBar
from course_lib.training.config import TrainConfig

LABELS = ("billing", "delivery", "technical", "account")

_TOPICS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for my last order", "my invoice shows the wrong amount", "the refund never reached my card",
        "why did my monthly fee go up", "I need a copy of the receipt for March", "the payment failed but money left my account",
        "please cancel the extra charge on my bill", "the discount code was not applied to the price",
    ],
    "delivery": [
        "my parcel has not arrived yet", "the courier left the box at the wrong address", "tracking says delivered but nothing came",
        "the package arrived damaged", "can I change the delivery date", "the shipment is stuck at the depot",
        "only half of the items were in the box", "the driver never rang the bell",
    ],
    "technical": [
        "the app crashes when I open settings", "the website shows an error page", "my device will not connect to wifi",
        "the update froze my screen", "the sync button does nothing", "the software keeps logging a timeout",
        "the battery drains after the firmware update", "the page loads forever on my phone",
    ],
    "account": [
        "I cannot log in to my profile", "please reset my password", "how do I change the email on my account",
        "my account was locked after three attempts", "I want to delete my profile", "someone else used my login",
        "the two-factor code never arrives", "please update the name on my account",
    ],
}
_ASIDES: dict[str, list[str]] = {
    "billing": ["my card was charged already", "I paid the invoice"],
    "delivery": ["the parcel came yesterday", "the courier was on time"],
    "technical": ["the app works fine otherwise", "I updated the software"],
    "account": ["I reset my password already", "I am logged in"],
}
_OPENERS = ["", "Hi,", "Hello team,", "Good morning.", "Hey there,", "Dear support,", "Quick question:", "Urgent:"]
_CLOSERS = ["", "Thanks.", "Please help.", "Can you look into it?", "This is the second time.", "Regards.", "Any update?"]


@dataclass(frozen=True)
class TextExample:
    """One labelled message: its text and the index of its class in LABELS."""

    text: str
    label: int

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


def _sample(rng: random.Random, aside_rate: float) -> TextExample:
    label = rng.randrange(len(LABELS))
    core = rng.choice(_TOPICS[LABELS[label]])
    if rng.random() < aside_rate:  # a mention of another topic that does not change the label
        other = rng.choice([i for i in range(len(LABELS)) if i != label])
        aside = rng.choice(_ASIDES[LABELS[other]])
        core = f"{aside}, but {core}" if rng.random() < 0.5 else f"{core}, although {aside}"
    text = " ".join(part for part in (rng.choice(_OPENERS), core[0].upper() + core[1:] + ".", rng.choice(_CLOSERS)) if part)
    return TextExample(text=text, label=label)


def make_examples(n: int, seed: int = 0, aside_rate: float = 0.3) -> list[TextExample]:
    """`n` distinct labelled messages from a seeded generator."""
    rng = random.Random(seed)
    return distinct(lambda: _sample(rng, aside_rate), n, what="messages")


def make_splits(n_train: int = 400, n_val: int = 100, n_test: int = 200, seed: int = 0,
                label_noise: float = 0.0) -> dict[str, list[TextExample]]:
    """Train/validation/test splits with no shared text; `label_noise` flips that fraction of training labels."""
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), not {label_noise}")
    examples = make_examples(n_train + n_val + n_test, seed=seed)
    train = examples[:n_train]
    if label_noise:  # noisy labels give a model something to memorize: the overfitting demo uses it
        rng = random.Random(seed + 1)
        train = [TextExample(e.text, rng.choice([i for i in range(len(LABELS)) if i != e.label]))
                 if rng.random() < label_noise else e for e in train]
    return {"train": train, "validation": examples[n_train : n_train + n_val], "test": examples[n_train + n_val :]}


# -------------------------------------------------------------------------------------------------- model


ATTENTION = ["query", "key", "value"]  # the attention projections of a BERT-style encoder


HEAD = "classifier"  # the new linear layer AutoModelForSequenceClassification puts on a BERT-style encoder


def name_labels(model, num_labels: int = len(LABELS)) -> None:
    """Give the model's config the course's class names (id2label, label2id), when there are that many."""
    if num_labels <= len(LABELS):
        model.config.id2label = dict(enumerate(LABELS[:num_labels]))
    model.config.label2id = {n: i for i, n in model.config.id2label.items()}


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.0) -> LoraConfig:
    """LoRA on the attention projections; the fresh head is trained in full (`modules_to_save`)."""
    return LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=ATTENTION, modules_to_save=[HEAD])


def load_classifier(name: str = "minilm", num_labels: int = len(LABELS), lora: bool = True, r: int = 8,
                    alpha: int = 16, dropout: float = 0.0, seed: int = 0):
    """The encoder with a fresh classification head; with `lora`, LoRA on attention and the head trained in full."""

    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = load_encoder(name, num_labels=num_labels)
    name_labels(model, num_labels)
    if lora:
        model = get_peft_model(model, lora_config(r, alpha, dropout))
    return model, tokenizer


def encode(examples: Sequence[TextExample], tokenizer, max_length: int = 64) -> list[dict]:
    """Tokenized rows with an integer `labels` field, ready for the Trainer."""
    rows = []
    for i, example in enumerate(examples):
        if not 0 <= example.label < len(LABELS):
            raise ValueError(f"example {i} has label {example.label}, outside 0..{len(LABELS) - 1}")
        encoded = tokenizer(example.text, truncation=True, max_length=max_length)
        rows.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": example.label})
    return rows


@dataclass
class ClassifierRun:
    """A classification training run: the model, and its training and validation loss curves."""

    model: object
    history: list[dict]
    eval_history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def train_classifier(model, tokenizer, train: Sequence[TextExample], validation: Sequence[TextExample] | None = None,
                     steps: int = 60, batch_size: int = 16, learning_rate: float = 1e-3, eval_every: int = 10,
                     warmup_steps: int = 0, weight_decay: float = 0.0, seed: int = 0, progress: bool = True,
                     desc: str = "training") -> ClassifierRun:
    """Train with the Hugging Face Trainer; with `validation`, the validation loss every `eval_every` steps."""


    if not train:
        raise ValueError("no training examples given")
    rows = encode(train, tokenizer)
    eval_rows = encode(validation, tokenizer) if validation else None
    config = TrainConfig(max_steps=steps, per_device_batch_size=batch_size, learning_rate=learning_rate,
                         warmup_steps=warmup_steps, schedule="constant" if not warmup_steps else "linear",
                         weight_decay=weight_decay, precision="fp32", seed=seed, logging_steps=1,
                         eval_strategy="steps" if eval_rows else "no", eval_steps=eval_every if eval_rows else None)
    # The accelerator if there is one: a freshly loaded encoder sits on the CPU, and use_cpu would keep it there.
    device = detect_device().type
    history, bar = LossHistory(), ProgressBar(progress, desc)
    with tempfile.TemporaryDirectory(prefix="course-cls-") as out:
        args = config.to_training_arguments(output_dir=out, device=device, check=False)
        trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=eval_rows,
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=[bar, history])
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        try:
            trainer.train()
        finally:
            if bar.bar is not None:
                bar.bar.close()
        seconds = time.perf_counter() - started
    model.eval()
    return ClassifierRun(model=model, history=history.train, eval_history=history.eval, seconds=seconds)


def predict(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 64) -> list[int]:
    """The predicted class index of each text."""

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        with torch.no_grad():
            out.extend(model(**batch).logits.argmax(-1).tolist())
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------ metrics


def _check_labels(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_pred)} predictions for {len(y_true)} labels")
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if not (0 <= t < num_classes and 0 <= p < num_classes):
            raise ValueError(f"example {i}: label {t} or prediction {p} outside 0..{num_classes - 1}")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = len(LABELS)) -> list[list[int]]:
    """Counts: row = true class, column = predicted class (sklearn's convention)."""
    _check_labels(y_true, y_pred, num_classes)
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred):
        matrix[t][p] += 1
    return matrix


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of predictions equal to the label."""
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"need equal, non-zero lengths: {len(y_true)} labels, {len(y_pred)} predictions")
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def per_class_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = len(LABELS)) -> list[float]:
    """F1 of each class; a class with no true and no predicted example gets 0 (sklearn's zero_division=0)."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    scores = []
    for c in range(num_classes):
        tp = matrix[c][c]
        predicted = sum(matrix[r][c] for r in range(num_classes))
        actual = sum(matrix[c])
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + actual): no 0/0 unless the class never appears
        scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return scores


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = len(LABELS)) -> float:
    """Unweighted mean of the per-class F1 scores: every class counts the same, however rare."""
    scores = per_class_f1(y_true, y_pred, num_classes)
    return sum(scores) / len(scores)


def chance_level(y_train: Sequence[int], y_test: Sequence[int], num_classes: int = len(LABELS)) -> dict[str, float]:
    """What no learning gets: uniform guessing, and always answering the training set's most common class."""
    if not y_train or not y_test:
        raise ValueError("chance level needs training and test labels")
    majority = max(range(num_classes), key=lambda c: (list(y_train).count(c), -c))
    return {"uniform": 1 / num_classes, "majority": sum(t == majority for t in y_test) / len(y_test),
            "majority_class": majority}


def diagnose_run(train_losses: Sequence[float], val_losses: Sequence[float], num_classes: int) -> str:
    """'overfit', 'underfit' or 'good' for a classifier's run, judged against chance rather than its own start.

    Overfit: the last validation loss is more than 10% above the run's lowest. Underfit: the last training loss is
    still above 90% of ln(num_classes), the cross-entropy of a uniform guess over the classes.
    """
    if not train_losses or not val_losses:
        raise ValueError("diagnose_run needs training and validation losses")
    if val_losses[-1] > 1.1 * min(val_losses):
        return "overfit"
    if train_losses[-1] > 0.9 * math.log(num_classes):
        return "underfit"
    return "good"


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracy, macro-F1, the confusion matrix and the chance levels of one evaluation."""

    accuracy: float
    macro_f1: float
    per_class_f1: list[float]
    matrix: list[list[int]]
    chance: dict[str, float]

    def __str__(self) -> str:
        return (f"accuracy {self.accuracy:.1%}, macro-F1 {self.macro_f1:.3f} "
                f"(chance: uniform {self.chance['uniform']:.1%}, majority class {self.chance['majority']:.1%})")


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], y_train: Sequence[int],
                          num_classes: int = len(LABELS)) -> ClassificationReport:
    """Every classification number the course reports, in one object."""
    return ClassificationReport(accuracy(y_true, y_pred), macro_f1(y_true, y_pred, num_classes),
                                per_class_f1(y_true, y_pred, num_classes), confusion_matrix(y_true, y_pred, num_classes),
                                chance_level(y_train, y_true, num_classes))
