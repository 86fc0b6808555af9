"""Liger's kernels (course_lib.fast.ops.apply_liger) leave the model and transformers as they found them.

Liger patches transformers' Llama module for the whole process; after the fast path, a Llama on a CPU (this one,
moved there to be merged or exported, or any other) must run PyTorch's own code again. Needs `liger-kernel` (with
Triton) installed, as on a GPU machine; the patching itself runs on a CPU, so no GPU is needed.
"""

import pytest
import torch

liger = pytest.importorskip("liger_kernel.transformers", reason="needs liger-kernel (and Triton)")

from transformers.models.llama import modeling_llama  # noqa: E402

from course_lib.fast.ops import apply_liger  # noqa: E402


def test_undo_puts_back_the_llama_module_and_the_models_modules(tiny_llama):
    model = tiny_llama.eval()
    ids = torch.randint(3, 1000, (1, 9))
    with torch.no_grad():
        before_logits = model(input_ids=ids).logits
    module_before = {name: getattr(modeling_llama, name) for name in ("apply_rotary_pos_emb", "LlamaRMSNorm",
                                                                       "LlamaMLP")}
    undo = apply_liger(model)
    assert modeling_llama.apply_rotary_pos_emb is not module_before["apply_rotary_pos_emb"]  # it did patch
    norm, mlp = model.model.norm, model.model.layers[0].mlp
    assert "forward" in vars(norm) and "forward" in vars(mlp)
    undo()
    assert {name: getattr(modeling_llama, name) for name in module_before} == module_before
    assert not any("forward" in vars(module) for module in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before_logits)  # PyTorch's kernels, on the CPU
