"""What keeps a lesson going and in view: an unsolved exercise falls back to the reference, and the library code a
notebook calls is shown next to the call.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import textwrap
from typing import Any, Callable

import numpy as np


def fallback(mine: Callable, reference: Callable, name: str | None = None) -> Callable:
    """`mine`, or `reference` (with a one-line note, once) while `mine` still raises NotImplementedError."""
    label = name or getattr(mine, "__name__", "your function")
    told = []

    @functools.wraps(mine)
    def call(*args, **kwargs):
        try:
            return mine(*args, **kwargs)
        except NotImplementedError:
            if not told:
                told.append(True)
                print(f"{label} is not written yet: this cell uses the course's reference instead, so the lesson goes "
                      "on (your grade is unaffected).")
            return reference(*args, **kwargs)

    return call


def solved(check: Callable[[], Any]) -> bool:
    """False when `check()` raises NotImplementedError (an exercise not written yet), True when it runs."""
    try:
        check()
    except NotImplementedError:
        return False
    return True


def source(obj: Any, start: str | None = None, stop: str | None = None) -> str:
    """The source of a function or class; with `start`/`stop`, only the lines from the first one holding `start`
    up to the first one after it holding `stop` (both kept)."""
    text = textwrap.dedent(inspect.getsource(obj))
    if start is None and stop is None:
        return text
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if start is None or start in line), None)
    if first is None:
        raise ValueError(f"{getattr(obj, '__qualname__', obj)} has no line with {start!r}")
    last = next((i for i, line in enumerate(lines[first:], first) if stop is not None and stop in line), len(lines) - 1)
    return textwrap.dedent("\n".join(lines[first:last + 1])) + "\n"


def show_source(obj: Any, start: str | None = None, stop: str | None = None) -> None:
    """Show the (highlighted) source of a course_lib function or class in the notebook, so the real code sits next to
    the call; plain text outside Jupyter."""
    text = source(obj, start, stop)
    where = f"{obj.__module__}.{obj.__qualname__}"
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # pragma: no cover - Jupyter always has both
        get_ipython = None  # noqa: N806
    if get_ipython is None or get_ipython() is None:
        print(f"# {where}\n{text}")
        return
    style = HtmlFormatter(style="default").get_style_defs(".course-source")
    body = highlight(text, PythonLexer(), HtmlFormatter(cssclass="course-source"))
    display(HTML(f"<details open><summary><code>{where}</code></summary><style>{style}</style>{body}</details>"))


def expect(case: str, got: Any, expected: Any, tol: float | None = None) -> None:
    """A visible test's check: raise AssertionError naming the case, what was expected and what came back.

    With `tol`, numbers, lists and tensors are compared within `tol` (relative and absolute)."""
    if tol is None:
        same = got == expected
        same = bool(same.all()) if hasattr(same, "all") else bool(same)
    else:
        same = _close(got, expected, tol)
    if not same:
        raise AssertionError(f"{case}: expected {expected!r}, got {got!r}")


def _close(got: Any, expected: Any, tol: float) -> bool:
    if isinstance(got, numbers.Number) and isinstance(expected, numbers.Number):
        return math.isclose(float(got), float(expected), rel_tol=tol, abs_tol=tol)
    try:
        got_array, expected_array = (np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float)
                                     for v in (got, expected))
    except (TypeError, ValueError):
        return False
    return got_array.shape == expected_array.shape and bool(np.allclose(got_array, expected_array, rtol=tol, atol=tol))
