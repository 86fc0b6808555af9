"""Hyperparameter searches on a tiny model: the 2-D grid is chosen on validation and only confirmed on test."""

import math

import pytest
import torch

from course_lib.core import tasks
from course_lib.training import sweep
from course_lib.training.config import TrainConfig
from course_lib.training.methods import MethodResult
from course_lib.training.sweep import grid_search, grid_winner


def _tiny(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id))


def _data(n, seed=0):
    return [tasks.to_messages(e) for e in tasks.make_examples(n, seed=seed)]


class Watched(list):
    """A data split that records, in a shared log, every time something reads it."""

    def __init__(self, rows, name, log):
        super().__init__(rows)
        self.name, self.log = name, log

    def __iter__(self):
        self.log.append(self.name)
        return super().__iter__()

    def __getitem__(self, index):
        self.log.append(self.name)
        return super().__getitem__(index)


def test_grid_search_trains_every_cell_and_confirms_the_best_two_on_test(tokenizer):
    log = []
    config = TrainConfig(max_steps=3, per_device_batch_size=2, warmup_steps=0)
    grid = {"learning_rate": [1e-4, 3e-2], "warmup_ratio": [0.0, 0.5]}
    table = grid_search(lambda: _tiny(tokenizer), tokenizer, Watched(_data(6), "train", log),
                        Watched(_data(2, seed=5), "val", log), Watched(_data(2, seed=9), "test", log), config, grid,
                        method="full", progress=False)
    assert list(zip(table["learning_rate"], table["warmup_ratio"])) == [(1e-4, 0.0), (1e-4, 0.5), (3e-2, 0.0),
                                                                      (3e-2, 0.5)]
    assert {"train_loss", "val_loss", "diverged", "seconds", "val_rank", "selected", "test_loss"} <= set(table)
    assert table["val_loss"].map(math.isfinite).all() and not table["diverged"].any()
    # the winner is the lowest validation loss; the test split was read only after the last training run
    assert table["selected"].sum() == 1 and table.loc[table["val_loss"].idxmin(), "selected"]
    assert sorted(table["val_rank"]) == [1, 2, 3, 4]
    confirmed = table[table["test_loss"].notna()]
    assert sorted(confirmed["val_rank"]) == [1, 2] and confirmed["test_loss"].map(math.isfinite).all()
    assert "test" in log and "train" not in log[log.index("test"):] and "val" not in log[log.index("test"):]
    assert grid_winner(table) == {"learning_rate": 3e-2, "warmup_ratio": 0.0}  # 3 steps at 1e-4 barely move it
    second = table.sort_values("val_loss").iloc[1]
    assert grid_winner(table, rank=2) == {"learning_rate": second["learning_rate"], "warmup_ratio": second["warmup_ratio"]}
    assert all(type(v) is float for v in grid_winner(table, rank=2).values())  # plain numbers, not numpy's
    # 3 steps, half of them warm-up: the cells with warm-up ran at a lower rate and moved less
    high = table[table["learning_rate"] == 3e-2].set_index("warmup_ratio")["val_loss"]
    assert high[0.0] < high[0.5]


def _fake_runs(monkeypatch, val_losses, test_losses, seen):
    """grid_search with training and test evaluation replaced: each cell's losses come from the tables given."""

    def fake_train_method(make_model, tokenizer, train_data, val_data, config, method, *, learning_rate, progress,
                          **kwargs):
        key = (learning_rate, kwargs.get("lora_r"))
        seen.append((key, config.warmup_steps, config.warmup_ratio, kwargs))
        result = MethodResult(method, learning_rate, 1, 10, None, 0.1, val_losses[key], 1.0, [{"loss": 2.0}])
        return result, key  # the "model" is the cell's key, so that the fake test evaluation can look it up

    monkeypatch.setattr(sweep, "train_method", fake_train_method)
    monkeypatch.setattr(sweep, "evaluate_loss", lambda model, tokenizer, data, config: test_losses[model])


def test_grid_search_selects_on_validation_even_when_test_would_choose_another_cell(monkeypatch):
    val = {(1e-3, 4): 0.50, (1e-3, 8): 0.40, (1e-2, 4): 0.45, (1e-2, 8): 0.60}
    test = {(1e-3, 4): 0.20, (1e-3, 8): 0.70, (1e-2, 4): 0.30, (1e-2, 8): 0.10}  # test's order is the reverse
    seen = []
    _fake_runs(monkeypatch, val, test, seen)
    config = TrainConfig(max_steps=4, warmup_steps=1)
    table = grid_search(None, None, [], [], [], config, {"learning_rate": [1e-3, 1e-2], "lora_r": [4, 8]},
                        confirm=2, progress=False, lora_alpha=16)
    assert grid_winner(table) == {"learning_rate": 1e-3, "lora_r": 8}  # lowest validation loss, worst on test
    winner = table[table["selected"]].iloc[0]
    assert winner["test_loss"] == 0.70
    # only the two best on validation were scored on test; the cell test likes best never was
    assert table.set_index(["learning_rate", "lora_r"])["test_loss"].dropna().to_dict() == {
        (1e-3, 8): 0.70, (1e-2, 4): 0.30}
    # a method keyword in the grid reaches apply_method, next to the fixed ones; the config keeps its warm-up
    assert [s[3] for s in seen] == [{"lora_alpha": 16, "lora_r": r} for r in (4, 8, 4, 8)]
    assert {s[1] for s in seen} == {1}


def test_a_warmup_ratio_in_the_grid_replaces_the_configs_fixed_warmup(monkeypatch):
    val = {(1e-3, None): 0.5, (1e-2, None): 0.4}
    seen = []
    _fake_runs(monkeypatch, val, dict.fromkeys(val, 0.0), seen)
    grid_search(None, None, [], [], [], TrainConfig(max_steps=4, warmup_steps=1),
                {"learning_rate": [1e-3, 1e-2], "warmup_ratio": [0.0, 0.25]}, progress=False)
    assert [(s[1], s[2]) for s in seen] == [(None, 0.0), (None, 0.25)] * 2


def test_diverged_cells_stay_in_the_table_and_are_never_chosen(monkeypatch):
    val = {(1e-3, 4): 0.50, (1e-3, 8): float("nan"), (1e-2, 4): 0.45, (1e-2, 8): 0.01}
    seen = []
    _fake_runs(monkeypatch, val, dict.fromkeys(val, 0.3), seen)

    def diverging(*args, learning_rate, **kwargs):  # the (1e-2, 8) cell ends far above where it started
        result, key = fake(*args, learning_rate=learning_rate, **kwargs)
        if key == (1e-2, 8):
            result.train_loss = 9.0
        return result, key

    fake = sweep.train_method
    monkeypatch.setattr(sweep, "train_method", diverging)
    table = grid_search(None, None, [], [], [], TrainConfig(max_steps=4),
                        {"learning_rate": [1e-3, 1e-2], "lora_r": [4, 8]}, progress=False)
    assert table["diverged"].tolist() == [False, True, False, True]
    assert grid_winner(table) == {"learning_rate": 1e-2, "lora_r": 4}
    assert table["val_rank"].isna().tolist() == [False, True, False, True]
    assert table[table["diverged"]]["test_loss"].isna().all()


@pytest.mark.parametrize("grid, message", [
    ({"learning_rate": [1e-3]}, "exactly two names"),
    ({"learning_rate": [1e-3], "dropout": [0.1]}, "grid key 'dropout' is neither a TrainConfig field"),
    ({"learning_rate": [1e-3], "lora_r": []}, r"grid\['lora_r'\] must be a non-empty list"),
])
def test_a_bad_grid_is_refused_with_the_key_named(grid, message):
    with pytest.raises(ValueError, match=message):
        grid_search(None, None, [], [], [], TrainConfig(), grid)


def test_grid_winner_refuses_a_rank_the_table_does_not_have():
    import pandas as pd

    table = pd.DataFrame({"lora_r": [4, 8], "val_rank": pd.array([1, None], dtype="Int64")})
    table.attrs["grid"] = ["lora_r"]
    assert grid_winner(table) == {"lora_r": 4} and type(grid_winner(table)["lora_r"]) is int
    with pytest.raises(ValueError, match="no cell of validation rank 2"):
        grid_winner(table, rank=2)
    with pytest.raises(ValueError, match="no cell of validation rank 1"):
        grid_winner(pd.DataFrame({"selected": [False, False]}))
