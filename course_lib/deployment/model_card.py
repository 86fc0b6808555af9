"""Pinned revisions and model cards: record exactly which base was used, and write a card from the run's records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import snapshot_download

from course_lib.core.models import find_spec, resolve


@dataclass(frozen=True)
class BaseRecord:
    """Which base model a run used, pinned: a hub commit, or a package version plus the weights' sha256."""

    name: str  # what the learner asked for ("default", a hub id or a folder)
    hub_id: str  # the canonical id to write in the card
    source: str  # "hub", "package" or "folder"
    revision: str  # the exact revision: a hub commit hash, or "sha256:<hash of the weights>"
    path: str  # where the weights were loaded from


def weights_sha256(folder: str | Path) -> str:
    """sha256 over every *.safetensors file of a folder (sorted by name): a content revision for local weights."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors file to fingerprint")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def pin_revision(name: str = "default", revision: str | None = None) -> BaseRecord:
    """Resolve `name` to the exact weights a load would use, honouring a requested hub `revision`.

    Hub models are fetched at `revision` (a branch, tag or commit); the snapshot folder's name is the commit hash,
    so that is what gets recorded. Local weights (the packaged copy, a folder) have no hub commit: their
    revision is the sha256 of the safetensors files, which changes whenever a single weight does.
    """

    path, _ = resolve(name)
    spec = find_spec(name)
    hub_id = spec.hub_id if spec else name
    if Path(path).is_dir():
        if revision is not None:
            raise ValueError(f"{name!r} resolves to the local folder {path}; a hub revision ({revision!r}) cannot "
                             "pin it. Set COURSE_MODEL_SOURCE=hub to load that revision from the hub.")
        source = "package" if spec and spec.package else "folder"
        return BaseRecord(name, hub_id, source, "sha256:" + weights_sha256(path), path)

    folder = snapshot_download(path, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    return BaseRecord(name, hub_id, "hub", Path(folder).name, folder)


@dataclass
class CardRecord:
    """Everything a model card states, taken from the run itself (not typed in by hand afterwards)."""

    model_name: str
    base: BaseRecord
    method: str  # e.g. "LoRA (peft), merged into the base"
    hyperparameters: dict
    data: str  # where the training data came from and its size
    metrics: list[dict]  # {"type", "value", "ci95": [lo, hi], "n", "split"}
    intended_use: str
    limitations: str
    provenance: str  # where the rows came from, under which terms, and whether they hold personal data
    biases: str  # what the data and the base model are known to over- or under-represent
    out_of_scope: str  # uses the model must not be put to
    license: str = "apache-2.0"  # the base model's license; a fine-tune inherits it
    tags: list[str] = field(default_factory=lambda: ["lora", "peft", "fine-tuning-course"])


RESPONSIBLE_USE = {
    "provenance": "say where the training rows came from, under which terms, and whether they hold personal data",
    "biases": "say what the data and the base model over- or under-represent (languages, names, topics)",
    "out_of_scope": "say which uses the model must not be put to",
}


def card_header(record: CardRecord) -> dict:
    """The YAML metadata of the card, in the Hugging Face model-card fields."""
    results = [{
        "task": {"type": "text-generation", "name": record.model_name},
        "dataset": {"name": m.get("split", "test"), "type": "custom"},
        "metrics": [{"type": m["type"], "value": round(float(m["value"]), 4),
                     "name": f"{m['type']} (95% CI {m['ci95'][0]:.2f}-{m['ci95'][1]:.2f}, n={m['n']})"}],
    } for m in record.metrics]
    return {
        "license": record.license,
        "base_model": record.base.hub_id,
        "base_model_revision": record.base.revision,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": list(record.tags),
        "model-index": [{"name": record.model_name, "results": results}],
    }


def render_card(record: CardRecord) -> str:
    """The model card text: a YAML header, then the sections a reader needs before using the model."""

    for name in RESPONSIBLE_USE:
        if not str(getattr(record, name)).strip():
            raise ValueError(f"the card's {name!r} is empty: {RESPONSIBLE_USE[name]}")
    for i, metric in enumerate(record.metrics):
        missing = {"type", "value", "ci95", "n"} - set(metric)
        if missing:
            raise ValueError(f"metric {i} lacks {sorted(missing)}: a card reports every metric with its interval")
    header = yaml.safe_dump(card_header(record), sort_keys=False, allow_unicode=True)
    hyper = "\n".join(f"| {k} | {v} |" for k, v in record.hyperparameters.items())
    metrics = "\n".join(f"| {m['type']} | {m.get('split', 'test')} | {m['value']:.3f} | "
                        f"{m['ci95'][0]:.3f} - {m['ci95'][1]:.3f} | {m['n']} |" for m in record.metrics)
    return f"""---
{header}---

# {record.model_name}

Fine-tuned from [{record.base.hub_id}](https://huggingface.co/{record.base.hub_id}) at revision
`{record.base.revision}` (loaded from the {record.base.source}).

## Method

{record.method}

| hyperparameter | value |
| --- | --- |
{hyper}

## Training data

{record.data}

Provenance: {record.provenance}

## Evaluation

| metric | split | value | 95% CI | n |
| --- | --- | --- | --- | --- |
{metrics}

## Intended use

{record.intended_use}

## Limitations

{record.limitations}

## Bias, risks and out-of-scope use

Known biases: {record.biases}

Do not use it for: {record.out_of_scope}

## License

{record.license}, inherited from the base model.
"""


def write_model_card(folder: str | Path, record: CardRecord) -> Path:
    """Write README.md (the model card) into a saved model or adapter folder; returns its path."""
    path = Path(folder) / "README.md"
    path.write_text(render_card(record), encoding="utf-8")
    return path


def read_card_header(text: str) -> dict:
    """The YAML metadata of a model card's text; a clear error when the card has none."""

    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("the model card does not start with a YAML header (a line '---')")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ValueError("the model card's YAML header is not closed by a line '---'") from None
    header = yaml.safe_load("\n".join(lines[1:end])) or {}
    if not isinstance(header, dict):
        raise ValueError("the model card's YAML header is not a mapping")
    return header
