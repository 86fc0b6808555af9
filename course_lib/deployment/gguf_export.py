"""GGUF export: one file holding a merged Llama-family model, its tokenizer and chat template, for llama.cpp.

Built on the `gguf` package's writer (the library llama.cpp's own converter uses). What the course writes by hand
is only what a learner should understand: which of our tensors becomes which GGUF tensor, the one layout change
(the rotary halves of q and k), which tensors are quantized to which type, and which tokenizer facts llama.cpp
needs so the file runs with no extra flags.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM

# The types this module writes, and what the weight matrices become in each.
GGUF_TYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
}
_FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
               "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}
# The largest |logit difference| we accept between a merged float32 model and its GGUF file read back, on
# adapters.check_batch (logits of about ±40). Measured on the course's fine-tune (notebook 06, section 13): f16
# rounds each weight to 11 bits; q8_0 keeps 8 bits per weight with one scale per 32; the 4-bit types lose more,
# so for them the test that counts is the task metric in llama.cpp, not a logit bound.
GGUF_TOLERANCE: dict[str, float | None] = {"f16": 0.25, "q8_0": 3.0, "q4_0": None, "q4_1": None}

# llama.cpp picks its pre-tokenizer (how text is cut before BPE) by name. Ours are recognised by their
# tokenizer.json description; another tokenizer gets a clear error instead of a file that tokenizes differently.
_PRE_TOKENIZERS = {
    json.dumps({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
               sort_keys=True): "gpt-2",
    json.dumps({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        sort_keys=True): "smollm",
}


class GgufExportError(ValueError):
    """The model or tokenizer has something this exporter cannot write faithfully."""


@dataclass(frozen=True)
class GgufFile:
    """One exported file: where it is, its type, its size and how long writing it took."""

    path: Path
    qtype: str
    size_mb: float
    seconds: float


@functools.lru_cache(maxsize=8)
def _name_map(n_blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)  # builds thousands of names: once per size


def gguf_tensor_name(hf_name: str, n_blocks: int) -> str:
    """The GGUF name of one of our tensors (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`)."""
    mapped = _name_map(n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise GgufExportError(f"tensor {hf_name!r} has no GGUF name in the llama architecture")
    return mapped


def permute_for_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder a q or k projection's rows from HF's rotary layout (two halves) to GGML's (interleaved pairs).

    transformers rotates dimension i of each head with dimension i + d/2; llama.cpp rotates 2i with 2i + 1. The
    same model in the other layout needs its output rows reordered, head by head.
    """
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    rope_type = parameters.get("rope_type", "default")
    if rope_type not in ("default", None):
        raise GgufExportError(f"rope scaling {rope_type!r} is not written by this exporter; use llama.cpp's "
                              "convert_hf_to_gguf.py for this model")
    return float(parameters.get("rope_theta", _config_value(config, "rope_theta", default=10000.0)))


def gguf_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of a plain (merged) Llama model as (GGUF name, float32 array), q and k permuted."""
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise GgufExportError(f"model_type {getattr(config, 'model_type', None)!r}: this exporter writes the llama "
                              "architecture (every SmolLM2 size); merge a peft model first with merge_and_unload()")
    n_blocks, n_head = config.num_hidden_layers, config.num_attention_heads
    n_kv = _config_value(config, "num_key_value_heads", default=n_head)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if "lora_" in hf_name or "base_layer" in hf_name:
            raise GgufExportError(f"{hf_name!r} is an adapter tensor: merge the adapter (merge_and_unload) first")
        if tied and hf_name == "lm_head.weight":
            continue  # the output layer is the embedding matrix; llama.cpp reuses token_embd when output is absent
        name = gguf_tensor_name(hf_name, n_blocks)
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith("attn_q.weight"):
            array = permute_for_rope(array, n_head)
        elif name.endswith("attn_k.weight"):
            array = permute_for_rope(array, n_kv)
        yield name, array


def tensor_type(name: str, array: np.ndarray, qtype: str) -> gguf.GGMLQuantizationType:
    """The type one tensor is stored in for a file of type `qtype`."""
    if qtype not in GGUF_TYPES:
        raise GgufExportError(f"type {qtype!r} is not one of {sorted(GGUF_TYPES)}")
    if array.ndim < 2:
        return gguf.GGMLQuantizationType.F32  # norms and biases: tiny, and precision matters there
    wanted = GGUF_TYPES[qtype]
    if wanted in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1) and name in ("token_embd.weight", "output.weight"):
        # With tied embeddings this matrix is also the output layer, where 4-bit error hurts most (llama.cpp's
        # own quantizer keeps it at more bits too).
        wanted = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if array.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16  # rows that do not fill whole blocks cannot be quantized
    return wanted


def _encode(array: np.ndarray, kind: gguf.GGMLQuantizationType) -> np.ndarray:
    if kind == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32)
    if kind == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array.astype(np.float32), kind)


def tokenizer_facts(tokenizer, vocab_size: int) -> dict:
    """What llama.cpp needs of a BPE tokenizer: tokens, their types, merges, pre-tokenizer and special ids."""
    description = json.loads(tokenizer.backend_tokenizer.to_str())
    model = description["model"]
    if model.get("type") != "BPE":
        raise GgufExportError(f"tokenizer model {model.get('type')!r}: only byte-level BPE tokenizers are written")
    pre = _PRE_TOKENIZERS.get(json.dumps(description.get("pre_tokenizer"), sort_keys=True))
    if pre is None:
        raise GgufExportError("this tokenizer's pre-tokenizer is not one llama.cpp is known to reproduce here: "
                              f"{json.dumps(description.get('pre_tokenizer'))[:200]}")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise GgufExportError(f"the tokenizer has token id {max(by_id)} but the model only {vocab_size} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # embedding rows no token uses (vocabularies padded to a round size)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if tokenizer.chat_template is None:
        raise GgufExportError("the tokenizer has no chat template: llama.cpp would not know how to build a prompt")
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre,
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
            "pad": tokenizer.pad_token_id, "chat_template": tokenizer.chat_template}


def export_gguf(model, tokenizer, path: str | Path, qtype: str = "q8_0", name: str = "course-model") -> GgufFile:
    """Write a merged Llama-family model, tokenizer and chat template as one GGUF file (atomically)."""
    started = time.perf_counter()
    path = Path(path)
    config = model.config
    n_head = config.num_attention_heads
    head_dim = _config_value(config, "head_dim", default=config.hidden_size // n_head)
    facts = tokenizer_facts(tokenizer, config.vocab_size)
    tensors = [(n, _encode(a, kind), kind) for n, a in gguf_tensors(model) for kind in [tensor_type(n, a, qtype)]]

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(_config_value(config, "num_key_value_heads", default=n_head))
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(_FILE_TYPES[qtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre(facts["pre"])
        writer.add_token_list(facts["tokens"])
        writer.add_token_types(facts["types"])
        writer.add_token_merges(facts["merges"])
        # The chat model ends its turn with its EOS token (<|im_end|> for SmolLM2): llama.cpp stops there.
        for add, key in ((writer.add_bos_token_id, "bos"), (writer.add_eos_token_id, "eos"),
                         (writer.add_eot_token_id, "eos"), (writer.add_unk_token_id, "unk"),
                         (writer.add_pad_token_id, "pad")):
            if facts[key] is not None:
                add(facts[key])
        writer.add_add_bos_token(False)  # the chat template writes every special token itself
        writer.add_add_space_prefix(False)
        writer.add_chat_template(facts["chat_template"])

        for tensor_name, data, kind in tensors:
            quantized = kind not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(tensor_name, data, raw_dtype=kind if quantized else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)  # a reader never sees a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return GgufFile(path, qtype, path.stat().st_size / 1e6, time.perf_counter() - started)


def read_back(path: str | Path, dtype=torch.float32):
    """The GGUF file loaded by transformers' own GGUF reader (dequantized): an independent check of the export."""
    path = Path(path)
    with _parsed_once():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    model.eval()
    return model


@contextlib.contextmanager
def _parsed_once():
    """Let transformers parse each GGUF file once, not once for the config and again for the weights.

    gguf's reader walks every metadata value in Python: the 49k tokens and merges of the course tokenizer take about
    ten seconds each time. What transformers reads stays the same; only the second parse is skipped.
    """
    original = gguf.GGUFReader
    parsed: dict[tuple[str, float, int], gguf.GGUFReader] = {}

    def reader(path, *args, **kwargs):
        stat = os.stat(path)
        key = (os.fspath(path), stat.st_mtime, stat.st_size)
        if key not in parsed:
            parsed[key] = original(path, *args, **kwargs)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def choose_type(rows: list[dict], merged_exact_match: float, max_mb: float, max_drop: float) -> str | None:
    """The smallest file type within the size budget that loses at most `max_drop` exact match; None if none does.

    `rows` are the measured table's rows: {"type", "size_mb", "exact_match"}; ties in size go to the better metric.
    """
    fits = [r for r in rows if r["size_mb"] <= max_mb and merged_exact_match - r["exact_match"] <= max_drop + 1e-12]
    if not fits:
        return None
    return min(fits, key=lambda r: (r["size_mb"], -r["exact_match"]))["type"]


def shared_bytes(path_a: str | Path, path_b: str | Path) -> float:
    """The fraction of the layers' quantized weight bytes two GGUF files store identically (same name and type).

    Only the transformer blocks' quantized matrices count: the embedding matrix is the same in every file made from
    one base (a fine-tune with LoRA on the layers never touches it) and would hide what changed.
    """
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    a = {t.name: t for t in gguf.GGUFReader(str(path_a)).tensors if t.name.startswith("blk.") and t.tensor_type not in plain}
    b = {t.name: t for t in gguf.GGUFReader(str(path_b)).tensors}
    same = total = 0
    for name, tensor in a.items():
        total += tensor.data.nbytes
        other = b.get(name)
        if other is not None and other.tensor_type == tensor.tensor_type and other.data.shape == tensor.data.shape:
            same += int((np.asarray(tensor.data).view(np.uint8) == np.asarray(other.data).view(np.uint8)).sum())
    return same / total if total else 0.0
