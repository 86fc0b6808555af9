"""Train the capstone's reference adapter that tests/instructor/test_capstone_grading.py grades (kept in the
repository: training it takes minutes on 2 cores, longer than CI can spend on it).

The recipe is notebook 08's `full` run at rank 4 (to keep the files small), its weights stored in bfloat16:

    .venv/bin/python -m tests.instructor.make_capstone_fixture

Run it again when the task generator, the base model or the recipe changes; the test fails when the kept adapter no
longer reaches the target on the hidden split.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from course_lib.capstone import support
from course_lib.capstone.adapter_check import check_adapter
from course_lib.core.models import load_causal_lm
from course_lib.training.finetune import LoraSettings, finetune_lora

FIXTURE = Path(__file__).parent / "fixtures" / "capstone_reference_adapter"
SETTINGS = LoraSettings(steps=150, batch_size=8, learning_rate=2e-3, warmup_steps=10, r=4, alpha=8,
                        max_length=128, seed=0)


def main() -> None:
    """Train, save as bfloat16 safetensors with its config, and check that the grader accepts the folder."""
    torch.manual_seed(SETTINGS.seed)
    model, tokenizer = load_causal_lm()
    train = support.public_splits()["train"]
    started = time.perf_counter()
    result = finetune_lora(model, tokenizer, [support.to_messages(t) for t in train], SETTINGS)
    shutil.rmtree(FIXTURE, ignore_errors=True)
    result.model.save_pretrained(FIXTURE)
    weights = FIXTURE / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(weights).items()}, weights)
    (FIXTURE / "README.md").unlink(missing_ok=True)  # peft's model-card template: nothing a test reads
    config = json.loads((FIXTURE / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = Path(config["base_model_name_or_path"]).name  # no path of this machine
    (FIXTURE / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    problems = check_adapter(FIXTURE)
    assert not problems, problems
    print(f"trained {SETTINGS.steps} steps in {time.perf_counter() - started:.0f} s into {FIXTURE}")


if __name__ == "__main__":
    main()
