"""`course run` shows each notebook's cells done of total and the running cell's own progress bar, then a table."""

import io
import json
import os

import nbformat
from rich.console import Console

from course_lib.instructor import cli
from course_lib.instructor.run_progress import running_bar


def test_the_latest_tqdm_line_is_picked_out_of_a_cells_stderr():
    chunk = "\rcounting:  10%|#         | 2/20 [00:00<00:01]\rcounting:  15%|#5        | 3/20 [00:00<00:01]"
    assert running_bar(chunk) == "counting:  15%|#5        | 3/20 [00:00<00:01]"
    assert running_bar("UserWarning: something the cell printed\n") is None
    assert running_bar("") is None


def test_course_run_shows_cells_and_the_running_cells_bar(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.cells = [
        nbformat.v4.new_code_cell("PROFILE = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("Text between the cells."),
        nbformat.v4.new_code_cell("import time\nfrom course_lib.core.progress import progress_bar\n"
                                  "for _ in progress_bar(range(12), desc='counting', mininterval=0):\n"
                                  "    time.sleep(0.02)"),
        nbformat.v4.new_code_cell("print('done', PROFILE)"),
    ]
    source = tmp_path / "demo.ipynb"
    nbformat.write(nb, source)
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=True, width=220, color_system=None))
    assert cli.main(["run", str(source), "--profile", "smoke", "--output", str(tmp_path / "build")]) == 0
    shown = screen.getvalue()
    assert "counting:" in shown and "12/12" in shown  # the cell's own bar, as it ran
    assert "4/4 cells" in shown  # three code cells and papermill's parameters cell, all done
    assert "demo.ipynb" in shown and "ok" in shown  # the summary table
    assert "done smoke" in (tmp_path / "build" / "executed" / "demo.ipynb").read_text()
    timings = json.loads((tmp_path / "build" / "timings.json").read_text())
    (machine,) = timings
    assert f"{len(os.sched_getaffinity(0))} CPU cores" in machine
    assert timings[machine]["smoke"]["demo.ipynb"]["status"] == "ok"
    assert timings[machine]["smoke"]["demo.ipynb"]["seconds"] > 0.2  # twelve sleeps of 0.02 s at least
