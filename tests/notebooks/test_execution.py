"""Every solution notebook executes end to end in the smoke profile (as CI and `course run` do)."""

import pytest

from course_lib.instructor.cli import QUIET_KERNEL
from tests.helpers import SOLUTIONS


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
