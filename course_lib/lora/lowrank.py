"""Low rank from first principles: the SVD, the best rank-r approximation and its error (Eckart-Young).

For a matrix W with singular values s_1 >= s_2 >= ..., the best rank-r approximation in the Frobenius
norm keeps the r largest singular triplets, and what it misses is exactly the rest of the spectrum:
||W - W_r||_F^2 = s_{r+1}^2 + s_{r+2}^2 + ...  So one SVD gives the error for every r at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as widgets
import torch
from IPython.display import clear_output


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    # float64: the smallest singular values of a float32 matrix are otherwise mostly rounding noise.
    return weight.detach().to("cpu", torch.float64)


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D weight, largest first (float64)."""
    return torch.linalg.svdvals(_as_matrix(weight))


def rank_r_approx(weight: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-r approximation U_r diag(s_r) V_r^T, in the weight's dtype."""
    w = _as_matrix(weight)
    if not 0 <= r <= min(w.shape):
        raise ValueError(f"r={r} must lie between 0 and min{tuple(w.shape)}={min(w.shape)}")
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vh[:r]).to(weight.dtype)


def error_curve(svals: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error ||W - W_r|| / ||W|| for r = 0, 1, ..., len(svals), from the singular values."""
    energy = svals.to(torch.float64) ** 2
    # tail[r] = sum of s_i^2 for i >= r (0-based): what rank r leaves out.
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    return (tail / energy.sum()).sqrt()


def rank_r_error(weight: torch.Tensor, r: int) -> float:
    """Relative Frobenius error of the best rank-r approximation of `weight`."""
    return float(error_curve(singular_values(weight))[r])


def rank_for_error(svals: torch.Tensor, max_error: float) -> int:
    """The smallest rank whose best approximation has relative error at most `max_error`."""
    curve = error_curve(svals)
    return int(torch.nonzero(curve <= max_error)[0])


def slider(draw: Callable[[int], None], value: int, min: int, max: int, step: int = 1, description: str = "r"):
    """An IntSlider that calls `draw(r)` into its own output area whenever it moves; returns the widget box.

    It draws nothing when created: the notebook calls `draw` once itself, so a static copy of the plot
    exists wherever widgets do not render (papermill, the grader, a notebook viewer).
    """
    import matplotlib.pyplot as plt

    control = widgets.IntSlider(value=value, min=min, max=max, step=step, description=description,
                                continuous_update=False)  # redraw on release: an SVD plot per pixel is too many
    out = widgets.Output()

    def redraw(change: dict) -> None:
        with out:
            clear_output(wait=True)
            draw(change["new"])
            plt.show()

    control.observe(redraw, names="value")
    return widgets.VBox([control, out])


def spectrum_summary(svals: torch.Tensor, thresholds: Sequence[float] = (0.5, 0.2, 0.1)) -> dict[float, int]:
    """For each relative error, the rank needed to reach it."""
    return {t: rank_for_error(svals, t) for t in thresholds}


def choose_rank(delta: torch.Tensor, max_error: float, budget: int) -> int:
    """The rank to give an update `delta` (out x in): the smallest r whose best rank-r approximation has relative
    Frobenius error at most `max_error`, unless r * (out + in) parameters exceed `budget`: then the largest r that
    fits (the budget wins; 0 when not even rank 1 fits)."""
    out_features, in_features = delta.shape
    wanted = rank_for_error(singular_values(delta), max_error)
    affordable = budget // (out_features + in_features)
    return int(min(wanted, affordable))
