"""Where the course runs: device, dtype, seeds, the runtime profile, and quiet logs."""

from __future__ import annotations

import os
import random
import sys
import warnings
from dataclasses import dataclass

PROFILES = ("smoke", "grade", "full")
_profile_override: str | None = None


def set_profile(profile: str | None) -> str:
    """Set the profile for this process (from a papermill parameter); None keeps the environment's."""
    global _profile_override
    if profile is not None:
        _check_profile(profile, "the PROFILE parameter")
    _profile_override = profile
    return get_profile()


def get_profile() -> str:
    """The active profile: a value set by `set_profile`, else $COURSE_PROFILE, else 'full'."""
    if _profile_override is not None:
        return _profile_override
    value = os.environ.get("COURSE_PROFILE", "").strip().lower() or "full"
    return _check_profile(value, "$COURSE_PROFILE")


def _check_profile(value: str, where: str) -> str:
    if value not in PROFILES:
        raise ValueError(f"{where} is {value!r}; expected one of {', '.join(PROFILES)}")
    return value


def pick(smoke, grade=None, full=None):
    """Choose a value by profile, e.g. `pick(smoke=8, grade=4, full=200)`; a missing one falls back to smoke."""
    profile = get_profile()
    if profile == "full" and full is not None:
        return full
    if profile == "grade" and grade is not None:
        return grade
    return smoke


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


@dataclass(frozen=True)
class Device:
    """The accelerator the course will use, and the dtype that suits it."""

    type: str  # "cuda" or "cpu"
    name: str
    dtype_name: str  # "bfloat16", "float16" or "float32"

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    def __str__(self) -> str:
        return f"{self.type} ({self.name}), {self.dtype_name}"


def gpu_has_bf16(device=None) -> bool:
    """True on a CUDA GPU with bf16 arithmetic of its own (compute capability 8.0 and up, or ROCm)."""
    import torch

    if not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    # Not torch.cuda.is_bf16_supported(): by default it also says True where bf16 is only emulated (a T4, 7.5),
    # which would put Colab's free GPU on slow bf16 instead of its fp16 tensor cores.
    return torch.cuda.get_device_capability(device)[0] >= 8


def detect_device() -> Device:
    """Find a CUDA GPU if there is one; bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        dtype = "bfloat16" if gpu_has_bf16() else "float16"
        return Device("cuda", name, dtype)
    # fp32 on CPU: bf16 matmuls are slow on most laptop CPUs and fp16 has no CPU kernels worth using.
    return Device("cpu", f"{os.cpu_count()} cores", "float32")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def quiet() -> None:
    """Silence the warnings and log lines that teach a learner nothing."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|bitsandbytes)")
    warnings.filterwarnings("ignore", message=".*Failed to initialize NumPy.*")
    # bitsandbytes' import-time warning is quieted at `import course_lib` (course_lib/__init__.py): peft imports it first
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def widgets_enabled() -> bool:
    """Widgets render nothing in the grade profile: they can hang an autograder."""
    return get_profile() != "grade"
