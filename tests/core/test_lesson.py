"""What keeps a lesson honest and going: own_work switches library answers off, fallback steps in for an unsolved
exercise, show_source shows real lines, expect names the failing case."""

import functools
import math
from collections import OrderedDict

import pytest
import torch

from course_lib.core.checks import own_work
from course_lib.core.lesson import expect, fallback, solved, source
from course_lib.qlora import quantize
from course_lib.qlora.quantize import absmax_quantize as imported_by_name


class _Made:
    def __init__(self, x):
        self.x = x


def _decorated(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


@_decorated
def _wrapped(x):
    return x + 1


def test_own_work_switches_off_every_way_of_reaching_a_function_and_restores_it():
    x = torch.arange(8.0)
    before = quantize.absmax_quantize(x, 4)
    alias = quantize.absmax_quantize

    def delegating(t, f=quantize.absmax_quantize):  # a default argument holds the function too
        return f(t, 4)

    calls = [lambda: quantize.absmax_quantize(x, 4), lambda: imported_by_name(x, 4), lambda: alias(x, 4),
             lambda: delegating(x), lambda: _Made(1), lambda: _wrapped(1), lambda: math.sqrt(2.0),
             lambda: OrderedDict()]
    with own_work(quantize.absmax_quantize, _Made, _wrapped, math.sqrt, OrderedDict):
        for call in calls:
            with pytest.raises(RuntimeError, match="use your own implementation"):
                call()
        assert quantize.absmax_dequantize(*before, 4).shape == x.shape  # what is not listed still works
    after = quantize.absmax_quantize(x, 4)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert _Made(2).x == 2 and _wrapped(1) == 2 and math.sqrt(4.0) == 2.0 and OrderedDict() == {}


def test_own_work_restores_even_when_the_learner_code_raises():
    with pytest.raises(ZeroDivisionError):
        with own_work(quantize.absmax_quantize):
            1 / 0
    assert quantize.absmax_quantize(torch.ones(4), 4)[1].item() == 1.0


def test_fallback_uses_the_reference_only_while_the_exercise_is_a_stub(capsys):
    def stub(x):
        raise NotImplementedError()

    def wrong(x):
        raise ValueError("my bug")

    call = fallback(stub, lambda x: x * 2)
    assert call(3) == 6 and call(4) == 8
    assert capsys.readouterr().out.count("not written yet") == 1  # one line, not one per call
    with pytest.raises(ValueError, match="my bug"):  # a real bug is the learner's to see, not hidden
        fallback(wrong, lambda x: x)(1)
    assert fallback(lambda x: x + 1, lambda x: 0)(1) == 2
    assert solved(lambda: 1) and not solved(lambda: stub(1))


def test_source_cuts_the_lines_between_two_markers():
    text = source(quantize.absmax_quantize)
    assert text.startswith("def absmax_quantize")
    part = source(quantize.absmax_quantize, start="def ", stop='"""')
    assert part.splitlines()[0].startswith("def absmax_quantize") and len(part.splitlines()) <= 3
    with pytest.raises(ValueError, match="no line"):
        source(quantize.absmax_quantize, start="no such text anywhere")


def test_expect_names_the_case_the_expected_and_the_result():
    expect("two plus two", 4, 4)
    expect("close", 0.1 + 0.2, 0.3, tol=1e-9)
    expect("tensors", torch.ones(3), torch.ones(3))
    expect("tensors within a tolerance", torch.ones(3) + 1e-7, [1.0, 1.0, 1.0], tol=1e-6)
    with pytest.raises(AssertionError, match="shape"):
        expect("shape", torch.ones(3), torch.ones(4), tol=1e-3)
    with pytest.raises(AssertionError, match="off"):
        expect("off", torch.ones(2), [1.0, 1.1], tol=1e-3)
    with pytest.raises(AssertionError, match=r"block of zeros: expected \[0, 0\], got \[0, 1\]"):
        expect("block of zeros", [0, 1], [0, 0])
