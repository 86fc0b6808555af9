"""nbgrader's Execute step, hardened for untrusted notebooks.

- the kernel is `course_lib.instructor.sandbox` (namespaces, a private root, no network beyond its own loopback,
  an unprivileged user, Landlock, limits), reached over Unix sockets in a folder of its own (the box) that is deleted afterwards;
- a kernel that dies (os._exit, a memory or CPU limit) fails the cell it was running and every later
  code cell gets an error too, so no test that never ran can count as passed;
- a cell that runs past its timeout is interrupted and fails; after a second timeout the run stops (a loop
  that swallows KeyboardInterrupt would otherwise cost the timeout once per remaining cell);
- each cell's output and the whole notebook's are capped in bytes, and display updates are ignored (one update
  can rewrite every earlier output), so no output can exhaust the grader's memory or disk;
- the whole notebook has a wall-clock budget: each cell's timeout is what is left of it, and cells after it
  are not run, so many slow cells cannot add up to an endless grading.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer, Unicode

from course_lib.core.checks import MIME
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
        "metadata": {"course_limits": json.loads(limits.to_json())},
    }))
    return spec


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class SafeExecute(Execute):
    """Execute every cell in the sandbox kernel; failures become error outputs, never a crashed grader."""

    max_output_bytes = Integer(2_000_000, help="output kept per cell; the rest is cut").tag(config=True)
    max_notebook_output_bytes = Integer(20_000_000, help="output kept per notebook; the rest is cut").tag(config=True)
    max_report_bytes = Integer(5_000_000, help="check reports kept per notebook past the output caps").tag(config=True)
    notebook_timeout = Integer(900, help="wall-clock seconds for the whole notebook").tag(config=True)
    max_timeouts = Integer(2, help="timed-out cells after which the rest of the notebook is not run").tag(config=True)
    box_parent = Unicode("", help="where each kernel's box folder is made (default: the system's temp folder)"
                         ).tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._stopped: str | None = None
        self._output_used: dict[int, int] = {}
        self._notebook_output = 0
        self._reports_used = 0
        self._timeouts = 0
        self._deadline = time.monotonic() + self.notebook_timeout
        parent = self.box_parent or tempfile.gettempdir()
        if len(parent) > 60:  # a Unix socket's path has at most 107 bytes
            parent = "/tmp"
        self._box = Path(tempfile.mkdtemp(prefix="cbox-", dir=parent))
        try:
            return super().preprocess(nb, resources, km)
        except DeadKernelError:  # the kernel died during shutdown: the cells already carry their errors
            return self.nb, self.resources
        finally:
            shutil.rmtree(self._box, ignore_errors=True)

    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        km.transport = "ipc"  # Unix sockets in the box: nothing of the kernel listens on TCP
        km.ip = str(self._box / "k")
        km.connection_file = str(self._box / "kernel.json")
        return km

    async def async_start_new_kernel_client(self):
        try:
            return await super().async_start_new_kernel_client()
        except RuntimeError as error:  # "kernel died before replying": the sandbox's log says why
            log = self._box / "kernel.log"
            why = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
            raise RuntimeError(f"{error}: {why[0][:300]}" if why else str(error)) from None

    def _get_timeout(self, cell):
        left = max(1, int(self._deadline - time.monotonic()))
        timeout = super()._get_timeout(cell)
        return left if timeout is None else min(timeout, left)

    @staticmethod
    def _is_report(msg) -> bool:
        data = msg.get("content", {}).get("data")
        return msg.get("msg_type") == "display_data" and isinstance(data, dict) and set(data) == {MIME}

    def _update_display_id(self, display_id, msg):
        """Ignore display updates: grading keeps what each cell displayed first."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        if not self._stopped and time.monotonic() >= self._deadline:
            self._stopped = f"the notebook used up its {self.notebook_timeout} s budget"
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
        self._notebook_output += size
        over_cell = used + size > self.max_output_bytes
        over_notebook = self._notebook_output > self.max_notebook_output_bytes
        if (over_cell or over_notebook) and self._is_report(msg) and self._reports_used + size <= self.max_report_bytes:
            self._reports_used += size  # a check's report is kept past the caps (its own, smaller budget)
            return super().output(outs, msg, display_id, cell_index)
        if over_cell or over_notebook:
            limit = self.max_output_bytes if over_cell else self.max_notebook_output_bytes
            if used <= self.max_output_bytes:
                self._output_used[cell_index] = self.max_output_bytes + 1  # one notice per cell
                outs.append(NotebookNode(output_type="stream", name="stderr",
                                         text=f"[output cut at {limit} bytes by the grader]\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)
