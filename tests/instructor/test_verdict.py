"""Hidden tests' reports: what the kernel turns into plain data, and how the grader judges it against the
reference's, with no kernel (a report is only JSON)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from course_lib.core.checks import MIME, plain
from course_lib.instructor.verdict import difference, judge, reports


def _record(name, value, rtol=1e-5, atol=1e-8):
    return {"name": name, "value": plain(value), "rtol": rtol, "atol": atol}


def _cell(*records, error=None):
    outputs = [{"output_type": "display_data", "data": {MIME: r}, "metadata": {}} for r in records]
    if error:
        outputs.append({"output_type": "error", "ename": error[0], "evalue": error[1], "traceback": []})
    return {"cell_type": "code", "outputs": outputs}


def test_plain_keeps_what_a_check_needs_and_nothing_the_kernel_can_fake():
    assert plain(torch.tensor([[1, 2]], dtype=torch.uint8)) == {
        "array": {"dtype": "torch.uint8", "shape": [1, 2], "values": [[1, 2]]}}
    assert plain(np.float32(0.5)) == 0.5 and plain(np.int64(3)) == 3 and plain(True) is True
    assert plain(float("nan")) == {"float": "nan"} and plain((1, "a")) == [1, "a"]
    assert plain({1: [2]}) == {"dict": [[1, [2]]]} and plain({3, 1}) == {"set": [1, 3]}

    @dataclasses.dataclass
    class Point:
        x: int

    assert plain(Point(2)) == {"dict": [["x", 2]]}

    class Liar(list):
        def __iter__(self):
            return iter([1, 2, 3])

    assert plain(Liar([9])) == [9]  # read through list's own methods
    assert json.loads(json.dumps(plain([torch.zeros(2), {"k": np.arange(2)}])))  # all of it is JSON
    with pytest.raises(TypeError, match="cannot hand a object"):
        plain(object())


@pytest.mark.parametrize("expected, got, word", [
    (1.0, 1.0 + 1e-9, ""),
    (2, 2.0, ""),  # a count returned as a float is still the count
    (1.0, 1.1, "wrong"),
    (True, 1, "wrong"),
    ("a", "b", "wrong"),
    ([1, 2], [1], "expected 2 items"),
    ([1, [2, 3]], [1, [2, 4]], "at [1][1]"),
    (torch.ones(2, dtype=torch.uint8), torch.ones(2, dtype=torch.int64), "dtype"),
    (torch.ones(2), torch.ones(3), "shape"),
    (torch.ones(2), [1.0, 1.0], "expected a tensor"),
    ({"a": 1}, {"b": 1}, "keys"),
    (float("nan"), float("nan"), ""),
    (1.0, float("nan"), "wrong"),
])
def test_difference_says_where_a_result_first_differs(expected, got, word):
    found = difference(plain(expected), plain(got), 1e-5, 1e-8)
    assert (word in found) if word else found == "", found


def test_malformed_or_deep_data_is_refused_not_crashed_on():
    assert "malformed" in difference(plain(torch.ones(1)), {"array": 5}, 1e-5, 1e-8)
    deep = 1.0
    for _ in range(200):
        deep = [deep]
    assert "deeply" in difference(deep, deep, 1e-5, 1e-8)


def test_a_cell_passes_only_with_no_error_and_the_reference_reports():
    expected = [_record("f", [1, 2]), _record("g", 0.5, atol=1e-3)]
    assert judge(_cell(*expected), expected) == ""
    assert judge(_cell(_record("f", [1, 2]), _record("g", 0.5004)), expected) == ""  # the reference's tolerance
    assert "the value" in judge(_cell(_record("f", [1, 2]), _record("g", 0.6, atol=1.0)), expected)  # not its own
    assert "AssertionError: no" == judge(_cell(*expected, error=("AssertionError", "no")), expected)
    assert "made 1" in judge(_cell(expected[0]), expected)
    assert "made 3" in judge(_cell(*expected, expected[1]), expected)  # a forged extra report
    assert "no report of that name" in judge(_cell(expected[1], expected[0]), expected)
    assert judge(_cell(), []) == ""


def test_reports_reads_only_check_records_in_order():
    cell = _cell(_record("a", 1))
    cell["outputs"].insert(0, {"output_type": "stream", "name": "stdout", "text": json.dumps(_record("x", 1))})
    cell["outputs"].append({"output_type": "display_data", "data": {MIME: "{not json"}, "metadata": {}})
    assert [r and r["name"] for r in reports(cell)] == ["a", None]
    assert math.isnan(float(plain(float("nan"))["float"]))
