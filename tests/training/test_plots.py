"""Training plots (course_lib.training.plots): the learning-rate sweep's marks and axes."""

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from course_lib.training.plots import plot_sweep  # noqa: E402


def sweep_table(losses, diverged):
    rates = [10.0 ** (k - 4) for k in range(len(losses))]
    return pd.DataFrame({"learning_rate": rates, "train_loss": losses, "val_loss": [v * 1.1 for v in losses],
                         "diverged": diverged})


def test_plot_sweep_marks_the_best_rate_and_every_diverged_run():
    table = sweep_table([0.41, 0.066, 0.18, 14.4, math.nan], [False, False, False, True, True])
    ax = plot_sweep(table)
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert sorted(float(line.get_xdata()[0]) for line in crosses) == [1e-1, 1.0]
    assert "best 1e-03" in [text.get_text() for text in ax.get_legend().get_texts()]
    # a diverged loss 200x the best one would flatten the others on a linear axis
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_plot_sweep_keeps_a_linear_loss_axis_when_a_loss_is_zero():
    ax = plot_sweep(sweep_table([0.4, 0.0, 0.2], [False, False, False]))
    assert ax.get_yscale() == "linear"
