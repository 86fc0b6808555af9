"""What a hidden test hands to the grader: the learner's results as plain data, judged outside the kernel.

A hidden test cell calls the learner's function on hidden inputs and `report`s what came back. The kernel only
serialises: numbers, strings, lists and dicts, tensors and arrays with their dtype and shape. The grader, in its
own process, compares each report with the one the reference solution made at the same place, so nothing the
learner's kernel redefines (assert, `__eq__`, `torch.testing`, IPython itself) can turn a wrong answer into a pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import sys
import types
from typing import Any, Iterator

MIME = "application/vnd.course-check+json"
JOB_RESULT_PREFIX = "COURSE-RESULT "  # a sandboxed job (not a kernel) answers with one line: this, then JSON


def plain(value: Any) -> Any:
    """`value` as JSON data; floats that JSON cannot hold, dicts, sets and arrays become tagged objects."""
    # subclasses are read through their base type's own methods: an overridden __iter__ or __eq__ changes nothing
    if value is None:
        return None
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else {"float": repr(number)}
    if _is_array(value):
        array = value.detach().cpu() if hasattr(value, "detach") else value
        return {"array": {"dtype": str(array.dtype), "shape": [int(n) for n in array.shape],
                          "values": plain(array.tolist())}}
    if isinstance(value, dict):
        return {"dict": [[plain(k), plain(v)] for k, v in dict.items(value)]}
    if isinstance(value, list):
        return [plain(v) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return [plain(v) for v in tuple.__iter__(value)]
    if isinstance(value, (set, frozenset)):
        return {"set": sorted((plain(v) for v in value), key=repr)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"dict": [[f.name, plain(getattr(value, f.name))] for f in dataclasses.fields(value)]}
    raise TypeError(f"cannot hand a {type(value).__name__} to the grader: return numbers, strings, lists, dicts "
                    "or tensors")


def _is_array(value: Any) -> bool:
    module = type(value).__module__.split(".")[0]
    return module in ("torch", "numpy") and hasattr(value, "tolist") and hasattr(value, "shape")


def report(name: str, value: Any, *, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Hand a result to the grader, which compares it with the reference solution's report of the same name."""
    from IPython import get_ipython
    from IPython.display import display

    record = {"name": str(name), "value": plain(value), "rtol": float(rtol), "atol": float(atol)}
    if get_ipython() is not None:  # outside a kernel (a quick test that execs a cell) nobody is listening
        display({MIME: record}, raw=True)



def _message(qualified: str) -> str:
    return (f"use your own implementation: {qualified} does this exercise's job, so it is switched off while the "
            "exercise is graded")


def _refuse(*args, **kwargs):
    raise RuntimeError("PLACEHOLDER")


def _raiser(qualified: str):
    """A function of any signature that refuses to do `qualified`'s job."""
    message = _message(qualified)

    def refuse(*args, **kwargs):
        raise RuntimeError(message)

    return refuse


@contextlib.contextmanager
def own_work(*targets: Any) -> Iterator[None]:
    """While inside, every target (a function, method or class) raises "use your own implementation".

    A Python function's code is swapped in place, so every name bound to it answers the same way: a module
    attribute, `from ... import` in the notebook, an alias, a default argument. A class refuses to be built. A
    builtin, whose code cannot be swapped, is replaced wherever a loaded module names it.
    """
    undo: list = []
    try:
        for target in targets:
            _switch_off(target, undo)
        yield
    finally:
        for restore in reversed(undo):
            restore()


def _qualified(target: Any) -> str:
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', getattr(target, '__name__', repr(target)))}"


def _switch_off(target: Any, undo: list) -> None:
    name = _qualified(target)
    if isinstance(target, type) and not target.__flags__ & (1 << 8):  # 1 << 8: an immutable (built-in) type
        had, original = "__init__" in target.__dict__, target.__dict__.get("__init__")
        type.__setattr__(target, "__init__", _raiser(name))
        undo.append(lambda: type.__setattr__(target, "__init__", original) if had
                    else type.__delattr__(target, "__init__"))
        return
    function, seen = getattr(target, "__func__", target), set()  # a bound method: its function
    while isinstance(function, types.FunctionType) and id(function) not in seen:
        seen.add(id(function))
        if not function.__code__.co_freevars:  # code with a closure cannot be swapped for code without one
            original = function.__code__
            consts = tuple(_message(name) if c == "PLACEHOLDER" else c for c in _refuse.__code__.co_consts)
            function.__code__ = _refuse.__code__.replace(co_consts=consts, co_name=original.co_name)
            undo.append(lambda f=function, code=original: setattr(f, "__code__", code))
            return
        function = getattr(function, "__wrapped__", None)  # a decorator's wrapper keeps what it wraps here
    _replace_everywhere(target, _raiser(name), undo)


def _replace_everywhere(target: Any, replacement: Any, undo: list) -> None:
    """Rebind every module attribute that is `target` (the notebook's names included) to `replacement`."""
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for key, value in list(namespace.items()):
            if value is target:
                namespace[key] = replacement
                undo.append(lambda ns=namespace, k=key: ns.__setitem__(k, target))
