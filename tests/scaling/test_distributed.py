"""course_lib.scaling.distributed: two gloo processes on CPU train exactly what one process trains on the same batches."""

import math

import pytest

from course_lib.scaling import distributed
from course_lib.scaling.distributed import RunConfig, RunResult, launch, train_distributed

# A 2-layer Llama with random weights and the real vocabulary, on the course's task data.
TINY = dict(model="random:tiny", data="task", steps=6, seq_len=128, learning_rate=1e-2, seed=3)


def _close(a: dict, b: dict, rel: float) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-6) for k in a)


def _learned(result: RunResult) -> bool:
    losses = result.losses
    return sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05


@pytest.fixture(scope="module")
def ddp_two(tmp_path_factory):
    """LoRA with DDP on 2 processes (gloo), 2 rows per process; the adapter saved at the end."""
    save = tmp_path_factory.mktemp("adapter")
    result = launch(2, RunConfig(strategy="ddp", method="lora", per_device_batch=2, save=str(save), **TINY),
                    progress=False, timeout=600)
    return result, save


def test_ddp_ranks_end_with_identical_weights_and_the_loss_goes_down(ddp_two):
    result, save = ddp_two
    assert result.world_size == 2 and result.global_batch == 4
    assert result.weights_identical is True
    assert result.n_trainable < result.n_params / 2  # only the LoRA adapters train
    assert _learned(result), result.losses
    assert (save / "adapter_model.safetensors").is_file()
    assert not list(save.glob("*.bin")), "safetensors only"


def test_two_ddp_processes_compute_what_one_process_computes(ddp_two):
    """Same global batches: the averaged gradients equal the one-process gradient, so losses and weights match."""
    two, _ = ddp_two
    one = train_distributed(RunConfig(strategy="ddp", method="lora", per_device_batch=4, **TINY))
    assert one.world_size == 1 and one.global_batch == two.global_batch
    assert [round(x, 4) for x in one.losses] == [round(x, 4) for x in two.losses]
    assert _close(one.weights_checksum, two.weights_checksum, rel=1e-3)


def test_fsdp_full_fine_tuning_on_two_processes_matches_one_process():
    config = dict(TINY, learning_rate=1e-3)
    two = launch(2, RunConfig(strategy="fsdp", method="full", per_device_batch=2, **config), progress=False,
                 timeout=600)
    one = train_distributed(RunConfig(strategy="fsdp", method="full", per_device_batch=4, **config))
    assert two.world_size == 2 and two.weights_identical is None  # each rank holds a different shard
    assert two.n_trainable == two.n_params == one.n_params  # the full model trains
    assert _learned(two), two.losses
    assert [round(x, 4) for x in one.losses] == [round(x, 4) for x in two.losses]
    assert _close(one.weights_checksum, two.weights_checksum, rel=1e-3)  # FSDP gathered the full weights on rank 0


def test_a_failing_worker_raises_with_its_error():
    with pytest.raises(RuntimeError, match="unknown architecture 'nope'"):
        launch(1, RunConfig(model="random:nope", data="random", steps=2), progress=False, timeout=300)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.split()[:2] == ["State:", "Z"] for line in status)  # a zombie runs nothing
    except FileNotFoundError:
        return True


def test_a_silent_hang_is_stopped_at_the_timeout_with_its_ranks(monkeypatch, tmp_path):
    """A rank that waits forever prints nothing; the timeout must still fire, and kill the ranks, not only the
    launcher (a DDP run once hung a test 11 minutes past its 600 s timeout)."""
    import sys
    import time

    rank = ("import os, subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
            f"open({str(tmp_path / 'pid')!r}, 'w').write(str(child.pid)); time.sleep(300)")
    monkeypatch.setattr(distributed, "launch_command", lambda *args, **kwargs: [sys.executable, "-c", rank])
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="longer than 3 s"):
        launch(1, RunConfig(**TINY), progress=False, timeout=3)
    assert time.monotonic() - started < 30
    pid = int((tmp_path / "pid").read_text())
    for _ in range(50):
        if _gone(pid):
            break
        time.sleep(0.1)
    assert _gone(pid), "the rank's own child outlived the timeout"


def test_launch_refuses_more_gpu_processes_than_gpus(monkeypatch):
    monkeypatch.setattr(distributed, "_cuda_device_count", lambda: 1)
    with pytest.raises(ValueError, match="2 processes need 2 GPUs and this machine has 1"):
        launch(2, RunConfig(), progress=False)


@pytest.mark.parametrize("changes, message", [
    (dict(strategy="fsdp", method="lora"), "use strategy='ddp' for LoRA"),
    (dict(strategy="zero"), "strategy is 'zero'"),
    (dict(data="csv"), "data is 'csv'"),
    (dict(steps=3, warmup_steps=3), "warmup_steps"),
    (dict(per_device_batch=0), "per_device_batch must be at least 1"),
])
def test_config_rejects_what_cannot_run(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes).check()


def test_command_line_round_trip():
    config = RunConfig(strategy="fsdp", method="full", model="random:tiny", steps=7, learning_rate=3e-4, cpu=True,
                       output="/tmp/x.json")
    args = distributed.to_args(config)
    assert RunConfig(**vars(distributed._parser().parse_args(args))) == config
    command = distributed.launch_command(2, config, port=12345)
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    assert command[command.index("-m", 3) + 1] == "course_lib.scaling.distributed"
    assert distributed.terminal_command(2, config).startswith("accelerate launch --multi_gpu --num_processes 2")


def _result(strategy, world, tokens_per_s):
    return RunResult(strategy=strategy, method="lora", world_size=world, device="cpu", model="m", n_params=1,
                     n_trainable=1, per_device_batch=1, global_batch=world, steps=1, history=[],
                     tokens_per_s=tokens_per_s, seconds=1.0, peak_memory_gb=None, weights_identical=True)


def test_scaling_rows_compare_each_strategy_with_its_one_process_run():
    rows = distributed.scaling_rows([_result("ddp", 1, 100.0), _result("ddp", 2, 180.0), _result("fsdp", 1, 50.0),
                                     _result("fsdp", 4, 150.0)])
    assert [round(r["speed-up"], 3) for r in rows] == [1.0, 1.8, 1.0, 3.0]
    assert [round(r["efficiency"], 3) for r in rows] == [1.0, 0.9, 1.0, 0.75]


def test_markdown_table():
    table = distributed.markdown_table(["run", "tokens/s"], [["ddp", 62907.4], ["fsdp", None]])
    assert table.splitlines() == ["| run | tokens/s |", "|---|---|", "| ddp | 62,907 |", "| fsdp | – |"]


def test_a_failed_launch_shows_the_ranks_own_traceback():
    from course_lib.scaling.distributed import failure_excerpt

    rank_error = ["Traceback (most recent call last):\n", '  File "x.py", line 1\n', "ValueError: the rank's reason\n"]
    summary = [f"torchrun summary line {i}\n" for i in range(60)]
    text = failure_excerpt(["starting\n"] * 5 + rank_error + summary)
    assert "ValueError: the rank's reason" in text and "torchrun summary line 59" in text
    assert failure_excerpt(["short log\n"]) == "short log\n"
