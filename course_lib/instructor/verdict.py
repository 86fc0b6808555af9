"""The grader's side of a hidden test: judge, in the grader's own process, what the learner's kernel reported.

The kernel's reports are untrusted data. They are compared with the reports the reference solution made in the
same graded cell (its tolerances included), so a kernel that rewrites `assert`, `__eq__` or IPython gains nothing:
a graded cell passes only when it raised no error and every report matches the reference's, in order.
"""

from __future__ import annotations

import json
import math
from typing import Any

from course_lib.core.checks import MIME

MAX_DEPTH = 64  # deeper data is refused rather than recursed into


def reports(cell: dict) -> list[Any]:
    """The check records among a cell's outputs, in the order the kernel sent them."""
    found = []
    for output in cell.get("outputs", []):
        data = output.get("data") if output.get("output_type") in ("display_data", "execute_result") else None
        if isinstance(data, dict) and MIME in data:
            record = data[MIME]
            try:
                found.append(json.loads(record) if isinstance(record, str) else record)
            except ValueError:
                found.append(None)
    return found


def first_error(cell: dict) -> str:
    """'Name: message' of the first error a cell raised, or an empty string."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            line = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip().rstrip(":")
            return line.splitlines()[0][:300] if line else "Error"
    return ""


def judge(cell: dict, expected: list[dict]) -> str:
    """Why a graded cell fails (its error, or a report that differs from the reference's), or '' when it passes."""
    error = first_error(cell)
    if error:
        return error
    got = reports(cell)
    names = [record["name"] for record in expected]
    if len(got) != len(expected):
        return f"the checks {', '.join(names)} expected {len(expected)} report(s), the cell made {len(got)}"
    for want, have in zip(expected, got):
        if not isinstance(have, dict) or have.get("name") != want["name"] or "value" not in have:
            return f"check {want['name']}: no report of that name came back"
        try:
            problem = difference(want["value"], have["value"], float(want["rtol"]), float(want["atol"]))
        except RecursionError:
            problem = "the result is nested too deeply"
        if problem:
            return f"check {want['name']}: {problem}"
    return ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) and set(value) == {"float"} and value["float"] in ("nan", "inf", "-inf"):
        return float(value["float"])
    return None


def _kind(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return type(value).__name__


def difference(expected: Any, got: Any, rtol: float, atol: float, where: str = "", depth: int = 0) -> str:
    """Where `got` first differs from `expected` (numbers within rtol/atol), or '' when they agree."""
    at = f" at {where}" if where else ""
    if depth > MAX_DEPTH:
        return "the result is nested too deeply"
    want_number = _number(expected)
    if want_number is not None:
        have = _number(got)
        if have is None:
            return f"expected a number{at}, got {_kind(got)}"
        if math.isnan(want_number) and math.isnan(have):
            return ""
        if not math.isclose(have, want_number, rel_tol=rtol, abs_tol=atol):
            return f"the value{at} is wrong (got {_short(have)})"
        return ""
    if isinstance(expected, (bool, str)) or expected is None:
        if type(got) is not type(expected) or got != expected:
            return f"the value{at} is wrong (got {_short(got)})"
        return ""
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"expected a list{at}, got {_kind(got)}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items{at}, got {len(got)}"
        for i, (want, have) in enumerate(zip(expected, got)):
            problem = difference(want, have, rtol, atol, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return ""
    kind = _kind(expected)
    if _kind(got) != kind or not isinstance(got, dict):
        return f"expected {'a tensor or array' if kind == 'array' else 'a ' + kind}{at}, got {_kind(got)}"
    if kind == "array":
        want, have = expected["array"], got["array"]
        if not isinstance(have, dict):
            return f"a malformed array{at}"
        if have.get("dtype") != want["dtype"]:
            return f"dtype {_short(have.get('dtype'))}{at}, expected {want['dtype']}"
        if have.get("shape") != want["shape"]:
            return f"shape {_short(have.get('shape'))}{at}, expected {want['shape']}"
        return difference(want["values"], have.get("values"), rtol, atol, where, depth + 1)
    if kind == "dict":
        want = _pairs(expected["dict"])
        have = _pairs(got["dict"])
        if want is None or have is None or set(have) != set(want):
            keys = sorted(want or {}, key=str)
            return f"expected the keys {keys}{at}, got {sorted(have or {}, key=str)}"
        for key, value in want.items():
            problem = difference(value, have[key], rtol, atol, f"{where}[{key!r}]", depth + 1)
            if problem:
                return problem
        return ""
    if kind == "set":
        return "" if got["set"] == expected["set"] else f"the set{at} is wrong"
    return f"an unknown kind of value{at}"


def _pairs(items: Any) -> dict | None:
    if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
        return None
    try:
        return {json.dumps(k, sort_keys=True) if not isinstance(k, (str, int)) else k: v for k, v in items}
    except TypeError:
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
