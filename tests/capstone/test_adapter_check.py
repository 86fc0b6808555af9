"""What a submitted adapter may be: a good one passes, and each kind of bad folder is refused by name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from course_lib.capstone.adapter_check import (CONFIG_FILE, LIMITS, WEIGHTS_FILE, AdapterLimits, base_shapes,
                                               check_adapter, check_config)
from course_lib.core.models import ALL_LINEAR, resolve
from tests.capstone.conftest import TINY_RANK


@pytest.fixture
def adapter(tmp_path, tiny_adapter) -> Path:
    """A fresh copy of the good tiny adapter, for one test to break."""
    return Path(shutil.copytree(tiny_adapter, tmp_path / "adapter"))


def _edit_config(folder: Path, **changes) -> None:
    path = folder / CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def _problems(folder: Path, tiny_base: Path, limits: AdapterLimits = LIMITS) -> str:
    return "\n".join(check_adapter(folder, limits, base=str(tiny_base)))


def test_a_good_adapter_passes(tiny_adapter, tiny_base):
    assert sorted(p.name for p in tiny_adapter.iterdir()) == ["README.md", CONFIG_FILE, WEIGHTS_FILE]
    assert check_adapter(tiny_adapter, base=str(tiny_base)) == []


def test_base_shapes_come_from_the_config(tiny_base):
    shapes = base_shapes(str(tiny_base))
    assert shapes.layers == 2
    assert shapes.modules["k_proj"] == ("self_attn", 32, 16)  # 2 key/value heads of 8
    assert shapes.modules["down_proj"] == ("mlp", 64, 32)


def test_the_real_default_adapter_passes(tmp_path):
    """What finetune_lora saves for the course model: the base is recorded as the converted folder's path here."""
    from peft import get_peft_model

    from course_lib.core.models import load_causal_lm
    from course_lib.training.finetune import LoraSettings, lora_config_for

    model, _ = load_causal_lm("default", device="cpu")
    get_peft_model(model, lora_config_for(LoraSettings(r=8))).save_pretrained(tmp_path)
    recorded = json.loads((tmp_path / CONFIG_FILE).read_text())["base_model_name_or_path"]
    assert recorded in (resolve("default")[0], "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert check_adapter(tmp_path) == []


@pytest.mark.parametrize("recorded, ok", [
    ("/root/.cache/course_lib/models/smollm2-135m-0.1.2", True),
    ("/home/grader/.cache/course_lib/models/smollm2-135m-0.2.0/", True),
    ("C:\\Users\\me\\cache\\models\\smollm2-135m-0.1.2", True),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
    ("smollm2-135m", True),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", False),
    ("/root/.cache/course_lib/models/smollm2-360m-0.1.2", False),
    ("/tmp/smollm2-135m-evil", False),
    ("", False),
    (None, False),
])
def test_the_base_model_is_recognised_by_its_last_path_component(recorded, ok):
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
              "target_modules": list(ALL_LINEAR), "base_model_name_or_path": recorded}
    problems = check_config(config, base="default")
    assert (problems == []) == ok, problems
    if not ok:
        assert "base_model_name_or_path" in problems[0]


def test_a_missing_or_linked_folder_is_refused(tmp_path, tiny_adapter, tiny_base):
    assert "does not exist" in _problems(tmp_path / "nowhere", tiny_base)
    os.symlink(tiny_adapter, tmp_path / "link")
    assert "symbolic link" in _problems(tmp_path / "link", tiny_base)
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in _problems(tmp_path / "file", tiny_base)


@pytest.mark.parametrize("name", ["adapter_model.bin", "pytorch_model.bin", "weights.pt", "a.pth", "x.pkl",
                                  "model.ckpt"])
def test_pickle_files_are_refused(adapter, tiny_base, name):
    (adapter / name).write_bytes(b"\x80\x04K\x01.")
    assert f"{name}: pickle files are refused" in _problems(adapter, tiny_base)


def test_links_folders_and_other_files_are_refused(adapter, tiny_base):
    (adapter / "README.md").unlink()
    os.symlink(adapter / CONFIG_FILE, adapter / "README.md")
    (adapter / "checkpoint").mkdir()
    (adapter / "notes.txt").write_text("hi")
    problems = _problems(adapter, tiny_base)
    assert "README.md is a symbolic link" in problems
    assert "checkpoint is a folder" in problems
    assert "notes.txt is not allowed" in problems


def test_a_linked_weights_file_is_refused_and_not_read(adapter, tiny_base, tiny_adapter):
    (adapter / WEIGHTS_FILE).unlink()
    os.symlink(tiny_adapter / WEIGHTS_FILE, adapter / WEIGHTS_FILE)
    problems = check_adapter(adapter, base=str(tiny_base))
    assert problems == [f"{WEIGHTS_FILE} is a symbolic link; links are refused, copy the file itself."]


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_a_missing_required_file_is_refused(adapter, tiny_base, missing):
    (adapter / missing).unlink()
    assert f"{missing} is missing" in _problems(adapter, tiny_base)


def test_size_limits_per_file_and_in_total(adapter, tiny_base):
    sizes = {p.name: p.stat().st_size for p in adapter.iterdir()}
    small = AdapterLimits(max_bytes=sizes[WEIGHTS_FILE] - 1)
    assert f"{WEIGHTS_FILE} is " in _problems(adapter, tiny_base, small)
    assert "over the limit" in _problems(adapter, tiny_base, small)
    just = AdapterLimits(max_bytes=max(sizes.values()))
    problems = _problems(adapter, tiny_base, just)
    assert "the files total" in problems and f"{WEIGHTS_FILE} is " not in problems


@pytest.mark.parametrize("text, expected", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, not a list"),
    (b"\xff\xfe", "is not valid JSON"),
])
def test_a_config_that_is_not_a_json_object_is_refused(adapter, tiny_base, text, expected):
    path = adapter / CONFIG_FILE
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    assert expected in _problems(adapter, tiny_base)


@pytest.mark.parametrize("changes, expected", [
    ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
    ({"task_type": "SEQ_CLS"}, "task_type is 'SEQ_CLS'"),
    ({"r": 128}, "r is 128"),
    ({"r": "4"}, "r is '4'"),
    ({"r": True}, "r is True"),
    ({"r": 0}, "r is 0"),
    ({"rank_pattern": {"q_proj": 100}}, "rank_pattern gives 'q_proj' rank 100"),
    ({"rank_pattern": [4]}, "rank_pattern must be an object"),
    ({"alpha_pattern": {"q_proj": -1}}, "alpha_pattern gives 'q_proj' alpha -1"),
    ({"lora_alpha": "big"}, "lora_alpha is 'big'"),
    ({"target_modules": ".*proj"}, "peft reads a string as a regular expression"),
    ({"target_modules": ["q_proj", "lm_head"]}, "target_modules names ['lm_head']"),
    ({"target_modules": ["embed_tokens"]}, "outside the allowed modules"),
    ({"target_modules": []}, "non-empty list"),
    ({"target_modules": None}, "non-empty list"),
    ({"target_modules": "q_proj"}, "peft reads a string as a regular expression"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save is set"),
    ({"trainable_token_indices": [1, 2]}, "trainable_token_indices is set"),
    ({"use_dora": True}, "use_dora is set"),
    ({"layer_replication": [[0, 2], [0, 2]]}, "layer_replication is set"),
    ({"megatron_config": {"x": 1}}, "megatron_config is set"),
    ({"bias": "all"}, "bias is 'all'"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights is 'pissa'"),
    ({"layers_to_transform": "0-1"}, "layers_to_transform is '0-1'"),
    ({"layers_to_transform": [0, 1.5]}, "layers_to_transform is [0, 1.5]"),
    ({"layers_to_transform": [0, 7]}, "layers_to_transform names layers [7]"),
    ({"layers_pattern": {"a": 1}}, "layers_pattern is"),
    ({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-360M-Instruct"}, "not the course's base model"),
    ({"base_model_name_or_path": None}, "base_model_name_or_path is None"),
])
def test_each_bad_config_field_is_refused(adapter, tiny_base, changes, expected):
    _edit_config(adapter, **changes)
    assert expected in _problems(adapter, tiny_base)


def test_declared_targets_must_cover_the_weights(adapter, tiny_base):
    _edit_config(adapter, target_modules=["q_proj", "v_proj"])
    assert "adapts k_proj, which target_modules does not list" in _problems(adapter, tiny_base)
    _edit_config(adapter, target_modules=list(ALL_LINEAR), layers_to_transform=[0])
    assert "is in layer 1, outside the layers" in _problems(adapter, tiny_base)


def test_peft_all_linear_shorthand_is_accepted(adapter, tiny_base):
    _edit_config(adapter, target_modules="all-linear")
    assert _problems(adapter, tiny_base) == ""


def test_limits_can_narrow_the_targets(adapter, tiny_base):
    assert "target_modules names" in _problems(adapter, tiny_base, AdapterLimits(targets=("q_proj", "v_proj")))
    assert "r is 4" in _problems(adapter, tiny_base, AdapterLimits(max_rank=2))


def _rewrite(folder: Path, edit) -> None:
    tensors = _tensors(folder)
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.update({"base_model.model.model.embed_tokens.weight": torch.zeros(4, 4)}), "is not a LoRA weight"),
    (lambda t: t.update({A.replace("lora_A.weight", "lora_magnitude_vector"): torch.zeros(4)}), "is not a LoRA weight"),
    (lambda t: t.update({A.replace("self_attn.q_proj", "mlp.q_proj"): t[A].clone()}), "adapts mlp.q_proj, which is not an"),
    (lambda t: t.update({A.replace("layers.0", "layers.5"): t[A].clone(),
                                B.replace("layers.0", "layers.5"): t[B].clone()}),
     "is in layer 5"),
    (lambda t: t.update({A: t[A].to(torch.int8)}), "has dtype I8"),
    (lambda t: t.update({A: t[A][None]}), "LoRA weights are matrices"),
    (lambda t: t.pop(B), "has lora_A but not lora_B"),
    (lambda t: t.update({A: torch.zeros(TINY_RANK + 1, 32), B: torch.zeros(32, TINY_RANK + 1)}),
     f"lora_A has rank {TINY_RANK + 1}"),
    (lambda t: t.update({A: torch.zeros(TINY_RANK, 31)}), "but the base layer maps 32 -> 32"),
    (lambda t: t.clear(), "holds no tensors"),
])
def test_each_bad_weight_is_refused(adapter, tiny_base, edit, expected):
    _rewrite(adapter, edit)
    assert expected in _problems(adapter, tiny_base)


def test_a_rank_pattern_allows_its_rank(adapter, tiny_base):
    _rewrite(adapter, lambda t: t.update({A: torch.zeros(8, 32), B: torch.zeros(32, 8)}))
    assert "rank 8" in _problems(adapter, tiny_base)
    _edit_config(adapter, rank_pattern={"q_proj": 8})
    assert _problems(adapter, tiny_base) == ""


def test_a_broken_safetensors_file_is_refused(adapter, tiny_base):
    (adapter / WEIGHTS_FILE).write_bytes(b"\xff" * 64)
    assert "is not a readable safetensors file" in _problems(adapter, tiny_base)


def test_many_bad_tensors_are_summed_up(adapter, tiny_base):
    _edit_config(adapter, r=2)  # every one of the 14 pairs now has the wrong rank
    problems = check_adapter(adapter, base=str(tiny_base))
    assert len(problems) == 9 and problems[-1] == "... and 6 more problems with the weights."
