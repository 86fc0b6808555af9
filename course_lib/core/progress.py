"""Progress bars: a widget in Jupyter, one line of text when `course run` follows a notebook from a terminal.

`course run` executes notebooks headless, where a widget's progress travels as comm messages nobody shows. It
sets $COURSE_PROGRESS=text for its kernels, and every bar of course_lib then writes tqdm's text line to stderr,
which the terminal shows under the notebook's cell count (course_lib.instructor.run_progress).
"""

from __future__ import annotations

import os

TEXT_PROGRESS = "COURSE_PROGRESS"


def progress_bar(*args, **kwargs):
    """A tqdm bar: tqdm.auto's choice, or plain text on stderr when $COURSE_PROGRESS is 'text'."""
    if os.environ.get(TEXT_PROGRESS) == "text":
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", 0.5)  # the terminal wants a fresh line, not hundreds a second
        kwargs.setdefault("ascii", True)
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
