"""Badges (course_lib.instructor.badges): `python -m course_lib.instructor.badges` inserts, refreshes and checks each
notebook's Colab badge and setup lines."""

import nbformat

from course_lib.core import colab
from course_lib.instructor import badges


def _notebook(tmp_path, name="05_demo.ipynb"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 05 · Demo\n\nText."),
                nbformat.v4.new_code_cell("PROFILE = None"),
                nbformat.v4.new_code_cell("import course_lib\nsession = course_lib.start(PROFILE, seed=SEED)")]
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_apply_inserts_badge_and_setup_lines_once(tmp_path):
    path = _notebook(tmp_path)
    assert len(badges.problems(path)) == 2
    assert badges.apply(path) is True
    assert badges.problems(path) == []
    assert badges.apply(path) is False  # idempotent
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].source.startswith(colab.badge_markdown("notebooks/05_demo.ipynb") + "\n\n# 05 · Demo")
    assert nb.cells[2].source.count("COLAB_RELEASE_TAG") == 1
    assert nb.cells[2].source.endswith("session = course_lib.start(PROFILE, seed=SEED)")


def test_apply_refreshes_a_stale_address(tmp_path, monkeypatch):
    path = _notebook(tmp_path)
    monkeypatch.setattr(colab, "REPO_SLUG", "old-owner/old-name")
    badges.apply(path)
    monkeypatch.setattr(colab, "REPO_SLUG", "new-owner/new-name")
    found = badges.problems(path)
    assert any("stale badge" in p for p in found) and any("setup lines" in p for p in found)
    badges.apply(path)
    text = path.read_text()
    assert "old-owner" not in text and text.count("new-owner/new-name") == 2
    assert badges.problems(path) == []


def test_check_command_fails_on_a_notebook_without_badge(tmp_path, capsys):
    path = _notebook(tmp_path)
    assert badges.main([str(path)]) == 1
    assert "has no badge" in capsys.readouterr().out
    assert badges.main(["--write", str(path)]) == 0
    assert badges.main([str(path)]) == 0


def _git_repo(folder, origin=None):
    import subprocess

    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    if origin:
        subprocess.run(["git", "-C", str(folder), "remote", "add", "origin", origin], check=True)


def test_release_takes_the_address_from_repo_then_origin_then_the_notebooks(tmp_path, capsys):
    from course_lib.instructor import cli

    _git_repo(tmp_path, origin="git@github.com:school/llm-course.git")
    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    solutions.mkdir()
    path = _notebook(solutions)
    args = ["release", "--solutions", str(solutions), "--notebooks", str(notebooks)]
    assert cli.main(args) == 0  # no --repo: the git remote origin
    released = (notebooks / path.name).read_text()
    assert released.count("school/llm-course") == 2 and colab.PLACEHOLDER_SLUG not in released
    assert "from the git remote origin" in capsys.readouterr().out
    assert cli.main(args + ["--repo", "other-school/course"]) == 0
    assert (notebooks / path.name).read_text().count("other-school/course") == 2
    assert badges.slug_of(path) == "other-school/course"  # solutions/ carries it too: the next release keeps it
    assert cli.main(args + ["--repo", "not a repository"]) == 2
    assert "expected OWNER/NAME" in capsys.readouterr().out
    assert badges.slug_of(path) == "other-school/course"  # a refused address changes nothing


def test_release_without_remote_keeps_the_address_the_notebooks_carry_and_warns_on_the_placeholder(tmp_path, capsys):
    from course_lib.instructor import cli

    _git_repo(tmp_path, origin="/srv/git/course")  # a remote that is not on GitHub says nothing of the address
    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    solutions.mkdir()
    path = _notebook(solutions)
    args = ["release", "--solutions", str(solutions), "--notebooks", str(notebooks)]
    assert cli.main(args) == 0
    assert "placeholder" in capsys.readouterr().out and badges.slug_of(path) == colab.PLACEHOLDER_SLUG
    badges.apply(path, "kept/address")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "from the notebooks' badges" in out and "placeholder" not in out
    assert badges.slug_of(notebooks / path.name) == "kept/address"
