"""Training plots (course_lib.training.plots): the sweep's and the grid's marks and axes, the methods' bars."""

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from course_lib.training.plots import plot_curves, plot_grid, plot_methods, plot_sweep  # noqa: E402


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


def grid_table():
    table = pd.DataFrame({"learning_rate": [1e-3, 1e-3, 1e-2, 1e-2], "warmup_ratio": [0.0, 0.1, 0.0, 0.1],
                          "val_loss": [0.52, 0.41, math.nan, 0.47], "diverged": [False, False, True, False],
                          "selected": [False, True, False, False], "test_loss": [math.nan, 0.44, math.nan, 0.39]})
    table.attrs["grid"] = ["learning_rate", "warmup_ratio"]
    return table


def test_plot_grid_frames_the_cell_chosen_on_validation_and_marks_the_diverged_one():
    from matplotlib.patches import Rectangle

    ax = plot_grid(grid_table())
    frames = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(frames) == 1 and frames[0].get_xy() == (1 - 0.48, 0 - 0.48)  # row lr=1e-3, column warmup 0.1
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert ((0, 1), "x") in texts  # lr=1e-2, warmup 0: diverged
    assert ((1, 0), "0.41\ntest 0.44") in texts and ((1, 1), "0.47\ntest 0.39") in texts and ((0, 0), "0.52") in texts
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.001", "0.01"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.1"]


def test_plot_methods_draws_one_bar_per_method_for_all_eight():
    methods = ["full", "last_blocks", "bitfit", "prompt_tuning", "prefix_tuning", "ia3", "lora", "dora"]
    table = pd.DataFrame({"method": methods, "trainable_%": [100, 20, 0.05, 0.01, 0.1, 0.02, 1.1, 1.2],
                          "peak_memory_MB": [900.0] * 8, "seconds": [10.0] * 8, "val_loss": [0.3] * 8})
    fig = plot_methods(table)
    bars = fig.axes[0].patches
    assert len(bars) == 8 and len({b.get_facecolor() for b in bars}) == 8


def test_plot_curves_draws_each_runs_training_and_validation_loss_in_one_colour():
    slow = ([{"step": s, "loss": 1.0 - 0.01 * s} for s in range(1, 11)], [{"step": 5, "eval_loss": 0.9},
                                                                           {"step": 10, "eval_loss": 0.85}])
    fast = ([{"step": s, "loss": 1.0 / s} for s in range(1, 11)], [{"step": 5, "eval_loss": 0.3},
                                                                   {"step": 10, "eval_loss": 0.1}])
    ax = plot_curves({"lr 2e-4": slow, "lr 2e-3": fast})
    assert len(ax.lines) == 4
    assert [line.get_color() for line in ax.lines] == ["C0", "C0", "C1", "C1"]
    assert list(ax.lines[3].get_ydata()) == [0.3, 0.1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lr 2e-4: validation", "lr 2e-3: validation"]
