"""How a capstone adapter earns its points: the thresholds notebook 08 states, applied by the grader."""

from __future__ import annotations

BASELINE_MARGIN = 0.20  # beat the prompting baseline by this much macro-F1: well past what one training step gives (0.09)
TARGET_SCORE = 0.80  # the score a well-tuned LoRA run reaches on the default model within the CPU budget
ADAPTER_FOLDER = "capstone_adapter"  # where the notebook saves the adapter, beside the notebook, for hand-in


def points(score: float | None, baseline: float, max_points: float) -> float:
    """Half the points for beating the baseline by BASELINE_MARGIN, the other half for reaching TARGET_SCORE."""
    if score is None:
        return 0.0
    half = max_points / 2
    return (half if score >= baseline + BASELINE_MARGIN else 0.0) + (half if score >= TARGET_SCORE else 0.0)


def explain(score: float | None, baseline: float, max_points: float) -> str:
    """One sentence for the feedback: the hidden-test score against both thresholds, and the points."""
    if score is None:
        return f"no adapter was scored: 0/{max_points:g}"
    beat = "beats" if score >= baseline + BASELINE_MARGIN else "does not beat"
    reach = "reaches" if score >= TARGET_SCORE else "does not reach"
    return (f"hidden-test score {score:.3f}: {beat} the prompting baseline {baseline:.3f} by {BASELINE_MARGIN:g}, "
            f"{reach} the target {TARGET_SCORE:g}: {points(score, baseline, max_points):g}/{max_points:g}")
