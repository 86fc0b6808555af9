"""A fused LoRA linear layer for training: y = x W^T + s (x A^T) B^T in three matmuls, the add done inside one of them.

peft's LoRA layer computes the same thing as separate operations: the base matmul, A, B, a multiply by the scale
and an add, each writing a full-size activation, and as many again in the backward pass (plus, for a 4-bit base, a
defensive clone). With adapters on all seven linear layers of every block that traffic costs about as much GPU
time as the base matmuls. Here the scale and the add ride on `addmm`, the backward reuses g @ B for both the input
gradient and A's gradient, and nothing but x and the rank-r activation is saved.

`fuse_lora(model)` swaps the forward of each plain LoRA layer (one active adapter, no dropout, no DoRA) for this
one; the adapters stay peft's parameters, so saving, merging and the optimizer see nothing different, and
`unfuse_lora` puts peft's forward back.

One autograd function serves any group of layers that read the same input; a lone layer is a group of one.
`group_lora(model)` groups q/k/v and gate/up: the first of a group computes all their outputs (one matmul for all
the A matrices, one input gradient) and leaves the others theirs, which they hand back when called with that same
input.
"""

from __future__ import annotations

from types import MethodType

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from course_lib.fast.settings import FastSettings


def _base_weight(base, dtype):
    """The base layer's weight as a dense [out, in] tensor in `dtype` (bitsandbytes 4-bit weights are dequantized)."""
    cached = base.__dict__.get("_course_dense")
    if cached is not None and cached.dtype == dtype:
        return cached
    weight = base.weight
    if getattr(weight, "quant_state", None) is not None:  # bnb Params4bit: NF4/FP4 codes plus their quant state
        import bitsandbytes.functional as bnbf

        _unpack_cpu_layout(weight)
        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    return weight if weight.dtype == dtype else weight.to(dtype)


def _unpack_cpu_layout(weight) -> None:
    """Undo bitsandbytes' CPU inference repacking (done on a CPU forward in eval mode), as its own .cuda() does."""
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)


def _group_function():

    class LoraGroup(torch.autograd.Function):
        """LoRA linears that read the same input in one function: x is read once for all their A matmuls, the scale
        and add ride on `addmm`, g @ B serves both the input gradient and A's gradient, and the input gradient is
        one tensor the group adds into. Only x and the rank-r activations are saved."""

        @staticmethod
        def forward(ctx, x, bases, scalings, *params):
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            As, Bs = params[0::2], params[1::2]
            A = As[0] if len(As) == 1 else torch.cat(As)  # [sum of ranks, in]: a few thousand values
            a = x2 @ A.t()
            outs, start = [], 0
            for base, B, s in zip(bases, Bs, scalings):
                r = B.shape[1]
                weight = _base_weight(base, x.dtype)
                y = x2 @ weight.t() if base.bias is None else torch.addmm(base.bias.to(x.dtype), x2, weight.t())
                y.addmm_(a[:, start:start + r], B.t(), alpha=s)  # y += s * a @ B^T in the matmul: no extra pass
                outs.append(y.view(*shape[:-1], y.shape[-1]))
                start += r
            ctx.save_for_backward(x2, a, A, *Bs)
            ctx.bases, ctx.scalings, ctx.shape = bases, scalings, shape
            return tuple(outs)

        @staticmethod
        def backward(ctx, *grads):
            x2, a, A, *Bs = ctx.saved_tensors
            gs = [None if g is None else g.reshape(-1, g.shape[-1]) for g in grads]
            make = torch.empty if all(g is not None for g in gs) else torch.zeros  # an unused output adds nothing
            gb = make(x2.shape[0], A.shape[0], dtype=x2.dtype, device=x2.device)  # s * g @ B, side by side
            start, dBs = 0, []
            for g, B, s in zip(gs, Bs, ctx.scalings):
                r = B.shape[1]
                if g is not None:
                    torch.mul(g @ B, s, out=gb[:, start:start + r])
                    dBs.append((g.t() @ a[:, start:start + r]).mul_(s))
                else:
                    dBs.append(torch.zeros_like(B))
                start += r
            dx = None
            if ctx.needs_input_grad[0]:
                for g, base in zip(gs, ctx.bases):
                    if g is None:
                        continue
                    weight = _base_weight(base, g.dtype)
                    dx = g @ weight if dx is None else dx.addmm_(g, weight)
                dx = gb @ A if dx is None else dx.addmm_(gb, A)
                dx = dx.view(ctx.shape)
            dA = gb.t() @ x2
            dAs = dA.split([B.shape[1] for B in Bs])
            return (dx, None, None, *[t for pair in zip(dAs, dBs) for t in pair])

    return LoraGroup


_FN = None


def lora_linears(x, bases, As, Bs, scalings) -> tuple:
    """base_i(x) + s_i * x A_i^T B_i^T for layers that read the same x (bases: nn.Linear or bitsandbytes Linear4bit).

    x is first cast to the adapters' dtype, which the base matmuls then run in too.
    """
    global _FN
    if _FN is None:
        _FN = _group_function()
    if x.dtype != As[0].dtype:
        x = x.to(As[0].dtype)
    params = [t for pair in zip(As, Bs) for t in pair]
    return _FN.apply(x, tuple(bases), tuple(float(s) for s in scalings), *params)


def lora_linear(x, base, A, B, scaling: float):
    """base(x) + scaling * x A^T B^T with a fused backward: a group of one."""
    return lora_linears(x, [base], [A], [B], [scaling])[0]


def _parts(layer) -> tuple:
    """A peft LoRA layer's base layer, A and B weights and scale for its one active adapter."""
    name = layer.active_adapters[0]
    return layer.get_base_layer(), layer.lora_A[name].weight, layer.lora_B[name].weight, float(layer.scaling[name])


def _fused_forward(self, x, *args, **kwargs):
    return lora_linear(x, *_parts(self))


GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # called in this order by Llama-family layers


def _leader_forward(self, x, *args, **kwargs):
    """The first layer of a group computes every layer's output; the others find theirs waiting."""
    members = self.__dict__["_course_group"]
    bases, As, Bs, scalings = zip(*(_parts(m) for m in members))
    outs = lora_linears(x, bases, As, Bs, scalings)
    for m, out in zip(members[1:], outs[1:]):
        m.__dict__["_course_pending"] = (x, out)
    return outs[0]


def _follower_forward(self, x, *args, **kwargs):
    pending = self.__dict__.pop("_course_pending", None)
    if pending is not None and pending[0] is x:  # the very input the leader saw
        return pending[1]
    return _fused_forward(self, x, *args, **kwargs)  # called on its own: compute alone


def group_lora(model) -> int:
    """Run q/k/v and gate/up of each layer as one LoRA group (see LoraGroup) where all are fused; returns the count."""
    count = 0
    for parent in model.modules():
        for names in GROUPS:
            members = [getattr(parent, n, None) for n in names]
            if not all(getattr(getattr(m, "forward", None), "__func__", None) is _fused_forward for m in members):
                continue
            dtypes = {m.lora_A[m.active_adapters[0]].weight.dtype for m in members}
            if len(dtypes) != 1:
                continue
            members[0].__dict__["_course_group"] = members
            members[0].forward = MethodType(_leader_forward, members[0])
            for m in members[1:]:
                m.forward = MethodType(_follower_forward, m)
            count += 1
    return count


def can_fuse(module) -> bool:
    """True for a peft LoRA layer this module can run: one active adapter, no dropout, no DoRA/variants, not merged."""

    if not isinstance(module, LoraLayer) or not hasattr(module, "lora_A") or getattr(module, "merged", False):
        return False
    adapters = list(module.active_adapters)
    if len(adapters) != 1 or adapters[0] not in module.lora_A:
        return False
    name = adapters[0]
    if module.use_dora.get(name) or name in getattr(module, "lora_variant", {}):
        return False
    dropout = module.lora_dropout[name]
    if not isinstance(dropout, torch.nn.Identity) and not (isinstance(dropout, torch.nn.Dropout) and dropout.p == 0):
        return False
    base = module.get_base_layer()
    is_linear = type(base) is torch.nn.Linear
    is_4bit = type(base).__name__ == "Linear4bit" and getattr(base.weight, "quant_state", None) is not None
    return (is_linear or is_4bit) and isinstance(module.lora_A[name], torch.nn.Linear)


def fuse_lora(model) -> int:
    """Give every fusable LoRA layer of `model` the fused forward; returns how many layers changed."""
    count = 0
    for module in model.modules():
        if can_fuse(module):
            module.forward = MethodType(_fused_forward, module)
            count += 1
    return count


def unfuse_lora(model) -> None:
    """Put peft's own forward back on every layer `fuse_lora` changed, and drop any dequantized weights."""
    ours = (_fused_forward, _leader_forward, _follower_forward)
    for module in model.modules():
        if "forward" in module.__dict__ and getattr(module.forward, "__func__", None) in ours:
            del module.forward
        for key in ("_course_dense", "_course_group", "_course_pending"):
            module.__dict__.pop(key, None)


def cache_dense_weights(model, budget_bytes: float, dtype) -> int:
    """Keep dequantized copies of 4-bit base weights of fused LoRA layers, as many as fit `budget_bytes`.

    The base weights are frozen, so dequantizing them once gives exactly what every forward, recomputation and
    backward would dequantize again (three times a step with checkpointing). Spare GPU memory buys that time back;
    the model itself stays 4-bit. Returns the bytes used.
    """
    used = 0
    for module in model.modules():
        if getattr(module.forward, "__func__", None) not in (_fused_forward, _leader_forward, _follower_forward):
            continue
        base = module.get_base_layer()
        if getattr(base.weight, "quant_state", None) is None:
            continue
        out_features, in_features = base.weight.quant_state.shape
        size = out_features * in_features * dtype.itemsize
        if used + size > budget_bytes:
            break
        base.__dict__["_course_dense"] = _base_weight(base, dtype).detach()
        used += size
    return used


def drop_dense_weights(model, bytes_to_free: float) -> int:
    """Forget cached dequantized weights, the last cached first, until `bytes_to_free` are freed; returns the bytes."""
    cached = [m for m in model.modules() if "_course_dense" in m.__dict__]
    freed = 0
    for base in reversed(cached):
        if freed >= bytes_to_free:
            break
        weight = base.__dict__.pop("_course_dense")
        freed += weight.numel() * weight.element_size()
    return freed


def attach_lora(model, settings: FastSettings):
    """Wrap `model` with LoRA adapters (seeded, so both paths start from the same adapters); a PeftModel is kept."""

    if isinstance(model, PeftModel):
        return model
    torch.manual_seed(settings.seed)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config, autocast_adapter_dtype=False)
