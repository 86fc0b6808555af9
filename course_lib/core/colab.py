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
import re

# ---------------------------------------------------------------------------------------------------------------
# The course's own address is a placeholder until an instructor publishes a copy: `course release --repo OWNER/NAME`
# (or a git remote `origin` on GitHub) writes the real one into every badge and Colab install line, and `course
# doctor` warns while the notebooks still carry this one.
PLACEHOLDER_SLUG = "fine-tuning-course/course"
REPO_SLUG = PLACEHOLDER_SLUG  # what the functions below use when not given an address
BRANCH = "main"
# ---------------------------------------------------------------------------------------------------------------
SLUG = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
GITHUB_REMOTE = re.compile(r"^(?:https://(?:[^@/]+@)?github\.com/|ssh://git@github\.com/|git@github\.com:)"
                           r"(?P<slug>[^/]+/[^/]+?)(?:\.git)?/?$")

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BOOTSTRAP_MARK = "# Colab: install course_lib"  # the first line of the generated setup lines, to find them again

# Parameters of the course's causal models, for the memory a full fine-tune needs (module 03 derives the 16 bytes).
MODEL_PARAMS = {"smollm2-135m": 135e6, "smollm2-360m": 362e6, "smollm2-1.7b": 1.71e9}
BYTES_PER_PARAM_FULL_FT = 16  # mixed-precision Adam: bf16 weights and grads, fp32 master weights, two fp32 moments
HEADROOM = 0.7  # leave 30% of the GPU for activations, the CUDA context and the allocator's slack


def check_slug(slug: str) -> str:
    """`slug` if it is a GitHub OWNER/NAME, else a ValueError that says what is expected."""
    if not SLUG.match(slug or "") or slug.endswith((".git", ".")):
        raise ValueError(f"{slug!r} is not a GitHub repository address: expected OWNER/NAME, e.g. my-school/llm-course")
    return slug


def slug_from_remote(url: str) -> str | None:
    """OWNER/NAME of a git remote URL on GitHub (https, ssh or scp form), or None for any other remote."""
    found = GITHUB_REMOTE.match(url.strip())
    if not found:
        return None
    try:
        return check_slug(found["slug"])
    except ValueError:
        return None


def repo_url(slug: str | None = None) -> str:
    """The repository's address on GitHub."""
    return f"https://github.com/{slug or REPO_SLUG}"


def colab_url(path: str, slug: str | None = None) -> str:
    """The Colab link that opens `path` (relative to the repository root) from GitHub."""
    path = path.lstrip("/")
    if not path.endswith(".ipynb"):
        raise ValueError(f"{path!r} is not a notebook path (expected *.ipynb)")
    return f"https://colab.research.google.com/github/{slug or REPO_SLUG}/blob/{BRANCH}/{path}"


def slug_of_colab_url(url: str) -> str | None:
    """OWNER/NAME of a Colab link that colab_url wrote, or None."""
    found = re.match(r"https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/", url)
    return found[1] if found else None


def badge_markdown(path: str, slug: str | None = None) -> str:
    """The "Open in Colab" badge for the notebook at `path`, as Markdown."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(path, slug)})"


def install_requirement(slug: str | None = None) -> str:
    """What pip installs on Colab: this repository's package at BRANCH."""
    return f"course-lib @ git+{repo_url(slug)}@{BRANCH}"


def bootstrap_code(slug: str | None = None) -> str:
    """The first lines of every setup cell: on Colab they install course_lib (keeping Colab's torch) when missing."""
    # Pinning torch to the version already installed makes pip keep Colab's CUDA build, or fail with a clear
    # conflict, instead of silently downloading a 2 GB CPU wheel. It never runs outside Colab.
    return (
        f"{BOOTSTRAP_MARK} once, keeping Colab's own torch. Elsewhere these lines do nothing.\n"
        "import importlib.metadata, importlib.util, os, subprocess, sys\n"
        'if "COLAB_RELEASE_TAG" in os.environ and importlib.util.find_spec("course_lib") is None:\n'
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{install_requirement(slug)}",\n'
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
