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
