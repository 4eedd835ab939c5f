"""A real `bilevel train` process killed (SIGKILL) or stopped with Ctrl-C (SIGINT) mid-run,
then resumed: the same parameters, bit for bit, as a run never stopped. And determinism:
the same seed on the same device gives the same parameters."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bilevel.cli import main
from bilevel.fewshot import TrainConfig, train
from bilevel.fewshot.checkpoint import load_checkpoint

ITERATIONS = 40
FLAGS = ["--benchmark", "sinusoid", "--method", "maml", "--iterations", str(ITERATIONS), "--meta-batch", "8",
         "--inner-steps", "3", "--val-every", "10", "--val-tasks", "4", "--checkpoint-every", "5", "--device", "cpu",
         "--quiet"]


@pytest.fixture
def one_thread():
    """The child runs on one thread; so does the reference run here (sums in the same order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start_training(run_dir: Path) -> subprocess.Popen:
    # The installed package (editable or not), never the source folder on PYTHONPATH: under a
    # non-editable install the source tree lacks the bilevel.adapters mapping.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGINT as in a terminal: a shell's background job (`pytest &`) inherits SIGINT ignored.
    return subprocess.Popen([sys.executable, "-m", "bilevel.cli", "train", *FLAGS, "--out", str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: the same run, never stopped (on one thread, like the child)."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *FLAGS, "--out", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dir


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 120.0) -> None:
    """Wait for the first checkpoint, then freeze the child (SIGSTOP): a fast run cannot finish
    before the test stops it, however the test process is scheduled."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoint.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) before its first checkpoint: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint after 120 s")
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None, "the run finished before it could be stopped; make it longer"


def records(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    drop = ("seconds", "tasks_per_second")
    return [{k: v for k, v in r.items() if k not in drop} for r in map(json.loads, lines) if r["split"] == split]


def assert_same_parameters(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert sa["iteration"] == sb["iteration"] == ITERATIONS
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for k in ("exp_avg", "exp_avg_sq"):
        for i in sa["optimizer"]["state"]:
            assert torch.equal(sa["optimizer"]["state"][i][k], sb["optimizer"]["state"][i][k]), (i, k)
    assert records(a, "train") == records(b, "train") and records(a, "val") == records(b, "val")


def wait_for_a_record_after_the_checkpoint(proc: subprocess.Popen, run_dir: Path) -> None:
    """So that the kill leaves log records that the resume must drop: let the frozen child run
    in bursts of a few milliseconds until it has logged an iteration after its checkpoint."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        saved = load_checkpoint(run_dir / "checkpoint.pt")["iteration"]
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        if any(json.loads(line)["iteration"] > saved for line in lines[-3:] if line.endswith("}")):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
    pytest.fail("no iteration logged after the checkpoint within 60 s")


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, one_thread, uninterrupted):
    proc = start_training(tmp_path / "killed")
    wait_for_checkpoint(proc, tmp_path / "killed")
    wait_for_a_record_after_the_checkpoint(proc, tmp_path / "killed")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["iteration"]
    assert 5 <= saved < ITERATIONS and saved % 5 == 0
    assert not list((tmp_path / "killed").glob("*.tmp"))

    assert main(["train", "--resume", str(tmp_path / "killed"), "--iterations", str(ITERATIONS), "--quiet"]) == 0
    assert_same_parameters(uninterrupted, tmp_path / "killed")


def test_ctrl_c_saves_the_last_completed_iteration_and_exits_130(tmp_path, one_thread, uninterrupted):
    run_dir = tmp_path / "stopped"
    proc = start_training(run_dir)
    wait_for_checkpoint(proc, run_dir)
    wait_for_a_record_after_the_checkpoint(proc, run_dir)  # Ctrl-C mid-run, not just after a checkpoint
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    saved = load_checkpoint(run_dir / "checkpoint.pt")["iteration"]
    assert saved == records(run_dir, "train")[-1]["iteration"] < ITERATIONS  # the last completed iteration
    assert not (run_dir / "summary.json").exists()

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert_same_parameters(uninterrupted, run_dir)


def test_same_seed_same_device_same_parameters(tmp_path, one_thread):
    config = TrainConfig(benchmark="sinusoid", method="imaml-gd", iterations=4, val_every=2, val_tasks=4,
                         meta_batch=4, inner_steps=3, device="cpu", seed=3)
    train(config, tmp_path / "a", progress=False)
    train(config, tmp_path / "b", progress=False)
    sa, sb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    train(dataclasses.replace(config, seed=4), tmp_path / "c", progress=False)
    sc = load_checkpoint(tmp_path / "c" / "checkpoint.pt")
    assert not all(torch.equal(sa["model"][k], sc["model"][k]) for k in sa["model"])  # the seed matters
