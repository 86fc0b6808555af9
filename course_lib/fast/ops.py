"""The kernels side of the GPU fast path: varlen attention, a fused linear cross-entropy, fp32 master weights.

Each piece is small, runs on the CPU too (slowly, but identically, so CI can test it), and is checked against the
library version it replaces in tests/fast/.
"""

from __future__ import annotations

import inspect
import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama import modeling_llama

ATTENTION_NAME = "course_varlen"


# ---------------------------------------------------------------------------------------------------- attention


def _varlen_fn():
    """torch's flash-attention varlen entry point, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


_SIGNATURES: dict = {}
_FLASH: dict = {}


def _flash_capable(device) -> bool:
    """Flash attention (the varlen kernel) needs an Ampere or newer GPU; a T4 takes the per-example path."""

    if device not in _FLASH:
        _FLASH[device] = torch.cuda.get_device_capability(device)[0] >= 8
    return _FLASH[device]


def _signature(fn) -> dict:
    if fn not in _SIGNATURES:  # inspect is slow, and this runs in every layer of every step
        _SIGNATURES[fn] = dict(inspect.signature(fn).parameters)
    return _SIGNATURES[fn]


def flash_varlen_usable(device, dtype) -> bool:
    """True where the flash-attention varlen kernel runs: a CUDA GPU of Ampere or newer, bf16/fp16, a torch with it."""
    return (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and _varlen_fn() is not None
            and _flash_capable(device))


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An `AttentionInterface` function: causal attention inside each packed example, never across examples.

    `query`/`key`/`value` come as [1, heads, T, head_dim] over all examples of the row; `cu_seq_lens_q` marks
    where each example starts. Where flash attention's varlen kernel runs (`flash_varlen_usable`) one kernel does the
    work; elsewhere (a T4, a CPU, fp32) the examples are laid out side by side, padded, for plain SDPA
    (`padded_attention`): the same result, with some attention work wasted on padding.
    """

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or attention_mask is not None:  # not a packed training batch (e.g. generation): plain SDPA

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects one row per batch, got {query.shape[0]}")
    max_len = kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max())
    varlen = _varlen_fn() if _USE_FLASH and flash_varlen_usable(query.device, query.dtype) else None
    params = _signature(varlen) if varlen is not None else {}
    custom_scale = scaling is not None and not math.isclose(scaling, query.shape[-1] ** -0.5)
    if varlen is None or (custom_scale and "scale" not in params):  # torch 2.9's varlen_attn takes no scale
        return padded_attention(query, key, value, cu, max_len, scaling), None
    groups = query.shape[1] // key.shape[1]
    # squeeze, not [0]: indexing's backward writes the gradient into a fresh zeroed tensor (a fill and a strided
    # copy per tensor and layer, a visible share of a large model's step time); squeeze's backward is a view
    q, k, v = (t.squeeze(0).transpose(0, 1) for t in (query, key, value))  # [T, heads, head_dim]
    extra = {}
    if groups > 1:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:  # older torch: give every query head its own copy of the shared key/value head
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "window_size" in params:
        extra["window_size"] = (-1, 0)  # causal
    else:
        extra["is_causal"] = True
    if "scale" in params and scaling is not None:
        extra["scale"] = scaling
    out = varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **extra)
    return out.unsqueeze(0), None  # [1, T, heads, head_dim], as transformers' attention functions return


class _ToPadded(torch.autograd.Function):
    """[heads, T, d] to [n, heads, max_len, d] by a gather; the gradient is the inverse gather.

    Autograd's own gradient of a gather is a scatter-add (serial on a CPU, a sort on a GPU). None is needed here:
    every real token has one real slot, and the padding slots' gradients are exactly zero (`padded_attention`).
    """

    @staticmethod
    def forward(ctx, x, index, example, position):
        ctx.save_for_backward(example, position)
        return x[:, index].transpose(0, 1)

    @staticmethod
    def backward(ctx, grad):
        example, position = ctx.saved_tensors
        return grad[example, :, position].transpose(0, 1), None, None, None


class _FromPadded(torch.autograd.Function):
    """[n, max_len, heads, d] to [T, heads, d], the real slots only; the gradient is a gather, zero on the padding."""

    @staticmethod
    def forward(ctx, x, example, position, index, real):
        ctx.save_for_backward(index, real)
        return x[example, position]

    @staticmethod
    def backward(ctx, grad):
        index, real = ctx.saved_tensors
        return grad[index] * real[:, :, None, None], None, None, None, None


def padded_attention(query, key, value, cu, max_len: int, scaling=None):
    """Causal attention per packed example through SDPA: [1, heads, T, d] in, [1, T, heads, d] out.

    The n examples are gathered into an [n, heads, max_len, d] batch, right-padded; causal masking alone keeps
    every real query off the padding (it only sees earlier positions), and the padded queries' outputs are never
    gathered back. So no gradient reaches a padding slot, and both gathers take the inverse gather as their gradient
    (`_ToPadded`, `_FromPadded`). Every index is computed on the device from `cu` and the host integer `max_len`, so
    a CUDA graph can capture it; SDPA picks its memory-efficient kernel where flash is missing (a T4).
    """
    total, device = query.shape[2], query.device
    offsets = torch.arange(max_len, device=device)
    cu = cu.to(device=device, dtype=torch.long)  # a no-op in training; a caller may hand the offsets from the host
    starts, ends = cu[:-1], cu[1:]
    index = (starts[:, None] + offsets[None]).clamp_(max=total - 1)  # [n, max_len]; padding reads any real token
    example = torch.searchsorted(ends, torch.arange(total, device=device), right=True)  # each token's slot
    position = torch.arange(total, device=device) - starts[example]
    q, k, v = (_ToPadded.apply(t.squeeze(0), index, example, position) for t in (query, key, value))
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # the memory-efficient kernel has no grouped-query support: share the key/value heads out
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
    real = (offsets[None] < (ends - starts)[:, None]).to(out.dtype)  # [n, max_len]: 1 on real slots
    return _FromPadded.apply(out.transpose(1, 2), example, position, index, real).unsqueeze(0)  # [1, T, heads, d]


_USE_FLASH = True


def register_attention(flash: bool = True) -> str:
    """Register `varlen_attention` with transformers under ATTENTION_NAME; returns the name.

    flash=False keeps it off the flash varlen kernel even where that runs (the benchmarks' stand-in for a T4).
    """
    global _USE_FLASH
    _USE_FLASH = flash
    AttentionInterface.register(ATTENTION_NAME, varlen_attention)
    return ATTENTION_NAME


def packed_kwargs(batch) -> dict:
    """The keyword arguments a transformers decoder passes down to `varlen_attention` for a PackedBatch."""
    return {"cu_seq_lens_q": batch.cu_seqlens, "cu_seq_lens_k": batch.cu_seqlens,
            "max_length_q": batch.max_seqlen, "max_length_k": batch.max_seqlen}


# ---------------------------------------------------------------------------------------------------- loss


def _linear_cross_entropy_class():

    class LinearCrossEntropy(torch.autograd.Function):
        """sum(CE(hidden @ weight.T, targets)), computed chunk by chunk with its gradient taken in the forward.

        The full logits (tokens × vocabulary, in fp32) are the largest tensor of a small model's step; here only a
        chunk of them exists at a time, and the backward pass is a multiply by the saved gradient.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk, ignore_index):
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            grad_h = torch.empty_like(hidden) if need_h else None
            acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 at least, like transformers' loss
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            total = torch.zeros((), dtype=acc, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                h, t = hidden[start:start + chunk], targets[start:start + chunk]
                keep = None
                if ignore_index is not None:  # padded rows (fixed-shape CUDA graphs): no loss, no gradient
                    keep = t != ignore_index
                    t = t.masked_fill(~keep, 0)
                # like transformers: matmul in the model dtype, softmax and loss in fp32. Each pass over a chunk's
                # logits is as large as a matmul's output, so the passes are few: log-softmax (bf16 in, fp32 out),
                # then exp straight into the gradient's dtype; the target column gets p - 1 computed in fp32
                logp = torch.log_softmax(h @ weight.t(), dim=-1, dtype=acc)
                rows = torch.arange(t.shape[0], device=t.device)
                picked = logp[rows, t]
                total += (-picked if keep is None else -picked * keep).sum()
                if need_h or need_w:
                    grad = torch.exp(logp, out=torch.empty(logp.shape, dtype=hidden.dtype, device=logp.device))
                    grad[rows, t] = (picked.exp() - 1.0).to(hidden.dtype)
                    if keep is not None:
                        grad.mul_(keep[:, None])
                    if need_h:
                        grad_h[start:start + chunk] = grad @ weight
                    if need_w:
                        grad_w += (grad.t() @ h).to(acc)
            ctx.save_for_backward(grad_h, grad_w)
            return total

        @staticmethod
        def backward(ctx, grad_out):
            grad_h, grad_w = ctx.saved_tensors
            return (grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None,
                    (grad_w * grad_out).to(grad_w.dtype) if grad_w is not None else None, None, None, None)

    return LinearCrossEntropy


_LCE = None


def linear_cross_entropy_sum(hidden, weight, targets, chunk: int | None = None, ignore_index: int | None = None):
    """Sum over rows of the cross-entropy of `hidden @ weight.T` against `targets`, without the full logits.

    With `ignore_index`, rows whose target equals it add nothing to the sum or the gradients.
    """
    global _LCE
    if _LCE is None:
        _LCE = _linear_cross_entropy_class()
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    if chunk is None:  # about 64M logits a chunk: 256 MB in fp32, large enough to keep the GPU busy
        chunk = max(256, (1 << 26) // weight.shape[0])
    if weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    return _LCE.apply(hidden, weight, targets, chunk, ignore_index)


def forward_backward(decoder, head, input_ids, position_ids, target_index, targets, scale, ignore_index=None,
                     **attention):
    """One packed micro-batch: forward, summed loss at `target_index`, backward of loss x `scale`; returns the sum."""
    out = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False, **attention)
    hidden = out.last_hidden_state[0].index_select(0, target_index)
    part = linear_cross_entropy_sum(hidden, head.weight, targets, ignore_index=ignore_index)
    (part * scale).backward()  # scale: 1 / learned tokens of the whole step, like the Trainer's token-weighted loss
    return part.detach()


# ---------------------------------------------------------------------------------------------------- optimizer


class LossScale:
    """Dynamic loss scaling for fp16, as `torch.amp.GradScaler` does it and with its kernels and constants.

    fp16 has the range of about 6e-5 to 65504: small gradients of the backward pass round to zero. The loss is
    multiplied by `scale` (2^16 to start) before the backward pass, the fp32 master gradients are divided by it
    again; a step whose gradients overflowed is skipped and the scale halved, and after `growth_interval` good steps
    in a row it doubles. The Trainer's `fp16=True` does the same through accelerate's GradScaler.
    """

    def __init__(self, device, init_scale: float = 2.0**16, growth_interval: int = 2000):
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        self._growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.growth_interval = growth_interval
        self.skipped = 0

    def unscale_(self, grad) -> None:
        """Divide `grad` (fp32) by the scale in place and record whether any value is inf or nan."""
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_([grad], self.found_inf, self.scale.reciprocal())

    def update(self) -> bool:
        """Halve the scale after an overflow, double it after growth_interval clean steps; True if this step overflowed."""
        overflowed = bool(self.found_inf.item())  # the one host read per step: whether to step at all
        torch._amp_update_scale_(self.scale, self._growth_tracker, self.found_inf, 2.0, 0.5, self.growth_interval)
        self.skipped += overflowed
        return overflowed


class MasterWeights:
    """Train low-precision parameters through fp32 master copies, all of them held in one flat buffer.

    LoRA adapters are small (about 1 % of the model), so their fp32 copies and optimizer states cost little, while
    the adapters themselves stay in bf16 and every matmul of the forward and backward pass stays in bf16. The
    parameters and their gradients become views of one flat tensor each, so copying gradients to the masters,
    clipping, the AdamW step and copying back are one kernel each, not a loop over hundreds of small tensors
    (on an H200 those loops cost more host time than the 135M model's whole backward pass). The gradient buffer
    stays put for the whole run, which CUDA graphs need (`fast.graphs`). `release()` gives every parameter its
    own storage back. fp16 parameters get dynamic loss scaling (`LossScale`): `backward_scale` is what to multiply
    the loss by, and `clip_and_step` unscales, and skips a step whose gradients overflowed.
    """

    def __init__(self, params, make_optimizer):

        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters: did the adapters get attached?")
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"trainable parameters must share one dtype and device, found {sorted(map(str, kinds))}")
        dtype, device = kinds.pop()
        total = sum(p.numel() for p in self.params)
        self.flat = torch.empty(total, dtype=dtype, device=device)
        self.flat_grad = torch.zeros(total, dtype=dtype, device=device)
        offset = 0
        for p in self.params:
            n = p.numel()
            self.flat[offset:offset + n].copy_(p.data.reshape(-1))
            p.data = self.flat[offset:offset + n].view_as(p)
            p.grad = self.flat_grad[offset:offset + n].view_as(p)  # backward adds into it in place
            offset += n
        if dtype == torch.float32:  # already fp32: optimize the flat buffer itself
            self.master = self.flat.detach().requires_grad_(True)
            self.master.grad = self.flat_grad
        else:
            self.master = self.flat.detach().float().requires_grad_(True)
            self.master.grad = torch.zeros_like(self.master)
        self.loss_scale = LossScale(device) if dtype == torch.float16 else None
        self.optimizer = make_optimizer([self.master])
        self.stepped = False  # whether the last clip_and_step stepped (an overflowed fp16 step does not)

    def backward_scale(self, learned_tokens: int):
        """What a step's summed loss is multiplied by before backward: 1 / learned tokens, times the loss scale."""
        if self.loss_scale is None:
            return 1.0 / learned_tokens
        return self.loss_scale.scale / learned_tokens

    def clip_and_step(self, max_grad_norm: float | None):
        """Copy gradients to the masters, clip by global norm, step, copy the new values back; returns the norm.

        With loss scaling the gradients are unscaled first, and a step whose gradients overflowed changes nothing
        (its norm is inf or nan, as the Trainer logs it).
        """

        separate = self.master.data_ptr() != self.flat.data_ptr()
        if separate:
            self.master.grad.copy_(self.flat_grad)
        if self.loss_scale is not None:
            self.loss_scale.unscale_(self.master.grad)
        norm = torch.nn.utils.clip_grad_norm_([self.master], max_grad_norm if max_grad_norm else math.inf,
                                              foreach=True)
        self.stepped = not (self.loss_scale is not None and self.loss_scale.update())
        if not self.stepped:
            return norm
        self.optimizer.step()
        if separate:
            self.flat.copy_(self.master.detach())
        return norm

    def zero_grad(self):
        """Zero the gradients in place (the buffer stays put, so the next backward adds into zeros)."""
        self.flat_grad.zero_()

    def release(self) -> None:
        """Give every parameter its own storage again and drop the gradients (safetensors refuses shared storage)."""
        for p in self.params:
            p.data = p.data.clone()
            p.grad = None


def make_adamw(kind: str, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
    """A factory for the optimizer: 'fused' (torch AdamW, one kernel), 'paged8bit' (bitsandbytes) or 'plain'."""

    def build(params):
        if kind == "paged8bit":
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW8bit(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        on_gpu = all(p.is_cuda for p in params)
        options = {"fused": True} if kind == "fused" and on_gpu else {"foreach": True}
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **options)

    return build


# ---------------------------------------------------------------------------------------------------- optional kernels


def liger_available(device) -> bool:
    """True where Liger's Triton kernels can run: a CUDA GPU Triton supports (7.0 and up) and `liger-kernel`."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (7, 0):
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:  # ImportError, or Triton failing to initialise
        return False
    return True


LIGER_KERNELS = ["rms_norm", "swiglu", "rope"]


def apply_liger(model):
    """Swap RMSNorm, SwiGLU and RoPE of a Llama-family model for Liger's Triton kernels; returns a function undoing it.

    Liger patches the model's modules and also transformers' Llama module itself (its RMSNorm and MLP classes and
    its RoPE function, for every Llama in the process). Left in place, a Llama used later on a CPU, this one moved
    there to be merged or exported included, would call Triton kernels on CPU tensors; the undo puts both back.
    """
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    namespaces = [vars(modeling_llama), *(vars(module) for module in model.modules())]
    before = [dict(namespace) for namespace in namespaces]
    missing = object()
    changed: list = []  # (namespace, key, value before Liger), for exactly what Liger set

    def undo() -> None:
        for namespace, key, value in changed:
            if value is missing:
                namespace.pop(key, None)
            else:
                namespace[key] = value

    def record() -> None:
        changed.extend((namespace, key, old.get(key, missing)) for namespace, old in zip(namespaces, before)
                       for key, value in namespace.items() if old.get(key, missing) is not value)

    try:  # the loss stays ours (linear_cross_entropy_sum); Liger's fused linear CE would need its own forward
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=model)
    except BaseException:  # a release that fails half-way is undone too
        record()
        undo()
        raise
    record()
    return undo
