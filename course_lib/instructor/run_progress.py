"""What `course run` shows while a notebook runs: its cells done of total, and the running cell's own progress bar.

Papermill calls `cell_started` and `cell_finished` (nbclient's cell hooks) and writes the kernel's stderr to
`write`; course_lib's bars print tqdm's text line there when $COURSE_PROGRESS is 'text' (core.progress), and the
latest such line is shown next to the notebook's own bar, so a 20-minute cell shows where it is.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.table import Column
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

TQDM_LINE = re.compile(r"\d+%\|.*\|\s*\d+/\d+")  # "training:  40%|####      | 24/60 [00:30<00:45, ...]"


def running_bar(text: str) -> str | None:
    """The last tqdm progress line in a piece of a cell's stderr, or None when it holds none."""
    lines = [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]
    bars = [line for line in lines if TQDM_LINE.search(line)]
    return bars[-1] if bars else None


def code_cells(nb) -> int:
    """The cells nbclient runs (and calls the cell hooks for): code cells with a source."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" and cell.source.strip())


class RunProgress:
    """One bar per notebook of a `course run`, refreshed on every event rather than on a timer."""

    def __init__(self, console: Console):
        self.progress = Progress(TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                                 BarColumn(bar_width=16), MofNCompleteColumn(), TextColumn("cells"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[inner]}",
                                            table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
                                 console=console, auto_refresh=False, expand=True)
        self.task = None

    def __enter__(self) -> "RunProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def notebook(self, name: str, cells: int) -> "RunProgress":
        """Start the bar of the next notebook."""
        self.task = self.progress.add_task(name, total=cells, inner="")
        self.progress.refresh()
        return self

    def done(self, status: str) -> None:
        """Close the running notebook's bar with its status."""
        self.progress.update(self.task, inner="" if status == "ok" else status[:100])
        self.progress.refresh()

    # nbclient's hooks and papermill's stderr file
    def cell_started(self, cell=None, cell_index=None, **_) -> None:
        self.progress.update(self.task, inner="")
        self.progress.refresh()

    def cell_finished(self, cell=None, cell_index=None, **_) -> None:
        self.progress.advance(self.task)
        self.progress.refresh()

    def write(self, text: str) -> int:
        if self.task is not None and (bar := running_bar(text)):
            self.progress.update(self.task, inner=bar[:110])
            self.progress.refresh()
        return len(text)

    def flush(self) -> None:
        """A file's method: nothing is buffered."""
