"""Data-parallel meta-gradients: 2 CPU processes (gloo, launched by torchrun) give the
single-process answer, and a failing rank ends the job instead of hanging it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bilevel.distributed import World, task_share

WORKER = Path(__file__).parent / "distributed" / "hypergrad_worker.py"


def torchrun(*args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_task_shares_are_disjoint_and_cover_the_meta_batch():
    for total in (1, 4, 5, 8):
        for size in (1, 2, 3):
            shares = [task_share(total, World(r, size)) for r in range(size)]
            covered = [i for s in shares for i in range(total)[s]]
            assert covered == list(range(total)), (total, size)


def test_launched_world_reads_torchruns_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert World.launched() == World(0, 1) and World.launched().is_main
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert World.launched() == World(1, 2) and not World.launched().is_main
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: rank 0 whatever RANK says, as init_world
    assert World.launched() == World(0, 1)


def _train_args(out, *extra):
    return ["train", "--benchmark", "sinusoid", "--method", "imaml-gd", "--iterations", "3", "--meta-batch", "4",
            "--val-every", "3", "--val-tasks", "6", "--inner-steps", "3", "--quiet", "--device", "cpu",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One torchrun launch of 2 processes: the meta-gradient check, then `bilevel train`."""
    folder = tmp_path_factory.mktemp("torchrun")
    proc = torchrun(WORKER, folder / "result.pt", *_train_args(folder / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder / "console.txt").write_text(proc.stdout + proc.stderr)
    return folder


def test_two_processes_give_the_single_process_meta_gradient(two_process_run):
    r = torch.load(two_process_run / "result.pt")
    assert r["world"] == 2
    torch.testing.assert_close(r["distributed"], r["single"], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(r["loss"][0], r["loss"][1], rtol=1e-13, atol=0)
    assert torch.equal(r["steps"][0].to(torch.int64), r["steps"][1])  # every task's diagnostics, in order


def test_a_failing_rank_ends_the_job(tmp_path):
    proc = torchrun(WORKER, tmp_path / "never.pt", 1, timeout=120)
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr + proc.stdout
    assert not (tmp_path / "never.pt").exists()


def test_bilevel_train_under_torchrun_equals_one_process(tmp_path, two_process_run):
    """`bilevel train` unchanged under torchrun: 2 processes, same seed and global meta-batch,
    give the one-process meta-parameters and validation score; only rank 0 writes."""
    from bilevel.cli import main

    one, two = tmp_path / "one", two_process_run / "two"
    assert main(_train_args(one)) in (0, None)
    a, b = torch.load(one / "checkpoint.pt")["model"], torch.load(two / "checkpoint.pt")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    import json

    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    assert abs(s1["best_val"] - s2["best_val"]) <= 1e-4 * abs(s1["best_val"])
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["split"] == "train"] == [1, 2, 3]  # one writer, no duplicates
    console = (two_process_run / "console.txt").read_text()
    assert console.count("iteration 3: val") == 1 and console.count("trained imaml-gd") == 1, console  # rank 0 only
