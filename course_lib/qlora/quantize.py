"""Quantization written for teaching, checked against bitsandbytes.

- **absmax int8**: divide a block by its largest magnitude, scale to [-127, 127], round. One float32 scale per
  block: a single outlier then spoils only its own block, not the whole tensor.
- **NF4** (QLoRA's NormalFloat 4-bit): sixteen levels placed at quantiles of a standard normal distribution,
  rescaled to [-1, 1], with an exact zero. Weights are roughly normal, so each level is used about equally often.
  A block is divided by its absmax and every value is replaced by the index of the nearest level.
- **double quantization**: the float32 block scales themselves are quantized to 8 bits in blocks of 256 (after
  subtracting their mean), which takes the cost of the scales from 0.5 to about 0.127 bits per weight.

Layouts follow bitsandbytes (`bitsandbytes.functional.quantize_4bit`): blocks run over the flattened tensor,
two 4-bit indices share a byte with the first in the high nibble, and the nearest level is found by comparing
with the midpoints between levels. `compare_with_bitsandbytes` checks a real layer against the library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NF4_OFFSET = 0.9677083  # the outermost quantile QLoRA uses; norm.ppf(offset) ~ 1.848 standard deviations
_TINY = 1e-38  # a block of zeros has absmax 0; dividing by this instead keeps it zero (bitsandbytes does the same)


# --- blockwise absmax int8 -----------------------------------------------------------------------------------
def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """The flattened tensor as rows of `block_size`, the last row padded with zeros."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    flat = x.detach().reshape(-1).float()
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block_size)


def absmax_quantize(x: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and one float32 scale (the absmax) per block: q = round(127 * x / absmax)."""
    blocks = _blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    q = torch.round(blocks / absmax.clamp(min=_TINY)[:, None] * 127).to(torch.int8)
    return q.reshape(-1)[: x.numel()].reshape(x.shape), absmax


def absmax_dequantize(q: torch.Tensor, absmax: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Back to float32: x ~ q * absmax / 127, each block with its own absmax."""
    blocks = _blocks(q, block_size)
    return (blocks * (absmax[:, None] / 127)).reshape(-1)[: q.numel()].reshape(q.shape)


# --- NF4 -----------------------------------------------------------------------------------------------------
def nf4_code_book(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels: normal quantiles, 8 positive and 7 negative, plus an exact zero, scaled to [-1, 1].

    Built the way QLoRA builds it (bitsandbytes.functional.create_normal_map): quantiles at 8 (resp. 7) evenly
    spaced probabilities between `offset` and 0.5, excluding 0.5 itself, mirrored for the negative side; zero
    added so that padding and exact zeros survive quantization. One side has one more level than the other:
    that is the price of an exact zero with 16 values.
    """
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())
    values = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)]).float()
    values = values.sort().values
    return values / values.max()


def nearest_level(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of a sorted code book for every value (compares with the midpoints)."""
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, midpoints).to(torch.uint8)


@dataclass
class NF4Tensor:
    """A tensor in blockwise NF4: one 4-bit index per value, an absmax per block (maybe double-quantized)."""

    indices: torch.Tensor  # uint8, one index (0..15) per value, flattened and padded to whole blocks
    absmax: torch.Tensor  # float32 per block (dequantized values when double quantization was used)
    shape: torch.Size
    block_size: int
    code: torch.Tensor
    double: "DoubleQuantized | None" = None

    def dequantize(self) -> torch.Tensor:
        """Back to float32 with the original shape."""
        absmax = self.double.dequantize() if self.double is not None else self.absmax
        values = self.code[self.indices.long()].view(-1, self.block_size) * absmax[:, None]
        return values.reshape(-1)[: math.prod(self.shape)].reshape(self.shape)

    def packed(self) -> torch.Tensor:
        """Two indices per byte, the first in the high nibble: bitsandbytes' storage."""
        return pack_4bit(self.indices[: math.prod(self.shape)])

    def nbytes(self) -> int:
        """Storage: packed indices plus the block constants (as bitsandbytes holds them)."""
        packed = (math.prod(self.shape) + 1) // 2
        if self.double is None:
            return packed + 4 * self.absmax.numel()
        return packed + self.double.nbytes()


def nf4_quantize(x: torch.Tensor, block_size: int = 64, double_quant: bool = False,
                 code: torch.Tensor | None = None) -> NF4Tensor:
    """Blockwise NF4: divide each block by its absmax, store the index of the nearest NF4 level."""
    code = nf4_code_book() if code is None else code
    blocks = _blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    # multiply by the reciprocal, clamp to [-1, 1]: exactly what bitsandbytes computes, so indices agree bit for bit
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=_TINY))[:, None], -1, 1)
    indices = nearest_level(scaled.reshape(-1), code)
    double = double_quantize(absmax) if double_quant else None
    return NF4Tensor(indices=indices, absmax=absmax, shape=x.shape, block_size=block_size, code=code, double=double)


def pack_4bit(indices: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit indices two to a byte, first value in the high nibble (an odd count is padded with 0)."""
    flat = indices.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] << 4) | flat[1::2]


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_4bit: the first `n` indices."""
    flat = packed.reshape(-1)
    out = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)
    return out[:n]


# --- double quantization -------------------------------------------------------------------------------------
def linear_int8_code() -> torch.Tensor:
    """A sorted code book of the 255 values k/127, k = -127..127: plain absmax int8 as a code book."""
    return torch.arange(-127, 128, dtype=torch.float32) / 127


@dataclass
class DoubleQuantized:
    """Block scales quantized again: 8-bit indices, one float32 scale per group of blocks, and their mean."""

    indices: torch.Tensor  # uint8 per first-level block
    scales: torch.Tensor  # float32 per group of `block_size` first-level blocks
    offset: float  # the mean of the first-level absmax, subtracted first (scales are all positive)
    n: int
    block_size: int
    code: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """The first-level absmax values back, in float32."""
        values = self.code[self.indices.long()].view(-1, self.block_size) * self.scales[:, None]
        return values.reshape(-1)[: self.n] + self.offset

    def nbytes(self) -> int:
        """One byte per block, a float32 per group, the offset and the 8-bit code book (as bitsandbytes stores it)."""
        return self.n + 4 * self.scales.numel() + 4 + 4 * self.code.numel()


def double_quantize(absmax: torch.Tensor, block_size: int = 256, code: torch.Tensor | None = None) -> DoubleQuantized:
    """Quantize float32 block scales to 8 bits in blocks of `block_size`, after subtracting their mean.

    code: a sorted 8-bit code book in [-1, 1]. The default is linear int8 (k/127); bitsandbytes uses its
    "dynamic" 8-bit map (`bitsandbytes.functional.create_dynamic_map(signed=True)`), which spends more levels
    near zero; pass it to reproduce bitsandbytes exactly.
    """
    code = linear_int8_code() if code is None else code.float()
    offset = absmax.float().mean()
    centred = absmax.float() - offset
    blocks = _blocks(centred, block_size)
    scales = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / scales.clamp(min=_TINY))[:, None], -1, 1)
    indices = nearest_level(scaled.reshape(-1), code)[: absmax.numel()]
    pad = (-indices.numel()) % block_size
    if pad:
        indices = torch.cat([indices, indices.new_zeros(pad)])
    return DoubleQuantized(indices=indices, scales=scales, offset=float(offset), n=absmax.numel(),
                           block_size=block_size, code=code)


def bits_per_parameter(block_size: int = 64, double_quant: bool = True, block_size2: int = 256, bits: int = 4) -> float:
    """Storage per weight: the `bits` of the index plus the block constants spread over the block."""
    if double_quant:
        return bits + 8 / block_size + 32 / (block_size * block_size2)
    return bits + 32 / block_size


# --- errors --------------------------------------------------------------------------------------------------
def quantization_error(original: torch.Tensor, restored: torch.Tensor) -> dict[str, float]:
    """Mean squared error, largest absolute error, and the relative error ||x - x'|| / ||x||."""
    diff = (original.float() - restored.float()).reshape(-1)
    norm = original.float().norm().item()
    return {"mse": diff.pow(2).mean().item(), "max_abs": diff.abs().max().item(),
            "relative": diff.norm().item() / norm if norm > 0 else float(diff.norm().item() > 0)}


def error_by_block_size(x: torch.Tensor, block_sizes=(16, 32, 64, 128, 256, 1024, 4096, None)) -> list[dict]:
    """Relative error of absmax int8 and of NF4 for each block size (None: one block for the whole tensor)."""
    rows = []
    for size in block_sizes:
        b = x.numel() if size is None else size
        q, absmax = absmax_quantize(x, b)
        int8 = quantization_error(x, absmax_dequantize(q, absmax, b))["relative"]
        nf4 = quantization_error(x, nf4_quantize(x, b).dequantize())["relative"]
        rows.append({"block_size": size or "whole tensor", "int8": int8, "nf4": nf4,
                     "nf4 bits/param": bits_per_parameter(b, double_quant=False)})
    return rows


def compare_with_bitsandbytes(weight: torch.Tensor, block_size: int = 64, double_quant: bool = False) -> dict:
    """Quantize `weight` with our NF4 and with bitsandbytes (on the CPU); how far apart are they?

    The tolerance the course states (the tests of qlora.quantize, on layer 3's down_proj of SmolLM2-135M):
    - without double quantization: identical 4-bit indices and bit-identical dequantized values (difference 0);
    - with double quantization (our second level given bitsandbytes' dynamic 8-bit code book): identical 4-bit
      indices; bitsandbytes' CPU kernel rounds about 0.2% of block scales to the neighbouring 8-bit level, so
      weights in those blocks differ by one scale step: max |ours - theirs| < 1% of the layer's absmax, and the
      two relative errors against the original agree within 1e-4.
    """
    import bitsandbytes.functional as bnbf

    w = weight.detach().float().cpu()
    packed, state = bnbf.quantize_4bit(w, blocksize=block_size, quant_type="nf4", compress_statistics=double_quant)
    theirs = bnbf.dequantize_4bit(packed, state).float()
    ours_t = nf4_quantize(w, block_size, double_quant=False)
    if double_quant:
        ours_t.double = double_quantize(ours_t.absmax, 256, code=bnbf.create_dynamic_map(signed=True))
    ours = ours_t.dequantize()
    their_indices = unpack_4bit(packed.view(torch.uint8).reshape(-1), w.numel())
    diff = (ours - theirs).abs()
    return {
        "index_agreement": (their_indices == ours_t.indices[: w.numel()]).float().mean().item(),
        "max_abs_diff": diff.max().item(),
        "max_rel_diff": (diff / w.abs().max()).max().item(),
        "error_ours": quantization_error(w, ours)["relative"],
        "error_bitsandbytes": quantization_error(w, theirs)["relative"],
    }


# --- pictures ------------------------------------------------------------------------------------------------


def nf4_quantize_block(block: torch.Tensor, code: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """One 1-D block to NF4: (uint8 index of the nearest level for each value, the block's absmax as a float)."""
    code = nf4_code_book() if code is None else code
    block = block.detach().reshape(-1).float()
    absmax = block.abs().max().item()
    scaled = block / max(absmax, _TINY)
    indices = (scaled[:, None] - code[None, :]).abs().argmin(dim=1)
    return indices.to(torch.uint8), absmax
