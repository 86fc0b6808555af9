"""Low rank (course_lib.lora.lowrank): the SVD, the best rank-r approximation (Eckart-Young), the notebook's plots."""

import pytest
import torch

from course_lib.lora import lowrank, plots


def test_error_curve_equals_direct_reconstruction_error():
    torch.manual_seed(0)
    w = torch.randn(12, 20) @ torch.diag(torch.linspace(3, 0.1, 20))
    curve = lowrank.error_curve(lowrank.singular_values(w))
    assert curve.shape == (13,) and curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0, abs=1e-12)
    assert torch.all(curve[1:] <= curve[:-1])
    for r in (0, 1, 5, 12):
        approx = lowrank.rank_r_approx(w, r)
        assert approx.dtype == w.dtype and approx.shape == w.shape
        if r:
            assert torch.linalg.matrix_rank(approx.double(), rtol=1e-5) == r  # rtol: float32 rounding noise
        direct = (w.double() - approx.double()).norm() / w.double().norm()
        assert float(curve[r]) == pytest.approx(float(direct), abs=1e-6)
        assert lowrank.rank_r_error(w, r) == pytest.approx(float(curve[r]))


def test_truncated_svd_is_the_best_rank_r_approximation():
    """Eckart-Young, checked against other rank-r matrices: none is closer than the truncated SVD."""
    torch.manual_seed(1)
    w = torch.randn(10, 8, dtype=torch.float64)
    best = (w - lowrank.rank_r_approx(w, 3)).norm()
    for _ in range(20):
        other = torch.randn(10, 3, dtype=torch.float64) @ torch.randn(3, 8, dtype=torch.float64)
        assert (w - other).norm() > best
    u, s, vh = torch.linalg.svd(w)
    perturbed = (u[:, :3] * (s[:3] * 1.01)) @ vh[:3]
    assert (w - perturbed).norm() > best


def test_rank_for_error_and_bad_input():
    svals = torch.tensor([4.0, 2.0, 1.0, 0.0])  # energies 16, 4, 1: total 21
    assert lowrank.rank_for_error(svals, 0.5) == 1  # r=1 leaves sqrt(5/21) = 0.488
    assert lowrank.rank_for_error(svals, 0.25) == 2  # r=2 leaves sqrt(1/21) = 0.218
    assert lowrank.rank_for_error(svals, 0.2) == 3  # ... which is still above 0.2
    assert lowrank.rank_for_error(svals, 0.0) == 3
    assert lowrank.spectrum_summary(svals, (0.5,)) == {0.5: 1}
    with pytest.raises(ValueError, match="2-D"):
        lowrank.singular_values(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="r=5"):
        lowrank.rank_r_approx(torch.ones(3, 4), 5)


def test_plot_rank_error_and_slider_redraws_on_change():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = lowrank.error_curve(torch.tensor([3.0, 2.0, 1.0]))
    ax = plots.plot_rank_error({"w": curve}, r=1)
    assert len(ax.lines) == 3  # the curve, its marker at r, the vertical rule
    plt.close("all")
    drawn = []
    box = lowrank.slider(drawn.append, value=2, min=1, max=3)
    assert drawn == []  # nothing drawn at creation: the notebook draws the static copy itself
    box.children[0].value = 3
    assert drawn == [3]


def test_choose_rank_reads_the_spectrum_and_respects_the_budget():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(40, 6, generator=g))
    V, _ = torch.linalg.qr(torch.randn(30, 6, generator=g))
    delta = (U * torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])) @ V.T  # errors 1, .50, .25, .12, .06, .03, 0
    assert [lowrank.choose_rank(delta, e, 10**6) for e in (1.0, 0.3, 0.1, 0.01)] == [0, 2, 4, 6]
    assert lowrank.choose_rank(delta, 0.1, 3 * 70) == 3 and lowrank.choose_rank(delta, 0.1, 69) == 0
    assert isinstance(lowrank.choose_rank(delta, 0.1, 10**6), int)
