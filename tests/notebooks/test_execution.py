"""Every solution notebook executes end to end in the smoke profile (as CI and `course run` do), and every blank
student notebook runs to its end under papermill too: an unsolved exercise fails its own test cells and nothing
else."""

import pytest

from course_lib.instructor.cli import QUIET_KERNEL
import json

from tests.helpers import REPO, SOLUTIONS

# Every blank notebook's graded cells carry the `raises-exception` tag (test_committed) and run to the end under
# nbgrader with only their test cells failing (test_grading's blank round trip). What that leaves to show is that
# papermill and JupyterLab's Run All honour the tag, which one notebook shows as well as eight: 01, quick to run,
# with five failing exercises to go past.
STUDENT = [REPO / "notebooks" / "01_data_formatting.ipynb"]


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_notebook_runs_in_smoke_profile(notebook, tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            str(notebook), str(tmp_path / notebook.name), parameters={"PROFILE": "smoke"},
            progress_bar=False, kernel_name="python3", cwd=str(notebook.parent),
            extra_arguments=QUIET_KERNEL,
        )
    except PapermillExecutionError as error:  # show the failing cell's error, not papermill's wrapper
        pytest.fail(f"{notebook.name}, cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                    + "\n".join(error.traceback[-5:]), pytrace=False)


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", STUDENT, ids=[p.stem for p in STUDENT])
def test_blank_student_notebook_runs_to_the_end(notebook, tmp_path):
    """Papermill (and JupyterLab's Run All) go past a failing test cell: graded cells carry `raises-exception`."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = tmp_path / notebook.name
    try:  # papermill runs every cell, then raises for the first error it saw: here, a test cell's
        papermill.execute_notebook(str(notebook), str(out), parameters={"PROFILE": "grade"}, progress_bar=False,
                                   kernel_name="python3", cwd=str(tmp_path), extra_arguments=QUIET_KERNEL)
    except PapermillExecutionError:
        pass
    cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    failed = {i for i, c in enumerate(cells) for o in c.get("outputs", []) if o.get("output_type") == "error"}
    tests = {i for i, c in enumerate(cells) if c.get("metadata", {}).get("nbgrader", {}).get("grade")}
    assert failed - tests == set(), [f"code cell {i}: {''.join(cells[i]['source'])[:80]!r}"
                                     for i in sorted(failed - tests)]
    assert failed, "a blank notebook whose tests all pass tests nothing"
    assert all(c.get("execution_count") for c in cells if "".join(c["source"]).strip()), \
        "the notebook stopped before its last cell"
