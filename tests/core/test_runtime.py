"""The runtime (course_lib.core.runtime): profiles from the environment or a parameter, seeds, the CPU's dtype."""

import logging
import subprocess
import sys

import pytest

from course_lib.core import runtime


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    runtime.set_profile(None)
    assert runtime.get_profile() == "smoke"
    assert runtime.pick(smoke=1, grade=2, full=3) == 1


def test_parameter_overrides_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    try:
        assert runtime.set_profile("grade") == "grade"
        assert runtime.pick(smoke=1, grade=2, full=3) == 2
        assert runtime.pick(smoke=1, full=3) == 1  # grade falls back to smoke
        runtime.set_profile("full")
        assert runtime.pick(smoke=1, grade=2, full=3) == 3
    finally:
        runtime.set_profile(None)


def test_default_profile_is_full(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    runtime.set_profile(None)
    assert runtime.get_profile() == "full"


@pytest.mark.parametrize("bad", ["fast", "FULLL"])
def test_bad_profile_names_the_source(monkeypatch, bad):
    monkeypatch.setattr(runtime, "_profile_override", None)
    monkeypatch.setenv("COURSE_PROFILE", bad)
    with pytest.raises(ValueError, match=r"\$COURSE_PROFILE"):
        runtime.get_profile()
    with pytest.raises(ValueError, match="PROFILE parameter"):
        runtime.set_profile(bad)


def test_seed_repeats():
    import torch

    runtime.seed_everything(3)
    a = torch.rand(3)
    runtime.seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_cpu_device_is_fp32(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device = runtime.detect_device()
    assert device.type == "cpu" and device.dtype == torch.float32


def _pretend_gpu(monkeypatch, capability):
    """A CUDA GPU of this compute capability whose torch would emulate bf16 (as torch does on a T4)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU {capability[0]}.{capability[1]}")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("capability, bf16", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_only_where_the_gpu_computes_in_it(monkeypatch, capability, bf16):
    """A T4 (7.5) trains in fp16 with a loss scale, though torch.cuda.is_bf16_supported() says True there."""
    import torch

    from course_lib.qlora.bnb import compute_dtype_for
    from course_lib.training.config import resolve_precision

    _pretend_gpu(monkeypatch, capability)
    assert runtime.gpu_has_bf16() is bf16
    device = runtime.detect_device()
    assert device.type == "cuda" and device.dtype == (torch.bfloat16 if bf16 else torch.float16)
    assert resolve_precision("auto", "cuda") == ("bf16" if bf16 else "fp16")
    assert compute_dtype_for("cuda") == device.dtype  # QLoRA's 4-bit layers compute in the same dtype
    if not bf16:
        with pytest.raises(Exception, match="no bf16 support"):
            resolve_precision("bf16", "cuda")


def test_importing_course_lib_quiets_bitsandbytes_before_anything_imports_it():
    # a notebook imports peft (and so bitsandbytes) before course_lib.start(); bitsandbytes' import-time warning
    # about a Hub kernel and trust_remote_code must not reach the learner
    code = ("import logging, sys; import course_lib; assert 'bitsandbytes' not in sys.modules; "
            "print(logging.getLogger('bitsandbytes.backends.cpu.ops').getEffectiveLevel())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) >= logging.ERROR
