"""GGUF export (course_lib.deployment.gguf_export): names, the rotary reordering, types, tokenizer metadata, and the
file read back by an independent reader (transformers' GGUF loader) with the same logits."""

import copy

import gguf
import numpy as np
import pytest
import torch
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from course_lib.deployment import adapters, gguf_export


def test_tensor_names_follow_the_gguf_table():
    names = {hf: gguf_export.gguf_tensor_name(hf, 4) for hf in [
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.3.self_attn.q_proj.weight",
        "model.layers.3.self_attn.k_proj.weight", "model.layers.0.self_attn.o_proj.weight",
        "model.layers.2.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight"]}
    assert names == {
        "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight", "model.layers.3.self_attn.q_proj.weight": "blk.3.attn_q.weight",
        "model.layers.3.self_attn.k_proj.weight": "blk.3.attn_k.weight",
        "model.layers.0.self_attn.o_proj.weight": "blk.0.attn_output.weight",
        "model.layers.2.mlp.down_proj.weight": "blk.2.ffn_down.weight",
        "model.layers.1.post_attention_layernorm.weight": "blk.1.ffn_norm.weight"}
    with pytest.raises(gguf_export.GgufExportError, match="rotary"):
        gguf_export.gguf_tensor_name("model.layers.0.self_attn.rotary", 4)


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_rope_reordering_is_what_transformers_undoes(n_head):
    weight = np.random.default_rng(n_head).normal(size=(n_head * 8, 5)).astype(np.float32)
    permuted = gguf_export.permute_for_rope(weight, n_head)
    assert not np.array_equal(permuted, weight)
    # transformers' reader, written from llama.cpp's converter, must get our original rows back
    restored = LlamaTensorProcessor()._reverse_permute_weights(permuted, n_head, n_head)
    np.testing.assert_array_equal(restored, weight)
    # within a head, the halves [x0 x1 x2 x3 | y0 y1 y2 y3] become pairs [x0 y0 x1 y1 ...]
    rows = np.arange(8, dtype=np.float32)[:, None]
    assert gguf_export.permute_for_rope(rows, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_tensor_types_per_file_type():
    matrix, norm, odd = np.zeros((64, 64), np.float32), np.zeros(64, np.float32), np.zeros((8, 40), np.float32)
    f32, f16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    assert gguf_export.tensor_type("blk.0.attn_norm.weight", norm, "q4_0") == f32
    assert gguf_export.tensor_type("blk.0.attn_q.weight", matrix, "f16") == f16
    assert gguf_export.tensor_type("blk.0.attn_q.weight", matrix, "q8_0") == gguf.GGMLQuantizationType.Q8_0
    assert gguf_export.tensor_type("blk.0.attn_q.weight", matrix, "q4_0") == gguf.GGMLQuantizationType.Q4_0
    assert gguf_export.tensor_type("token_embd.weight", matrix, "q4_1") == gguf.GGMLQuantizationType.Q8_0
    assert gguf_export.tensor_type("blk.0.ffn_up.weight", odd, "q8_0") == f16  # 40 is not a whole number of blocks
    with pytest.raises(gguf_export.GgufExportError, match="q3"):
        gguf_export.tensor_type("blk.0.attn_q.weight", matrix, "q3")


def _metadata(path):
    reader = gguf.GGUFReader(path)
    return reader, {key: field.contents() for key, field in reader.fields.items()}


def test_the_file_carries_what_llama_cpp_needs(tied_llama, tokenizer, tmp_path):
    exported = gguf_export.export_gguf(tied_llama, tokenizer, tmp_path / "m.gguf", "q8_0", name="tiny")
    reader, meta = _metadata(exported.path)
    config = tied_llama.config
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "tiny"
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"], meta["llama.feed_forward_length"]) == (2, 32, 4, 2, 64)
    assert meta["llama.rope.dimension_count"] == config.hidden_size // config.num_attention_heads
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == len(tokenizer) and tokens[100] == tokenizer.convert_ids_to_tokens(100)
    assert meta["tokenizer.ggml.token_type"][2] == gguf.TokenType.CONTROL  # <|im_end|> is special
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert meta["tokenizer.ggml.add_bos_token"] is False
    names = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert names["blk.1.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert names["blk.1.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert len(names) == 2 + 9 * 2  # embeddings, final norm, 9 tensors per layer


def test_the_shipped_models_vocabulary_is_written_as_llama_cpp_wrote_it(tokenizer, tiny_llama, tmp_path):
    """Our tokens and merges equal those of the GGUF file the offline model came in (written by llama.cpp)."""
    from course_lib.core.models import MODELS, package_dir

    spec = MODELS["smollm2-135m"]
    folder = package_dir(spec)
    if folder is None:
        pytest.skip("the packaged model is not installed (course prepare installs it)")
    _, shipped = _metadata(folder / spec.gguf_file)
    ours = gguf_export.tokenizer_facts(tokenizer, len(tokenizer))
    assert ours["tokens"] == shipped["tokenizer.ggml.tokens"]
    assert ours["merges"] == shipped["tokenizer.ggml.merges"]
    assert [int(t) for t in ours["types"]] == shipped["tokenizer.ggml.token_type"]


@pytest.mark.parametrize("qtype, tolerance", [("f16", 5e-3), ("q8_0", 0.1)])
def test_transformers_reads_back_the_same_model(tied_llama, tokenizer, tmp_path, qtype, tolerance):
    exported = gguf_export.export_gguf(tied_llama, tokenizer, tmp_path / f"m-{qtype}.gguf", qtype)
    batch = adapters.check_batch(tokenizer)
    before = adapters.logits_on(tied_llama, batch)
    after = adapters.logits_on(gguf_export.read_back(exported.path), batch)
    diff = adapters.max_abs_logit_diff(before, after, batch["attention_mask"])
    scale = float(before.abs().max())
    assert scale > 5  # logits of a trained model's size, so the bound below means something
    assert diff < tolerance * scale, f"{qtype}: {diff} against logits up to {scale}"
    assert diff > 0  # f16 and q8_0 round: a zero would mean we compared a model with itself


def test_a_forgotten_rope_reordering_is_caught_by_the_read_back(tied_llama, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "permute_for_rope", lambda weight, n_head: weight)
    exported = gguf_export.export_gguf(tied_llama, tokenizer, tmp_path / "wrong.gguf", "f16")
    batch = adapters.check_batch(tokenizer)
    diff = adapters.max_abs_logit_diff(adapters.logits_on(tied_llama, batch),
                                       adapters.logits_on(gguf_export.read_back(exported.path), batch),
                                       batch["attention_mask"])
    assert diff > 0.5  # f16 alone stays near 0.01 on this model (test above)


def test_refuses_what_it_cannot_write_faithfully(tied_llama, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(tied_llama), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(gguf_export.GgufExportError, match="merge"):
        gguf_export.export_gguf(peft_model.base_model.model, tokenizer, tmp_path / "a.gguf")
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(gguf_export.GgufExportError, match="chat template"):
        gguf_export.export_gguf(tied_llama, no_template, tmp_path / "b.gguf")
    other = copy.deepcopy(tied_llama)
    other.config.model_type = "gpt_neox"
    with pytest.raises(gguf_export.GgufExportError, match="gpt_neox"):
        gguf_export.export_gguf(other, tokenizer, tmp_path / "c.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_failed_write_leaves_no_file(tied_llama, tokenizer, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        gguf_export.export_gguf(tied_llama, tokenizer, tmp_path / "m.gguf", "f16")
    assert not list(tmp_path.iterdir())


def test_choose_type_takes_the_smallest_within_both_budgets():
    rows = [{"type": "f16", "size_mb": 270, "exact_match": 0.95}, {"type": "q8_0", "size_mb": 145, "exact_match": 0.95},
            {"type": "q4_0", "size_mb": 92, "exact_match": 0.80}, {"type": "q4_1", "size_mb": 92, "exact_match": 0.85}]
    assert gguf_export.choose_type(rows, 0.95, 300, 0.0) == "q8_0"
    assert gguf_export.choose_type(rows, 0.95, 300, 0.15) == "q4_1"  # equal size: the better metric
    assert gguf_export.choose_type(rows, 0.95, 100, 0.05) is None
    assert gguf_export.choose_type(rows, 0.95, 140, 0.2) == "q4_1"


def test_exporting_a_real_size_model_takes_seconds_not_minutes(tied_llama):
    """The name table is built once per size: building it per tensor made a 135M export take 15 s more."""
    gguf_export._name_map.cache_clear()
    for name in tied_llama.state_dict():
        if name != "lm_head.weight":
            gguf_export.gguf_tensor_name(name, 2)
    assert gguf_export._name_map.cache_info().misses == 1


def test_exported_weights_are_the_models(tied_llama):
    exported = dict(gguf_export.gguf_tensors(tied_llama))
    np.testing.assert_array_equal(exported["blk.0.attn_v.weight"],
                                  tied_llama.model.layers[0].self_attn.v_proj.weight.detach().numpy())
    q = tied_llama.model.layers[1].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(exported["blk.1.attn_q.weight"], gguf_export.permute_for_rope(q, 4))
    k = tied_llama.model.layers[1].self_attn.k_proj.weight.detach().numpy()
    np.testing.assert_array_equal(exported["blk.1.attn_k.weight"], gguf_export.permute_for_rope(k, 2))
    assert torch.equal(tied_llama.lm_head.weight, tied_llama.model.embed_tokens.weight)


def test_the_base_model_exported_as_q4_1_is_the_file_it_was_shipped_in(tmp_path):
    """The offline base model came as a Q4_1 GGUF written by llama.cpp's converter and quantizer. Dequantized and
    exported by us as q4_1, every tensor comes back byte for byte: names, the rotary reordering, the types (q8_0
    embeddings, f32 norms) and the 4-bit blocks all agree with llama.cpp's own tools."""
    from course_lib.core.models import load_causal_lm, shipped_gguf

    shipped = shipped_gguf()
    if shipped is None:
        pytest.skip("the default model does not come from its package here (course prepare installs it)")
    model, tokenizer = load_causal_lm(dtype=torch.float32)
    ours = gguf_export.export_gguf(model, tokenizer, tmp_path / "base-q4_1.gguf", "q4_1").path
    theirs = {t.name: t for t in gguf.GGUFReader(str(shipped)).tensors}
    mine = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    assert sorted(mine) == sorted(theirs)
    for name, tensor in mine.items():
        assert tensor.tensor_type == theirs[name].tensor_type, name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(theirs[name].data)), name
    assert gguf_export.shared_bytes(ours, shipped) == 1.0
