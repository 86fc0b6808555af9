"""Long examples on the fast path: each layer's input kept in host memory, the layer recomputed in backward with its
MLP in token chunks.

Gradient checkpointing keeps one tensor per layer (its input, tokens x hidden) and recomputes the rest in the
backward pass. For one example of 64k tokens those inputs alone are 24 x 256 MiB on the 1.7B shape, and the
recomputed layer's MLP holds three tokens x 8,192 tensors (3 GiB). Here the inputs go to pinned host memory (copied
back just before their layer's backward) and the MLP is recomputed a chunk of tokens at a time, so the GPU holds one
layer's attention activations and one chunk's MLP: the example length is bounded by host memory and one layer.

`offload_layers(model, chunk)` swaps every decoder layer's forward for that; `restore_layers` puts it back. The maths
is the layer's own: only where the tensors wait differs (tests/fast/test_longctx.py compares the gradients).
"""

from __future__ import annotations

from types import MethodType

import torch
from torch.utils.checkpoint import checkpoint


def _offloaded_function():

    class OffloadedLayer(torch.autograd.Function):
        """run(hidden) without saving anything on the device: the input waits in host memory, and the backward pass
        recomputes the layer from it (the adapters' gradients accumulate there, as in reentrant checkpointing)."""

        @staticmethod
        def forward(ctx, run, hidden):
            ctx.run, ctx.device = run, hidden.device
            pinned = hidden.is_cuda
            host = torch.empty(hidden.shape, dtype=hidden.dtype, device="cpu", pin_memory=pinned)
            host.copy_(hidden, non_blocking=pinned)
            ctx.host = host
            with torch.no_grad():
                return run(hidden)

        @staticmethod
        def backward(ctx, grad):
            hidden = ctx.host.to(ctx.device, non_blocking=True).requires_grad_(True)
            ctx.host = None
            with torch.enable_grad():
                out = ctx.run(hidden)
            torch.autograd.backward(out, grad)
            return None, hidden.grad

    return OffloadedLayer


_FN = None


def _layer_forward(self, hidden_states, *args, **kwargs):
    global _FN
    if _FN is None:
        _FN = _offloaded_function()
    original = self.__dict__["_course_layer_forward"]

    def run(hidden):
        out = original(hidden, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    if not torch.is_grad_enabled():
        return run(hidden_states)
    if not hidden_states.requires_grad:  # the embeddings are frozen: give autograd a path into the first layer
        hidden_states = hidden_states.detach().requires_grad_(True)
    return _FN.apply(run, hidden_states)


def _chunked_mlp_forward(self, x):
    original = self.__dict__["_course_mlp_forward"]
    chunk = self.__dict__["_course_mlp_chunk"]
    if not torch.is_grad_enabled() or x.shape[-2] <= chunk:
        return original(x)
    parts = [checkpoint(original, piece, use_reentrant=False, preserve_rng_state=False)
             for piece in x.split(chunk, dim=-2)]
    return torch.cat(parts, dim=-2)


def offload_layers(model, mlp_chunk: int = 8192) -> int:
    """Keep each decoder layer's input in host memory and recompute the layer in backward, MLP in `mlp_chunk`-token
    chunks; returns how many layers changed. Turn the model's own gradient checkpointing off first."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = list(base.get_decoder().layers)
    for layer in layers:
        layer.__dict__["_course_layer_forward"] = layer.forward
        layer.forward = MethodType(_layer_forward, layer)
        mlp = layer.mlp
        mlp.__dict__["_course_mlp_forward"] = mlp.forward
        mlp.__dict__["_course_mlp_chunk"] = mlp_chunk
        mlp.forward = MethodType(_chunked_mlp_forward, mlp)
    return len(layers)


def restore_layers(model) -> None:
    """Undo `offload_layers`: every layer and MLP gets its own forward back."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.get_decoder().layers:
        for module, key in ((layer, "_course_layer_forward"), (layer.mlp, "_course_mlp_forward")):
            if key in module.__dict__:
                module.__dict__.pop(key)
                module.__dict__.pop("forward", None)
        layer.mlp.__dict__.pop("_course_mlp_chunk", None)
