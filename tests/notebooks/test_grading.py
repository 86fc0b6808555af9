"""nbgrader round trips of every notebook: the reference solution gets full marks, the blank student notebook zero,
and each typical wrong answer loses exactly the points of its own exercise and no others.

The points are read from the solution notebooks' nbgrader metadata (`points` of each graded cell), and an exercise's
graded cells are those that follow its solution cell, so this file restates no mark; it only lists the mistakes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.helpers import SOLUTIONS, cell_sources, edited_solution, exercises, notebook_imports, points


@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer: `old` replaced by `new` in the solution cell `exercise` of notebook `stem`."""

    stem: str
    exercise: str  # the grade_id of the solution cell the mistake goes into
    old: str
    new: str
    round_trip: bool = True  # graded by nbgrader; False where the quick check below covers it (a round trip is slow)
    quick: bool = False  # also checked without nbgrader: its exercise's test cells need only the notebook's imports


MISTAKES = {
    # 00: json.dumps with ensure_ascii left on: "José" becomes "Jos\u00e9"
    "00-ascii": Mistake("00_quick_start", "build_messages", "ensure_ascii=False", "ensure_ascii=True"),
    # 01: masking nothing: every token learned, the model trains on the prompt too
    "01-mask-nothing": Mistake("01_data_formatting", "build_labels", "labels = [IGNORE_INDEX] * len(ids)",
                               "labels = list(ids)"),
    # 01: no EOS after the output: the model never learns to stop
    "01-no-eos": Mistake("01_data_formatting", "format_instruction", 'return prompt + row["output"] + eos_token',
                         'return prompt + row["output"]'),
    # 01: positions run on across examples instead of restarting
    "01-positions-run-on": Mistake("01_data_formatting", "pack_into_blocks",
                                   'block["position_ids"] += list(range(len(seq)))',
                                   'block["position_ids"] += list(range(len(block["position_ids"]), '
                                   'len(block["position_ids"]) + len(seq)))'),
    # 02: scaling by alpha instead of alpha / r
    "02-alpha-not-over-r": Mistake("02_lora_math", "lora_forward", "scaling = alpha / r", "scaling = alpha"),
    # 02: A = 0 as well as B = 0 also starts from the base model, but then nothing ever trains
    "02-both-zero": Mistake("02_lora_math", "init_lora_weights", "nn.init.kaiming_uniform_(A, a=math.sqrt(5))",
                            "A.zero_()"),
    # 03: one absmax for the whole tensor (repeated per block) instead of one per block
    "03-global-absmax": Mistake("03_qlora", "absmax", "absmax = blocks.abs().amax(dim=1)",
                                "absmax = blocks.abs().amax().repeat(blocks.shape[0])"),
    # 03: counting the 8-bit scales but not the float32 scale of every 256 blocks
    "03-no-second-level": Mistake("03_qlora", "double_quant_saved_bytes",
                                  "after = 1 * blocks + 4 * blocks / block_size2", "after = 1 * blocks"),
    # 04: the classic slip: cosine decay from step 0, the warmup forgotten
    "04-no-warmup": Mistake("04_trainer_configuration", "lr_at",
                            "    if step < warmup_steps:\n        return peak_lr * step / warmup_steps\n"
                            "    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)\n",
                            "    progress = step / total_steps\n"),
    # 05: perplexity as the mean of per-batch mean losses: weights a short batch's tokens more
    "05-mean-of-batch-means": Mistake("05_evaluation", "corpus_perplexity",
                                      "return math.exp(sum(loss_sums) / sum(token_counts))",
                                      "return math.exp(sum(l / n for l, n in zip(loss_sums, token_counts)) "
                                      "/ len(loss_sums))", quick=True),
    # 05: dropping the replies that are not JSON from the denominator
    "05-unparseable-dropped": Mistake("05_evaluation", "exact_match_rate", "return correct / len(answers), unparseable",
                                      "return correct / max(1, len(answers) - unparseable), unparseable", quick=True),
    # 05: an interval of single values instead of the mean
    "05-interval-of-values": Mistake("05_evaluation", "bootstrap_interval",
                                     "return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))",
                                     "return float(np.quantile(data, tail)), float(np.quantile(data, 1 - tail))",
                                     round_trip=False, quick=True),
    # 05: accuracy (micro average) instead of the macro average
    "05-accuracy-not-macro": Mistake("05_evaluation", "macro_f1", "return sum(scores) / num_classes",
                                     "return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)",
                                     round_trip=False, quick=True),
    # 05: judging by the training loss alone
    "05-train-loss-only": Mistake("05_evaluation", "diagnose", "if val_losses[-1] > 1.1 * min(val_losses):",
                                  "if False:", round_trip=False, quick=True),
    # 06: the mean instead of the max logit difference
    "06-mean-logit-diff": Mistake("06_deployment", "max_abs_logit_diff", "diff[attention_mask.bool()].max()",
                                  "diff[attention_mask.bool()].mean()"),
    # 06: adapter size counting one matrix only
    "06-one-matrix": Mistake("06_deployment", "adapter_num_params", "total += r * (n_in + n_out)",
                             "total += r * n_in"),
    # 06: adapter size without the trained biases
    "06-no-bias": Mistake("06_deployment", "adapter_num_params", 'if has_bias and (bias == "all"',
                          'if False and (bias == "all"'),
    # 06: a sampling JSON endpoint
    "06-sampling": Mistake("06_deployment", "json_endpoint_settings", "temperature=0.0", "temperature=0.7"),
    # 07: the speed-up instead of the efficiency: forgetting to divide by the number of processes
    "07-efficiency-is-speedup": Mistake("07_scaling_up", "scaling_efficiency", "tokens_per_s_n / (n * tokens_per_s_1)",
                                        "tokens_per_s_n / tokens_per_s_1"),
    # 07: per-process batch times accumulation: forgetting that every process brings its own batch
    "07-batch-without-processes": Mistake("07_scaling_up", "global_batch_size", "per_device * accumulation * processes",
                                          "per_device * accumulation"),
    # 07: DDP sharded like ZeRO-3: dividing everything by the number of GPUs
    "07-ddp-sharded": Mistake("07_scaling_up", "model_state_gb", '"ddp": 16,', '"ddp": 16 / gpus,'),
}
ROUND_TRIPS = [name for name, m in MISTAKES.items() if m.round_trip]
QUICK = [name for name, m in MISTAKES.items() if m.quick]


def test_every_notebook_has_graded_exercises_with_points():
    """What the tests below read from the metadata is there: every exercise has graded cells, every cell points."""
    for notebook in SOLUTIONS:
        found = exercises(notebook.stem)
        assert found and all(found.values()), f"{notebook.stem}: an exercise without a graded cell: {found}"
        full = points(notebook.stem)
        assert sorted(full) == sorted(t for cells in found.values() for t in cells)
        assert all(p > 0 for p in full.values()), full


def test_every_mistake_names_an_exercise_of_its_notebook():
    for name, mistake in MISTAKES.items():
        assert mistake.exercise in exercises(mistake.stem), f"{name}: {mistake.stem} has no exercise {mistake.exercise}"
        assert mistake.old in cell_sources(mistake.stem)[mistake.exercise], f"{name}: {mistake.old!r} not found"


@pytest.mark.grading
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_reference_solution_gets_full_marks(course, notebook):
    result = course.autograde(notebook.stem, "reference", notebook)
    assert result.cells, "a graded notebook needs graded cells"
    assert result.score == result.max_score, result.by_cell()
    assert result.by_cell() == points(notebook.stem)  # every graded cell, at the points its metadata gives
    # every cell, not only the graded ones, runs cleanly inside the sandbox (model cache, plots, training)
    executed = json.loads(course.autograded_notebook(notebook.stem, "reference").read_text())
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(executed["cells"])
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [], errors


@pytest.mark.grading
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_blank_student_notebook_gets_zero(course, notebook):
    result = course.autograde(notebook.stem, "blank", course.student_notebook(notebook.stem))
    assert result.max_score == sum(points(notebook.stem).values()) > 0
    assert result.score == 0, result.by_cell()


@pytest.mark.grading
@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_a_typical_wrong_answer_loses_only_its_exercises_marks(course, tmp_path, name):
    mistake = MISTAKES[name]
    wrong = edited_solution(mistake.stem, mistake.exercise, mistake.old, mistake.new, tmp_path)
    scores = course.autograde(mistake.stem, name, wrong).by_cell()
    lost = exercises(mistake.stem)[mistake.exercise]
    assert scores == {**points(mistake.stem), **dict.fromkeys(lost, 0)}, scores


@pytest.mark.parametrize("name", QUICK)
def test_a_typical_wrong_answer_fails_its_visible_or_hidden_tests(name):
    """Quick check without nbgrader: the exercise's test cells pass on the reference and fail on the mistake."""
    mistake = MISTAKES[name]
    sources = cell_sources(mistake.stem)
    tests = exercises(mistake.stem)[mistake.exercise]
    namespace = notebook_imports(mistake.stem)
    exec(sources[mistake.exercise], namespace)
    for test in tests:
        exec(sources[test], namespace)  # the reference passes
    exec(sources[mistake.exercise].replace(mistake.old, mistake.new), namespace)
    for test in tests:
        with pytest.raises(AssertionError):
            exec(sources[test], namespace)
