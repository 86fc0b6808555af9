"""A run killed with SIGKILL and resumed from its last checkpoint ends bit-for-bit where an uninterrupted run ends.

Tolerance: none. On CPU, with the same seed and thread count, the resumed run's final weights equal the
uninterrupted run's exactly (max |difference| == 0.0) and its loss history (loss, learning rate, gradient
norm per step, validation loss per evaluation) is identical.
"""

import json
import signal

import pytest

from course_lib.core import tasks
from course_lib.training import resume
from course_lib.training.config import ConfigError, TrainConfig
from course_lib.training.trainer import last_checkpoint, train

CONFIG = TrainConfig(max_steps=12, per_device_batch_size=2, grad_accum=2, learning_rate=1e-2, warmup_ratio=0.2,
                     schedule="cosine", weight_decay=0.1, eval_strategy="steps", eval_steps=3, save_strategy="steps",
                     save_steps=3, save_total_limit=2, output_dir="replaced-per-run", seed=3)


def _spec(folder, model, tokenizer, method):
    train_data = [tasks.to_messages(e) for e in tasks.make_examples(20)]
    eval_data = [tasks.to_messages(e) for e in tasks.make_examples(4, seed=11)]
    return resume.save_spec(folder / "spec", model, tokenizer, train_data, CONFIG, eval_data=eval_data, method=method)


def _assert_same_run(resumed, reference):
    assert resumed.global_step == reference.global_step == CONFIG.max_steps
    assert resumed.history == reference.history  # every step's loss, learning rate and gradient norm, exactly
    assert resumed.eval_history == reference.eval_history
    assert [row["step"] for row in resumed.history] == list(range(1, CONFIG.max_steps + 1))
    assert resume.max_weight_difference(resumed.model, reference.model) == 0.0


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tiny_llama, tokenizer, tmp_path):
    spec = _spec(tmp_path, tiny_llama, tokenizer, "full")
    killed_dir = tmp_path / "killed"
    # the child sleeps after each step so that the kill lands mid-run however fast the machine is
    kill = resume.interrupted_run(spec, killed_dir, kill_at=7, how="sigkill", step_delay=0.25)
    assert kill.returncode == -signal.SIGKILL
    assert kill.checkpoint.endswith("checkpoint-6")  # steps 7 and maybe 8 were trained, then lost
    assert kill.last_logged_step in (7, 8), "the process was not killed mid-run"
    assert not (killed_dir / f"checkpoint-{CONFIG.max_steps}").exists()

    resumed = resume.run_spec(spec, killed_dir, resume=True)
    reference = resume.run_spec(spec, tmp_path / "reference")
    _assert_same_run(resumed, reference)


def test_lora_run_interrupted_in_process_resumes_exactly(tiny_llama, tokenizer, tmp_path):
    spec = _spec(tmp_path, tiny_llama, tokenizer, "lora")
    kill = resume.interrupted_run(spec, tmp_path / "crashed", kill_at=8, how="exception")
    assert kill.checkpoint.endswith("checkpoint-6") and kill.last_logged_step == 8
    assert [row["step"] for row in resume.read_live_log(tmp_path / "crashed")] == list(range(1, 9))
    resumed = resume.run_spec(spec, tmp_path / "crashed", resume=True)
    reference = resume.run_spec(spec, tmp_path / "reference")
    _assert_same_run(resumed, reference)
    assert any("lora_" in name for name, _ in resumed.model.named_parameters())


def test_last_checkpoint_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    for step, state in [(3, {"global_step": 3}), (6, {"global_step": 6}), (12, None), (9, "{\"global_st")]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert last_checkpoint(tmp_path / "missing") is None


def test_resume_needs_a_folder_and_a_checkpoint(tiny_llama, tokenizer, tmp_path):
    data = [tasks.to_messages(e) for e in tasks.make_examples(4)]
    with pytest.raises(ConfigError, match="resume=True needs config.output_dir"):
        train(tiny_llama, tokenizer, data, TrainConfig(max_steps=2), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(tiny_llama, tokenizer, data, TrainConfig(max_steps=2, output_dir=str(tmp_path)), resume=True,
              progress=False)
