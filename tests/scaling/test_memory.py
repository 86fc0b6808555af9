"""course_lib.scaling.memory: model-state bytes per GPU and the cheapest strategy that fits."""

import math

import pytest

from course_lib.scaling import memory


def test_model_states_follow_the_zero_table():
    assert math.isclose(memory.model_state_gb(1e9, 8, "ddp"), 16.0)
    assert math.isclose(memory.model_state_gb(1e9, 4, "zero1"), 4 + 3)
    assert math.isclose(memory.model_state_gb(1e9, 7, "zero2"), 2 + 2)
    assert math.isclose(memory.model_state_gb(1e9, 8, "zero3"), 2.0)
    with pytest.raises(ValueError, match="unknown strategy"):
        memory.model_state_gb(1e9, 2, "fsdp-ish")
    with pytest.raises(ValueError, match="at least 1"):
        memory.model_state_gb(1e9, 0, "ddp")


@pytest.mark.parametrize("args, expected", [
    ((135e6, 1, 80, 2), "ddp"),
    ((7e9, 8, 80, 10), "zero1"),
    ((13e9, 8, 80, 30), "zero2"),
    ((7e9, 4, 40, 8), "zero3"),
    ((1e9, 1, 20, 4), "ddp"),  # exactly full still fits
    ((1e9, 1, 20, 6), None),  # one GPU: sharding saves nothing, and the activations do not shrink
    ((70e9, 8, 80, 20), None),
])
def test_cheapest_strategy_is_the_first_that_fits_with_its_activations(args, expected):
    assert memory.cheapest_strategy(*args) == expected
