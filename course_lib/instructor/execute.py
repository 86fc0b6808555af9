"""nbgrader's Execute step, hardened for untrusted notebooks.

- the kernel is `course_lib.instructor.sandbox` (limits, scrubbed environment, private folder, Landlock);
- a kernel that dies (os._exit, a memory or CPU limit) fails the cell it was running and every later
  code cell gets an error too, so no test that never ran can count as passed;
- a cell that runs past its timeout is interrupted and fails; after a second timeout the run stops (a loop
  that swallows KeyboardInterrupt would otherwise cost the timeout once per remaining cell);
- each cell's output is capped in bytes, so a huge print cannot exhaust the grader's memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer

from course_lib.instructor.sandbox import Limits

KERNEL_NAME = "course-sandbox"


def install_kernelspec(folder: Path, limits: Limits) -> Path:
    """Write the sandbox kernelspec under `folder`/kernels; put `folder` on JUPYTER_PATH to use it."""
    spec = Path(folder) / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "course_lib.instructor.sandbox", "--limits", limits.to_json(), "-f", "{connection_file}"],
        "display_name": "Python 3 (course sandbox)",
        "language": "python",
    }))
    return spec


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class SafeExecute(Execute):
    """Execute every cell in the sandbox kernel; failures become error outputs, never a crashed grader."""

    max_output_bytes = Integer(2_000_000, help="output kept per cell; the rest is cut").tag(config=True)
    max_timeouts = Integer(2, help="timed-out cells after which the rest of the notebook is not run").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._stopped: str | None = None
        self._output_used: dict[int, int] = {}
        self._timeouts = 0
        try:
            return super().preprocess(nb, resources, km)
        except DeadKernelError:  # the kernel died during shutdown: the cells already carry their errors
            return self.nb, self.resources

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        if self._stopped:
            cell.outputs = [_error("NotRun", f"not run: {self._stopped}")]
            return cell, resources
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
            if any(o.get("ename") == "CellTimeoutError" for o in cell.outputs):
                self._timeouts += 1
                if self._timeouts >= self.max_timeouts:
                    self._stopped = f"{self._timeouts} cells ran past the {self.timeout} s limit"
            return cell, resources
        except DeadKernelError:
            self._stopped = f"the kernel died in cell {index} (os._exit, a crash, or a CPU/memory limit)"
            cell.outputs.append(_error("DeadKernelError", self._stopped))
        except CellTimeoutError:
            self._stopped = f"cell {index} ran past the {self.timeout} s limit and could not be interrupted"
            cell.outputs.append(_error("CellTimeoutError", self._stopped))
        return cell, resources

    def output(self, outs, msg, display_id, cell_index):
        used = self._output_used.get(cell_index, 0)
        size = len(json.dumps(msg.get("content", {})))
        self._output_used[cell_index] = used + size
        if used + size > self.max_output_bytes:
            if used <= self.max_output_bytes:
                outs.append(NotebookNode(output_type="stream", name="stderr",
                                         text=f"[output cut at {self.max_output_bytes} bytes by the grader]\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)
