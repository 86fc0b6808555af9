"""The teaching quantizers: round trips, known values, and agreement with bitsandbytes on the CPU."""

import math

import pytest
import torch

from course_lib.qlora import quantize

bnbf = pytest.importorskip("bitsandbytes.functional")


def test_absmax_int8_round_trip_and_known_values():
    x = torch.tensor([1.0, -2.0, 0.5, 0.0, 10.0, -5.0, 2.5, 0.0])
    q, absmax = quantize.absmax_quantize(x, block_size=4)
    assert absmax.tolist() == [2.0, 10.0]  # one scale per block of 4
    assert q.dtype == torch.int8
    assert q.tolist() == [64, -127, 32, 0, 127, -64, 32, 0]  # round(127 * x / absmax); 63.5 rounds to even 64
    restored = quantize.absmax_dequantize(q, absmax, block_size=4)
    assert torch.allclose(restored, x, atol=max(absmax) / 127 / 2 + 1e-6)


def test_absmax_per_block_scale_confines_an_outlier():
    torch.manual_seed(0)
    x = torch.randn(4096) * 0.01
    x[5] = 8.0  # one outlier in the first block
    per_block = quantize.absmax_dequantize(*quantize.absmax_quantize(x, 64), 64)
    whole = quantize.absmax_dequantize(*quantize.absmax_quantize(x, x.numel()), x.numel())
    # with one global scale every small weight rounds to zero; per block only the outlier's block suffers
    assert quantize.quantization_error(x[64:], per_block[64:])["relative"] < 0.01
    assert quantize.quantization_error(x[64:], whole[64:])["relative"] > 0.9


def test_ragged_last_block_and_shape_kept():
    x = torch.randn(7, 13)
    q, absmax = quantize.absmax_quantize(x, 16)
    assert q.shape == x.shape and absmax.numel() == math.ceil(91 / 16)
    t = quantize.nf4_quantize(x, 16)
    assert t.dequantize().shape == x.shape


def test_zero_block_stays_zero():
    x = torch.zeros(128)
    assert quantize.absmax_dequantize(*quantize.absmax_quantize(x, 64), 64).abs().max() == 0
    assert quantize.nf4_quantize(x, 64).dequantize().abs().max() == 0


def test_nf4_code_book_equals_bitsandbytes_table():
    code = quantize.nf4_code_book()
    theirs = bnbf.get_4bit_type("nf4", device="cpu")
    assert code.shape == (16,) and code.dtype == torch.float32
    assert torch.equal(code, theirs.float())  # bit for bit
    assert code[7].item() == 0.0 and code[0].item() == -1.0 and code[-1].item() == 1.0
    assert torch.all(code[1:] > code[:-1])
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7  # the asymmetry that buys an exact zero


def test_nearest_level_and_known_nf4_indices():
    code = quantize.nf4_code_book()
    # each level maps to itself; a value just above a midpoint goes up
    assert quantize.nearest_level(code, code).tolist() == list(range(16))
    mid = (code[8] + code[9]) / 2
    assert quantize.nearest_level(torch.tensor([mid + 1e-4, mid - 1e-4]), code).tolist() == [9, 8]
    t = quantize.nf4_quantize(torch.tensor([2.0, -2.0, 0.0, 1.0]), block_size=4)
    assert t.indices.tolist() == [15, 0, 7, 12] and t.absmax.tolist() == [2.0]  # 0.5 is nearer 0.4407 than 0.5626


def test_pack_unpack_matches_bitsandbytes_layout():
    idx = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = quantize.pack_4bit(idx)
    assert packed.tolist() == [0x12, 0xF0, 0x70]
    assert quantize.unpack_4bit(packed, 5).tolist() == idx.tolist()


def test_nf4_matches_bitsandbytes_on_random_data():
    torch.manual_seed(1)
    for shape, block in [((300, 64), 64), ((33, 70), 128), ((4096,), 256)]:
        w = torch.randn(shape) * 0.05
        result = quantize.compare_with_bitsandbytes(w, block)
        assert result["index_agreement"] == 1.0
        assert result["max_abs_diff"] == 0.0


def test_real_layer_agrees_with_bitsandbytes():
    """Our NF4 of a layer of the course model against bitsandbytes: the tolerance the course states."""
    from course_lib.core.models import load_causal_lm

    model, _ = load_causal_lm(device="cpu")
    weight = model.model.layers[3].mlp.down_proj.weight.detach()
    plain = quantize.compare_with_bitsandbytes(weight, 64, double_quant=False)
    assert plain["index_agreement"] == 1.0 and plain["max_abs_diff"] == 0.0  # identical
    double = quantize.compare_with_bitsandbytes(weight, 64, double_quant=True)
    # the 4-bit indices are the same; bitsandbytes' CPU kernel rounds a few block scales (~0.2%) to the
    # neighbouring level of its 8-bit code, so weights in those blocks differ by one scale step
    assert double["index_agreement"] == 1.0
    assert double["max_rel_diff"] < 0.01
    assert abs(double["error_ours"] - double["error_bitsandbytes"]) < 1e-4


def test_double_quantization_round_trip_and_storage():
    torch.manual_seed(2)
    w = torch.randn(256, 1024) * 0.02
    t = quantize.nf4_quantize(w, 64, double_quant=True)
    restored_scales = t.double.dequantize()
    assert restored_scales.shape == t.absmax.shape
    assert quantize.quantization_error(t.absmax, restored_scales)["relative"] < 0.01
    plain = quantize.nf4_quantize(w, 64)
    # double quantization costs almost nothing in accuracy ...
    assert quantize.quantization_error(w, t.dequantize())["relative"] < 1.01 * quantize.quantization_error(w, plain.dequantize())["relative"]
    # ... and saves 0.373 bits per weight
    blocks = w.numel() // 64
    assert plain.nbytes() == w.numel() // 2 + 4 * blocks
    assert t.nbytes() == w.numel() // 2 + blocks + 4 * math.ceil(blocks / 256) + 4 + 4 * t.double.code.numel()  # + offset, code
    assert quantize.bits_per_parameter(64, double_quant=True) == pytest.approx(4.127, abs=1e-3)
    assert quantize.bits_per_parameter(64, double_quant=False) == 4.5


def test_double_quantization_with_bitsandbytes_code_reproduces_its_offset_and_scales():
    torch.manual_seed(3)
    w = torch.randn(128, 512) * 0.02
    _, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = quantize.double_quantize(quantize.nf4_quantize(w, 64).absmax, 256, code=bnbf.create_dynamic_map(signed=True))
    assert ours.offset == pytest.approx(state.offset.item(), rel=1e-6)
    assert torch.equal(ours.scales, state.state2.absmax)
    assert (ours.indices[: ours.n] == state.absmax).float().mean() > 0.99


def test_error_shrinks_with_smaller_blocks():
    torch.manual_seed(4)
    w = torch.randn(64, 1024) * 0.02
    w[0, 0] = 1.0
    rows = quantize.error_by_block_size(w, (16, 64, 1024, None))
    nf4 = [row["nf4"] for row in rows]
    assert nf4 == sorted(nf4)
    assert all(row["int8"] < row["nf4"] for row in rows)


def test_bad_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        quantize.absmax_quantize(torch.ones(4), 0)


def test_nf4_quantize_block_agrees_with_the_blockwise_quantizer():
    torch.manual_seed(0)
    block = torch.randn(64) * 0.03
    indices, absmax = quantize.nf4_quantize_block(block)
    reference = quantize.nf4_quantize(block, 64)
    assert indices.dtype == torch.uint8 and absmax == reference.absmax.item()
    assert torch.equal(indices.long(), reference.indices.long())
    assert quantize.nf4_quantize_block(torch.tensor([2.0, -2.0, 0.0, 1.0]))[0].tolist() == [15, 0, 7, 12]
