"""Colab: the repository's address (in this one place), the "Open in Colab" badge, and the Colab setup.

A notebook opened in Colab from its badge starts in a bare Colab runtime, where `course_lib` is not
installed yet, so no function of `course_lib` can install it: the first lines of every setup cell do,
and they are generated here from REPO_SLUG (`bootstrap_code`) like the badge (`badge_markdown`);
`course_lib.instructor.badges` checks and inserts both. Outside Colab those lines do nothing.

Once installed, `course_lib.start()` calls `configure()` on Colab (a two-line hook in runtime.start, with
models.find_spec reading $COURSE_MODEL for "default"): it picks the largest course model whose full fine-tune
fits on the runtime's GPU (the hub is reachable there) and records it in $COURSE_MODEL, so the setup cell stays
one call and prints one line. Locally and offline nothing here runs.
"""

from __future__ import annotations

import os

# ---------------------------------------------------------------------------------------------------------------
# PLACEHOLDER: the real GitHub owner/name of the course repository is not known yet. Every badge, Colab link and
# Colab install command is generated from these two constants; change them here and run `python -m
# course_lib.instructor.badges --write solutions/*.ipynb` then `course release`.
REPO_SLUG = "fine-tuning-course/course"
BRANCH = "main"
# ---------------------------------------------------------------------------------------------------------------

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BOOTSTRAP_MARK = "# Colab: install course_lib"  # the first line of the generated setup lines, to find them again

# Parameters of the course's causal models, for the memory a full fine-tune needs (module 03 derives the 16 bytes).
MODEL_PARAMS = {"smollm2-135m": 135e6, "smollm2-360m": 362e6, "smollm2-1.7b": 1.71e9}
BYTES_PER_PARAM_FULL_FT = 16  # mixed-precision Adam: bf16 weights and grads, fp32 master weights, two fp32 moments
HEADROOM = 0.7  # leave 30% of the GPU for activations, the CUDA context and the allocator's slack


def repo_url() -> str:
    """The repository's address on GitHub."""
    return f"https://github.com/{REPO_SLUG}"


def colab_url(path: str) -> str:
    """The Colab link that opens `path` (relative to the repository root) from GitHub."""
    path = path.lstrip("/")
    if not path.endswith(".ipynb"):
        raise ValueError(f"{path!r} is not a notebook path (expected *.ipynb)")
    return f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{BRANCH}/{path}"


def badge_markdown(path: str) -> str:
    """The "Open in Colab" badge for the notebook at `path`, as Markdown."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(path)})"


def install_requirement() -> str:
    """What pip installs on Colab: this repository's package at BRANCH."""
    return f"course-lib @ git+{repo_url()}@{BRANCH}"


def bootstrap_code() -> str:
    """The first lines of every setup cell: on Colab they install course_lib (keeping Colab's torch) when missing."""
    # Pinning torch to the version already installed makes pip keep Colab's CUDA build, or fail with a clear
    # conflict, instead of silently downloading a 2 GB CPU wheel. It never runs outside Colab.
    return (
        f"{BOOTSTRAP_MARK} once, keeping Colab's own torch. Elsewhere these lines do nothing.\n"
        "import importlib.metadata, importlib.util, os, subprocess, sys\n"
        'if "COLAB_RELEASE_TAG" in os.environ and importlib.util.find_spec("course_lib") is None:\n'
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{install_requirement()}",\n'
        "                    f\"torch=={importlib.metadata.version('torch')}\"], check=True)"
    )


def gpu_memory_gb() -> float | None:
    """Total memory of the first CUDA GPU in GiB, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def pick_model(memory_gb: float | None) -> str:
    """The largest course model whose full fine-tune fits in `memory_gb` of GPU memory (None: a CPU)."""
    chosen = "smollm2-135m"
    if memory_gb is None:
        return chosen
    for key, params in sorted(MODEL_PARAMS.items(), key=lambda item: item[1]):
        if params * BYTES_PER_PARAM_FULL_FT / 2**30 <= HEADROOM * memory_gb:
            chosen = key
    return chosen


def configure(model: str = "default") -> str:
    """On Colab: the model the notebook should use; for 'default', the one that fits the GPU, kept in $COURSE_MODEL."""
    if model != "default":
        return model
    chosen = os.environ.get("COURSE_MODEL", "").strip()  # the learner's own choice wins
    if not chosen:
        chosen = pick_model(gpu_memory_gb())
        os.environ["COURSE_MODEL"] = chosen  # course_lib.core.models reads it for "default" (and child processes too)
    return chosen
