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


def test_importing_course_lib_quiets_bitsandbytes_before_anything_imports_it():
    # a notebook imports peft (and so bitsandbytes) before course_lib.start(); bitsandbytes' import-time warning
    # about a Hub kernel and trust_remote_code must not reach the learner
    code = ("import logging, sys; import course_lib; assert 'bitsandbytes' not in sys.modules; "
            "print(logging.getLogger('bitsandbytes.backends.cpu.ops').getEffectiveLevel())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) >= logging.ERROR
