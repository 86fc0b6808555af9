"""Model cards (course_lib.deployment.model_card): every field from the run's record, the base pinned by its hash."""

import dataclasses

import pytest

from course_lib.deployment import model_card


def _record(metrics=None):
    base = model_card.BaseRecord("default", "HuggingFaceTB/SmolLM2-135M-Instruct", "package", "sha256:abc", "/x")
    return model_card.CardRecord(
        model_name="smollm2-json-extractor", base=base, method="LoRA, merged", hyperparameters={"r": 16, "steps": 50},
        data="400 generated sentences (course_lib.core.tasks, seed 0)",
        metrics=metrics or [{"type": "exact_match", "value": 0.9, "ci95": [0.82, 0.95], "n": 100, "split": "test"}],
        intended_use="Extracting name, age, city and job from short English sentences.",
        limitations="Synthetic training data; not for real personal data.",
        provenance="generated from templates by course_lib; no real person's data",
        biases="English only; names and cities from short fixed lists",
        out_of_scope="decisions about real people; text in other languages")


def test_model_card_has_every_field_from_the_record(tmp_path):
    path = model_card.write_model_card(tmp_path, _record())
    text = path.read_text()
    header = model_card.read_card_header(text)
    assert header["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert header["base_model_revision"] == "sha256:abc"
    assert header["license"] == "apache-2.0"
    metric = header["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "exact_match" and metric["value"] == 0.9 and "0.82-0.95" in metric["name"]
    for section in ("## Method", "## Training data", "## Evaluation", "## Intended use", "## Limitations",
                    "## License", "| r | 16 |", "not for real personal data", "## Bias, risks and out-of-scope use",
                    "Provenance: generated from templates", "Known biases: English only",
                    "Do not use it for: decisions about real people"):
        assert section in text, section
    with pytest.raises(ValueError, match="ci95"):
        model_card.render_card(_record([{"type": "exact_match", "value": 0.9, "n": 10}]))
    with pytest.raises(ValueError, match="YAML header"):
        model_card.read_card_header("# just a title\n")
    for empty in ("provenance", "biases", "out_of_scope"):  # a card that skips responsible use is refused
        with pytest.raises(ValueError, match=f"'{empty}' is empty"):
            model_card.render_card(dataclasses.replace(_record(), **{empty: "  "}))


def test_pin_revision_records_the_weights_hash():
    first = model_card.pin_revision("default")
    assert first.revision.startswith("sha256:") and len(first.revision) == 7 + 64
    assert first.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_card.pin_revision("default").revision == first.revision
    with pytest.raises(ValueError, match="revision"):
        model_card.pin_revision("default", revision="main")
