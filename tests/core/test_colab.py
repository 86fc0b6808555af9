"""Colab (course_lib.core.colab): badge and setup lines generated from one repository address, the model picked for
the GPU."""

import json
import os
import subprocess
import sys

import pytest

from course_lib.core import colab
from tests.helpers import REPO


def test_badge_and_links_come_from_the_one_repository_address(monkeypatch):
    monkeypatch.setattr(colab, "REPO_SLUG", "someone/elsewhere")
    badge = colab.badge_markdown("notebooks/03_qlora.ipynb")
    assert badge == ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                     "(https://colab.research.google.com/github/someone/elsewhere/blob/main/notebooks/03_qlora.ipynb)")
    assert "git+https://github.com/someone/elsewhere@main" in colab.bootstrap_code()
    with pytest.raises(ValueError, match="not a notebook"):
        colab.colab_url("notebooks/03_qlora.py")


def test_the_repository_address_lives_in_one_place():
    """No file of the package spells the address except colab.py (badges are generated, never typed)."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "course_lib").rglob("*.py")
                 if p.name != "colab.py" and colab.REPO_SLUG in p.read_text(encoding="utf-8")]
    assert offenders == []


@pytest.mark.parametrize("memory_gb, expected", [
    (None, "smollm2-135m"),  # CPU runtime
    (6.0, "smollm2-135m"),   # 360M needs 5.4 GiB for a full fine-tune: more than 70% of 6 GiB
    (14.7, "smollm2-360m"),  # Colab's T4
    (22.5, "smollm2-360m"),  # L4
    (39.4, "smollm2-1.7b"),  # A100 40 GB
    (79.1, "smollm2-1.7b"),  # A100 80 GB / H100
])
def test_pick_model_takes_the_largest_that_a_full_fine_tune_fits(memory_gb, expected):
    assert colab.pick_model(memory_gb) == expected


def test_configure_records_the_choice_and_respects_the_learners(monkeypatch):
    monkeypatch.setenv("COURSE_MODEL", "")  # configure() writes it: recorded here, so it is removed afterwards
    monkeypatch.setattr(colab, "gpu_memory_gb", lambda: 14.7)
    assert colab.configure() == "smollm2-360m"
    assert os.environ["COURSE_MODEL"] == "smollm2-360m"
    monkeypatch.setenv("COURSE_MODEL", "smollm2-135m")
    assert colab.configure() == "smollm2-135m"
    assert colab.configure("smollm2-1.7b") == "smollm2-1.7b"  # an explicit model is never overridden


def test_setup_lines_do_nothing_outside_colab(tmp_path):
    """Run the generated lines in a fresh interpreter whose pip would fail loudly if it were called."""
    fake = tmp_path / "pip"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("raise SystemExit('pip must not run outside Colab')")
    env = {k: v for k, v in os.environ.items() if k != "COLAB_RELEASE_TAG"}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", colab.bootstrap_code() + "\nprint('ok')"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    # On Colab with course_lib already installed (a re-run of the cell) they do nothing either.
    env["COLAB_RELEASE_TAG"] = "release-colab_20260101"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    done = subprocess.run([sys.executable, "-c", colab.bootstrap_code() + "\nprint('ok')"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_setup_lines_on_colab_install_the_repository_keeping_torch(tmp_path):
    """Where course_lib is missing on Colab, pip gets this repository and Colab's exact torch version."""
    fake = tmp_path / "pip"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sys, json; print(json.dumps(sys.argv[1:]))")
    # Hide course_lib from find_spec: -S leaves site-packages (and its editable finder) out, and the working
    # folder is not the repository, so the interpreter sees only the standard library and the fake pip.
    env = {"COLAB_RELEASE_TAG": "release-colab_20260101", "PYTHONPATH": str(tmp_path),
           "PATH": os.environ.get("PATH", "")}
    code = ("import importlib.metadata\nimportlib.metadata.version = lambda name: '2.8.0+cu126'\n"
            + colab.bootstrap_code())
    done = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["install", "-q", colab.install_requirement(), "torch==2.8.0+cu126"]


def test_start_prints_one_line_offline(capsys, monkeypatch):
    import course_lib

    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    course_lib.start("smoke")
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_start_on_colab_uses_the_model_that_fits_the_gpu(capsys, monkeypatch):
    import course_lib
    from course_lib.core import runtime

    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    monkeypatch.setenv("COURSE_MODEL", "")  # configure() writes it: recorded here, so it is removed afterwards
    monkeypatch.setattr(colab, "gpu_memory_gb", lambda: 14.7)
    course_lib.start("smoke")
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "smollm2-360m: hub HuggingFaceTB/SmolLM2-360M-Instruct" in line
    from course_lib.core.models import find_spec

    assert find_spec("default").key == "smollm2-360m"
    runtime.set_profile(None)


@pytest.mark.parametrize("remote, slug", [
    ("git@github.com:school/llm-course.git", "school/llm-course"),
    ("https://github.com/school/llm-course", "school/llm-course"),
    ("https://github.com/school/llm-course.git/", "school/llm-course"),
    ("https://token@github.com/school/llm.course.git", "school/llm.course"),
    ("ssh://git@github.com/school/course.git", "school/course"),
    ("https://gitlab.com/school/course.git", None),
    ("/srv/git/course", None),
    ("https://github.com/school", None),
])
def test_the_repository_address_is_read_from_a_github_remote_only(remote, slug):
    assert colab.slug_from_remote(remote) == slug


@pytest.mark.parametrize("bad", ["", "school", "school/", "/course", "a b/c", "school/course.git", "x/y/z"])
def test_an_address_that_is_not_owner_slash_name_is_refused(bad):
    with pytest.raises(ValueError, match="OWNER/NAME"):
        colab.check_slug(bad)
