"""The project's own contracts: the README's commands, CI, the course command."""

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _readme_commands():
    return re.findall(r"```(?:bash|sh)\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = [line for block in _readme_commands() for line in block.splitlines() if "pytest" in line]
    assert len(test_command) == 1, "the README must hold exactly one test command"
    assert test_command[0].strip() in (REPO / ".ci" / "run").read_text()


@pytest.mark.xdist_group("group-check")
def test_xdist_groups_take_effect(request):
    """The hostile class, the graded class and the browser each build one costly fixture for a group of tests on
    one worker; a pytest that pytest-xdist cannot group (9.2 and 3.8) would spread them and build each twice."""
    if getattr(request.config.option, "loadgroup", False):
        assert request.node.nodeid.endswith("@group-check"), (
            f"pytest-xdist did not group {request.node.nodeid}: this pytest and pytest-xdist disagree on node ids "
            "(see the pins of pyproject's dev extra)")


def test_course_doctor_passes_on_this_install():
    result = subprocess.run([sys.executable, "-m", "course_lib.instructor.cli", "doctor"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bitsandbytes" in result.stdout and "smollm2-135m" in result.stdout


def test_course_command_reports_bad_usage():
    result = subprocess.run([sys.executable, "-m", "course_lib.instructor.cli", "fly"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_no_pickle_or_remote_code_in_course_lib():
    paths = sorted((REPO / "course_lib").rglob("*.py"))
    assert len(paths) > 10  # every module of every subpackage, not only the package's __init__.py
    for path in paths:
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path.relative_to(REPO)
        assert "pickle.load" not in text, path.relative_to(REPO)
