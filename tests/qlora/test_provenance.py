"""Where the weights come from: the Q4_1 grid of a GGUF block, and the shipped file's tensor table."""

import gguf
import numpy as np
import pytest
import torch

from course_lib.core import models
from course_lib.qlora import provenance


def _q4_1_block(seed: int) -> torch.Tensor:
    """32 random weights through GGUF's Q4_1 (the gguf package's quantizer): one block on a 16-level grid."""
    values = np.random.default_rng(seed).normal(0, 0.02, (1, 32)).astype(np.float32)
    packed = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_1)
    return torch.from_numpy(gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q4_1).reshape(1, 32).copy())


def test_a_q4_1_block_holds_at_most_16_values_on_its_min_max_grid():
    block = _q4_1_block(0)
    fresh = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (1, 32)).astype(np.float32))
    assert 2 <= int(provenance.distinct_per_block(block)) <= 16
    assert int(provenance.distinct_per_block(fresh)) == 32  # never quantized: every weight its own value
    positions = provenance.grid_positions(block)
    assert torch.allclose(positions, positions.round(), atol=1e-3)  # whole numbers 0..15
    assert positions.min() == 0 and positions.max() == 15  # Q4_1's grid runs from the block's min to its max
    assert provenance.on_grid_share(block) == 1.0 and provenance.on_grid_share(fresh) == 0.0


def test_q4_1_round_trip_is_the_files_quantizer_and_idempotent():
    weight = torch.randn(4, 64) * 0.02
    once = provenance.q4_1_round_trip(weight)
    assert once.shape == weight.shape and once.dtype == torch.float32
    assert provenance.distinct_per_block(once).max() <= 16 < provenance.distinct_per_block(weight).min()
    assert torch.equal(provenance.q4_1_round_trip(once), once)  # weights on the grid stay where they are
    with pytest.raises(ValueError, match="32-value blocks"):
        provenance.distinct_per_block(torch.zeros(40))


def test_weight_origin_reads_the_files_table(monkeypatch, tmp_path):
    types = {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_1", "blk.0.attn_norm.weight": "F32"}
    monkeypatch.setattr(provenance, "gguf_tensor_types", lambda model: types)
    monkeypatch.setattr(provenance, "shipped_gguf", lambda model: tmp_path / "model.Q4_1.gguf")
    block = _q4_1_block(1).repeat(2, 1)
    q = provenance.weight_origin("model.layers.0.self_attn.q_proj.weight", block)
    assert q.stored_as == "Q4_1" and q.reconstructed and q.on_grid == 1.0
    assert "dequantized from Q4_1" in q.summary() and "16 levels" in q.summary()
    tied = provenance.weight_origin("lm_head.weight")  # the output layer is the tied embedding
    assert tied.stored_as == "Q8_0" and tied.reconstructed
    norm = provenance.weight_origin("model.layers.0.input_layernorm.weight")
    assert norm.stored_as == "F32" and not norm.reconstructed and "never quantized" in norm.summary()
    with pytest.raises(KeyError, match="param_name"):
        provenance.weight_origin("model.layers.7.mlp.up_proj.weight")


def test_weight_origin_on_the_hub_is_the_published_checkpoint(monkeypatch):
    monkeypatch.setenv("COURSE_MODEL_SOURCE", "hub")
    origin = provenance.weight_origin("model.layers.0.self_attn.q_proj.weight", torch.randn(8, 32))
    assert origin.stored_as is None and not origin.reconstructed
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in origin.summary() and "never quantized" in origin.summary()
    assert origin.on_grid == 0.0


def test_the_shipped_file_keeps_linear_layers_in_q4_1_and_the_embedding_in_q8_0(monkeypatch):
    monkeypatch.delenv("COURSE_MODEL_SOURCE", raising=False)
    types = models.gguf_tensor_types("default")  # read once at conversion (or first use), then from the cache
    assert types is not None
    assert {t for n, t in types.items() if n.startswith("blk.") and n.endswith(("_q.weight", "_down.weight"))} == {"Q4_1"}
    assert types["token_embd.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    assert models.gguf_tensor_types("minilm") is None  # shipped as safetensors, never quantized


def test_the_grid_picture_draws_both_panels():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.qlora import plots

    fresh = torch.randn(8, 64) * 0.02
    left, right = plots.plot_q4_1_grid({"from Q4_1": provenance.q4_1_round_trip(fresh), "never quantized": fresh})
    assert len(left.patches) > 0 and len(right.patches) > 0
    assert "16" in left.get_xlabel() and right.get_title().startswith("place")
