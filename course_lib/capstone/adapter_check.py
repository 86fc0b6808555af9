"""What a submitted capstone adapter may be: a plain LoRA adapter of the course's base model, in safetensors.

`check_adapter` reads only the folder listing, the JSON config and the safetensors header (no tensor data, no
pickle, no model weights) and returns every problem as a sentence, so that the grader can refuse a submission before
peft loads it and the learner learns all that is wrong at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from transformers import AutoConfig

from course_lib.core.models import ALL_LINEAR, find_spec, resolve

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DTYPES = ("F32", "F16", "BF16")  # safetensors' names for float32, float16, bfloat16
MAX_LISTED = 8  # per-tensor problems reported before "... and N more": one bad rank would otherwise give 420 lines

# Config fields that switch on something other than plain LoRA weights on the target layers, and why each is refused.
_REFUSED_FIELDS = {
    "modules_to_save": "it saves whole trained layers, not LoRA weights",
    "trainable_token_indices": "it trains token embeddings, not LoRA weights",
    "use_dora": "DoRA adds magnitude vectors the capstone does not accept",
    "layer_replication": "it changes the base model's layers",
    "target_parameters": "it puts LoRA on raw parameters, not on the linear layers",
    "lora_bias": "it adds trained biases",
    "fan_in_fan_out": "it is for Conv1D layers, which the course model does not have",
    "alora_invocation_tokens": "activated LoRA changes when the adapter applies",
    "use_qalora": "QA-LoRA is not plain LoRA",
    "use_bdlora": "block-diagonal LoRA is not plain LoRA",
    "megatron_config": "it imports Megatron layers",
    "loftq_config": "LoftQ initialisation changes the base weights when the adapter loads",
    "eva_config": "it needs an initialisation step",
    "corda_config": "it needs an initialisation step",
    "arrow_config": "Arrow routing is not plain LoRA",
}
_TENSOR = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")


@dataclass(frozen=True)
class AdapterLimits:
    """The limits a submitted adapter folder must keep."""

    max_rank: int = 64
    targets: tuple[str, ...] = ALL_LINEAR
    max_bytes: int = 64 * 2**20  # per file and in total
    files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE)  # required
    optional: tuple[str, ...] = ("README.md",)  # peft's save_pretrained writes a model card


LIMITS = AdapterLimits()


@dataclass(frozen=True)
class BaseShapes:
    """The base model's LoRA-relevant shapes: its layer count and (parent, in, out) of each linear layer."""

    layers: int
    modules: dict[str, tuple[str, int, int]]


def base_shapes(base: str = "default") -> BaseShapes:
    """The shapes of the base's linear layers, from its config alone (no weights are loaded)."""
    path, extra = resolve(base)
    config = AutoConfig.from_pretrained(path, **extra)
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    kv_out *= head_dim
    modules = {
        "q_proj": ("self_attn", hidden, q_out), "k_proj": ("self_attn", hidden, kv_out),
        "v_proj": ("self_attn", hidden, kv_out), "o_proj": ("self_attn", q_out, hidden),
        "gate_proj": ("mlp", hidden, inter), "up_proj": ("mlp", hidden, inter), "down_proj": ("mlp", inter, hidden),
    }
    return BaseShapes(layers=config.num_hidden_layers, modules=modules)


def base_names(base: str = "default") -> tuple[set[str], str]:
    """(the last path components that name the base, how to name it in a message).

    peft saves the path the base was loaded from: a converted cache folder here ('smollm2-135m-0.1.2'), the hub id
    on Colab, another folder on the grader's machine. So the last component decides, not the whole path.
    """
    if Path(base).expanduser().is_dir():
        name = Path(base).expanduser().resolve().name
        return {name.lower()}, name
    spec = find_spec(base)
    if spec is None:
        return {base.rstrip("/").split("/")[-1].lower()}, base
    return {spec.key.lower(), spec.hub_id.split("/")[-1].lower()}, f"{spec.key} ({spec.hub_id})"


def _names_base(value: str, names: set[str]) -> bool:
    last = re.split(r"[\\/]", value.rstrip("/\\"))[-1].lower()
    # a converted cache folder is '<key>-<package version>', e.g. smollm2-135m-0.1.2
    return last in names or any(re.fullmatch(re.escape(n) + r"-\d[\w.+]*", last) for n in names)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------- files


def _check_files(folder: Path, limits: AdapterLimits) -> tuple[list[str], set[str]]:
    """(problems of the listing, the required files that are present as regular files within the size limit)."""
    problems: list[str] = []
    usable: set[str] = set()
    allowed = set(limits.files) | set(limits.optional)
    total = 0
    for entry in sorted(folder.iterdir()):
        name = entry.name
        info = os.lstat(entry)  # lstat: a link is judged as a link, never followed
        if stat.S_ISLNK(info.st_mode):
            problems.append(f"{name} is a symbolic link; links are refused, copy the file itself.")
            continue
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            problems.append(f"{name} is {kind}; an adapter folder holds only regular files.")
            continue
        if name.lower().endswith(PICKLE_SUFFIXES):
            problems.append(f"{name}: pickle files are refused (loading one can run code); save the adapter with "
                            f"safetensors (peft's save_pretrained does by default).")
            continue
        if name not in allowed:
            problems.append(f"{name} is not allowed in an adapter folder; only {', '.join(sorted(allowed))} may be "
                            f"there.")
            continue
        total += info.st_size
        if info.st_size > limits.max_bytes:
            problems.append(f"{name} is {info.st_size / 2**20:.1f} MiB, over the limit of "
                            f"{limits.max_bytes / 2**20:.0f} MiB.")
        elif name in limits.files:
            usable.add(name)
    if total > limits.max_bytes:
        problems.append(f"the files total {total / 2**20:.1f} MiB, over the limit of {limits.max_bytes / 2**20:.0f} MiB.")
    for name in limits.files:
        if not (folder / name).exists() and not (folder / name).is_symlink():
            problems.append(f"{name} is missing; save the adapter with model.save_pretrained(folder).")
    return problems, usable


# ------------------------------------------------------------------------------------------------ config


def _read_config(path: Path) -> tuple[dict | None, list[str]]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        return None, [f"{CONFIG_FILE} is not valid JSON: {error}."]
    if not isinstance(config, dict):
        return None, [f"{CONFIG_FILE} must hold a JSON object, not a {type(config).__name__}."]
    return config, []


def _ranks(config: dict, limits: AdapterLimits) -> tuple[set[int], list[str]]:
    """(the ranks the weights may have, problems of r, rank_pattern, lora_alpha and alpha_pattern)."""
    problems: list[str] = []
    ranks: set[int] = set()
    r = config.get("r")
    if not _is_int(r) or not 1 <= r <= limits.max_rank:
        problems.append(f"r is {r!r}; it must be a whole number from 1 to {limits.max_rank}.")
    else:
        ranks.add(r)
    for field_name, is_rank in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = config.get(field_name) or {}
        if not isinstance(pattern, dict):
            problems.append(f"{field_name} must be an object of module name -> number, not {pattern!r}.")
            continue
        for key, value in pattern.items():
            if is_rank and (not _is_int(value) or not 1 <= value <= limits.max_rank):
                problems.append(f"rank_pattern gives {key!r} rank {value!r}; every rank must be a whole number "
                                f"from 1 to {limits.max_rank}.")
            elif is_rank:
                ranks.add(value)
            elif not _is_number(value) or value <= 0:
                problems.append(f"alpha_pattern gives {key!r} alpha {value!r}; it must be a positive number.")
    alpha = config.get("lora_alpha", 8)
    if not _is_number(alpha) or alpha <= 0:
        problems.append(f"lora_alpha is {alpha!r}; it must be a positive number.")
    return ranks, problems


def _targets(config: dict, limits: AdapterLimits) -> tuple[set[str], list[str]]:
    """(the module names the adapter targets, problems of target_modules)."""
    targets = config.get("target_modules")
    allowed = ", ".join(limits.targets)
    if targets == "all-linear" and set(ALL_LINEAR) <= set(limits.targets):
        return set(ALL_LINEAR), []  # peft's shorthand: every linear layer but the output layer
    if isinstance(targets, str):
        return set(), [f"target_modules is the string {targets!r}; peft reads a string as a regular expression over "
                       f"full module paths. Give a list of module names from: {allowed}."]
    if not isinstance(targets, list) or not targets:
        return set(), [f"target_modules is {targets!r}; it must be a non-empty list of module names from: {allowed}."]
    wrong = [t for t in targets if not isinstance(t, str) or t not in limits.targets]
    if wrong:
        return set(), [f"target_modules names {wrong!r}, outside the allowed modules: {allowed}."]
    return set(targets), []


def _layers(config: dict, shapes: BaseShapes) -> tuple[set[int], list[str]]:
    """(the layer indices the adapter may touch, problems of layers_to_transform and layers_pattern)."""
    problems: list[str] = []
    layers = config.get("layers_to_transform")
    everything = set(range(shapes.layers))
    if layers is None:
        chosen = everything
    elif _is_int(layers):
        chosen = {layers}
    elif isinstance(layers, list) and layers and all(_is_int(x) for x in layers):
        chosen = set(layers)
    else:
        return everything, [f"layers_to_transform is {layers!r}; it must be null, a layer index or a list of them."]
    if chosen - everything:
        problems.append(f"layers_to_transform names layers {sorted(chosen - everything)}; the base has layers 0 to "
                        f"{shapes.layers - 1}.")
    pattern = config.get("layers_pattern")
    if not (pattern is None or isinstance(pattern, str)
            or (isinstance(pattern, list) and all(isinstance(p, str) for p in pattern))):
        problems.append(f"layers_pattern is {pattern!r}; it must be null, a name or a list of names.")
    return chosen & everything, problems


def check_config(config: dict, limits: AdapterLimits = LIMITS, base: str = "default",
                 shapes: BaseShapes | None = None) -> list[str]:
    """The problems of an adapter config (a parsed adapter_config.json), empty when fine."""
    shapes = shapes or base_shapes(base)
    problems: list[str] = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; only LoRA adapters (\"LORA\") are accepted.")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        problems.append(f"task_type is {config.get('task_type')!r}; the capstone model is a causal LM (\"CAUSAL_LM\").")
    problems += _ranks(config, limits)[1] + _targets(config, limits)[1] + _layers(config, shapes)[1]
    for name, why in _REFUSED_FIELDS.items():
        if config.get(name):
            problems.append(f"{name} is set ({config[name]!r:.60}); it is refused because {why}.")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}; only \"none\" is accepted (no trained biases).")
    if not isinstance(config.get("init_lora_weights", True), bool):
        problems.append(f"init_lora_weights is {config.get('init_lora_weights')!r}; initialisations other than "
                        f"true/false change the base weights when the adapter loads.")
    base_value = config.get("base_model_name_or_path")
    names, described = base_names(base)
    if not isinstance(base_value, str) or not base_value.strip():
        problems.append(f"base_model_name_or_path is {base_value!r}; it must name the course's base model, {described}.")
    elif not _names_base(base_value, names):
        problems.append(f"base_model_name_or_path is {base_value!r}, not the course's base model {described}; "
                        f"train the adapter on that model.")
    return problems


# ------------------------------------------------------------------------------------------------ weights


def check_weights(path: Path, config: dict, limits: AdapterLimits = LIMITS, base: str = "default",
                  shapes: BaseShapes | None = None) -> list[str]:
    """The problems of adapter_model.safetensors against its config and the base, read from the header only."""
    shapes = shapes or base_shapes(base)
    ranks, _ = _ranks(config, limits)
    targets, _ = _targets(config, limits)
    layers, _ = _layers(config, shapes)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {name: (handle.get_slice(name).get_dtype(), list(handle.get_slice(name).get_shape()))
                      for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for a broken header
        return [f"{WEIGHTS_FILE} is not a readable safetensors file: {error}."]
    if not header:
        return [f"{WEIGHTS_FILE} holds no tensors; train the adapter before saving it."]
    problems: list[str] = []
    pairs: dict[tuple[int, str], dict[str, list[int]]] = {}
    for name, (dtype, shape) in sorted(header.items()):
        found = _TENSOR.fullmatch(name)
        if found is None:
            problems.append(f"tensor {name} is not a LoRA weight (…layers.N.self_attn|mlp.MODULE.lora_A|lora_B.weight).")
            continue
        layer, parent, module, side = int(found[1]), found[2], found[3], found[4]
        if module not in limits.targets or module not in shapes.modules or shapes.modules[module][0] != parent:
            problems.append(f"tensor {name} adapts {parent}.{module}, which is not an allowed target.")
            continue
        if module not in targets:
            problems.append(f"tensor {name} adapts {module}, which target_modules does not list.")
            continue
        if layer not in layers:
            problems.append(f"tensor {name} is in layer {layer}, outside the layers the config and base allow.")
            continue
        if dtype not in DTYPES:
            problems.append(f"tensor {name} has dtype {dtype}; only float32, float16 and bfloat16 are accepted.")
            continue
        if len(shape) != 2:
            problems.append(f"tensor {name} has shape {shape}; LoRA weights are matrices.")
            continue
        pairs.setdefault((layer, module), {})[side] = shape
    for (layer, module), sides in sorted(pairs.items()):
        _, fan_in, fan_out = shapes.modules[module]
        where = f"layer {layer} {module}"
        if set(sides) != {"A", "B"}:
            problems.append(f"{where} has lora_{''.join(sides)} but not lora_{'B' if 'A' in sides else 'A'}.")
            continue
        (rank_a, width), (height, rank_b) = sides["A"], sides["B"]
        if rank_a != rank_b or rank_a not in ranks:
            problems.append(f"{where}: lora_A has rank {rank_a} and lora_B rank {rank_b}; the config allows "
                            f"{sorted(ranks) or 'no valid rank'}.")
        if width != fan_in or height != fan_out:
            problems.append(f"{where}: lora_A is {sides['A']} and lora_B {sides['B']}, but the base layer maps "
                            f"{fan_in} -> {fan_out} (expected [r, {fan_in}] and [{fan_out}, r]).")
    if len(problems) > MAX_LISTED:
        problems = problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more problems with the weights."]
    return problems


# ----------------------------------------------------------------------------------------------- together


def check_adapter(folder: Path, limits: AdapterLimits = LIMITS, base: str = "default") -> list[str]:
    """Every problem of a submitted adapter folder, one sentence each; empty when it may be loaded and scored."""
    folder = Path(folder)
    if folder.is_symlink():
        return [f"the adapter folder {folder} is a symbolic link; submit the folder itself."]
    if not folder.exists():
        return [f"the adapter folder {folder} does not exist."]
    if not folder.is_dir():
        return [f"{folder} is not a folder; an adapter is a folder holding {' and '.join(limits.files)}."]
    problems, usable = _check_files(folder, limits)
    if CONFIG_FILE not in usable:
        return problems
    config, config_problems = _read_config(folder / CONFIG_FILE)
    problems += config_problems
    if config is None:
        return problems
    shapes = base_shapes(base)
    problems += check_config(config, limits, base, shapes)
    if WEIGHTS_FILE in usable:
        problems += check_weights(folder / WEIGHTS_FILE, config, limits, base, shapes)
    return problems
