"""A run folder that cannot be corrupted (issue 19): one writer at a time, no silent
overwrite, a checkpoint that must agree with its config and its digest, SIGTERM and SIGHUP
like Ctrl-C, and one line (exit 2) for a full disk or a damaged file."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import bilevel.distributed as distributed_module
import bilevel.fewshot.trainer as trainer_module
from bilevel.cli import main
from bilevel.fewshot import TrainConfig, evaluate, train
from bilevel.fewshot.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, state_digest
from bilevel.fewshot.interrupt import TrainingInterrupted
from bilevel.fewshot.run_folder import json_text, remove_leftover_temp_files
from bilevel.fewshot.run_lock import LOCK_FILE, RunLock

TINY = dict(benchmark="sinusoid", method="maml", iterations=3, meta_batch=2, inner_steps=2, val_every=3, val_tasks=4,
            checkpoint_every=1, eval_tasks=4, device="cpu")
FLAGS = ["--benchmark", "sinusoid", "--method", "maml", "--iterations", "3", "--meta-batch", "2", "--inner-steps", "2",
         "--val-every", "3", "--val-tasks", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny finished and evaluated run; each test works on a copy."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig(**TINY), run_dir, progress=False)
    evaluate(run_dir, tasks=4, progress=False)
    return run_dir


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def resave(run_dir, state):
    """A checkpoint edited by hand, with a digest that matches the edit (only the edit is wrong)."""
    torch.save({**state, "sha256": state_digest(state)}, run_dir / "checkpoint.pt")


# --- one writer per folder

def test_a_second_writer_is_refused_naming_the_pid_and_a_killed_holder_leaves_no_lock(run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(run / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "os.write(fd, f'{os.getpid()} train'.encode()); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for call in (lambda: train(None, run, resume=True, iterations=4, progress=False),
                     lambda: train(TrainConfig(**TINY), run, overwrite=True, progress=False),
                     lambda: evaluate(run, tasks=4, progress=False)):
            with pytest.raises(ValueError, match=f"in use by another bilevel process \\(PID {holder.pid}, bilevel train"):
                call()
        assert main(["train", "--resume", str(run), "--iterations", "4", "--quiet"]) == 2
        assert f"PID {holder.pid}" in one_line(capsys)
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 3  # nothing was touched
    train(None, run, resume=True, iterations=4, progress=False)  # no stale lock
    assert not (run / LOCK_FILE).exists()


def test_the_lock_is_held_for_the_life_of_a_run(tmp_path):
    with RunLock(tmp_path, "evaluate"):
        with pytest.raises(ValueError, match=f"PID {os.getpid()}, bilevel evaluate"):
            train(TrainConfig(**TINY), tmp_path, progress=False)
    train(TrainConfig(**TINY), tmp_path, progress=False)


# --- no silent overwrite

def test_training_into_a_run_refuses_unless_resume_or_overwrite(run, capsys):
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run .*--resume .*--overwrite"):
        train(TrainConfig(**TINY), run, progress=False)
    assert main(["train", *FLAGS, "--out", str(run)]) == 2
    assert "--overwrite" in one_line(capsys)
    assert (run / "metrics.jsonl").read_text() == before and (run / "evaluation-test.json").exists()

    train(TrainConfig(**{**TINY, "iterations": 2, "val_every": 2}), run, overwrite=True, progress=False)
    assert not (run / "evaluation-test.json").exists()  # nothing of the old run stays beside the new one
    assert [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2
    with pytest.raises(ValueError, match="choose one"):
        train(None, run, resume=True, overwrite=True, progress=False)


# --- the checkpoint must agree with config.json and with itself

def test_a_config_json_that_disagrees_with_the_checkpoint_is_refused_naming_the_fields(run, capsys):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "method": "imaml-gd", "lam": 5.0}))
    for call in (lambda: train(None, run, resume=True, iterations=4, progress=False),
                 lambda: evaluate(run, tasks=4, progress=False)):
        with pytest.raises(CheckpointError, match="method 'maml' in the checkpoint, 'imaml-gd' in config.json") as info:
            call()
        assert "lam 2.0 in the checkpoint, 5.0" in str(info.value)
    (run / "config.json").write_text("{}")  # resolves to iMAML-GD's defaults
    assert main(["evaluate", str(run), "--tasks", "4", "--quiet"]) == 2
    assert "method 'maml' in the checkpoint" in one_line(capsys)


def test_where_things_are_may_change_on_resume(run):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_root": str(run / "moved"), "device": "auto"}))
    summary = train(None, run, resume=True, iterations=4, device="cpu", progress=False)
    assert summary["iterations"] == 4 and summary["device"] == "cpu"
    assert evaluate(run, tasks=4, progress=False, data_root=str(run / "moved-again"))["iteration"] == 4


def test_a_bit_flip_in_a_tensor_is_refused(run):
    state = load_checkpoint(run / "checkpoint.pt")
    weights = next(iter(state["model"].values())).contiguous().numpy().tobytes()
    data = bytearray((run / "checkpoint.pt").read_bytes())
    at = data.find(weights[:64])
    assert at > 0
    data[at + 5] ^= 0x10
    (run / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        evaluate(run, tasks=4, progress=False)


def test_a_checkpoint_holding_nan_is_refused_naming_the_file(run):
    state = load_checkpoint(run / "checkpoint.pt")
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    resave(run, state)
    for call in (lambda: evaluate(run, tasks=4, progress=False),
                 lambda: train(None, run, resume=True, iterations=4, progress=False)):
        with pytest.raises(CheckpointError, match=f"checkpoint.pt: checkpoint\\['model'\\]\\['{name}'\\] is not finite"):
            call()
    assert json.loads((run / "evaluation-test.json").read_text())["iteration"] == 3  # the old one, untouched


def test_an_evaluation_is_strict_json(run, monkeypatch):
    assert json.loads(json_text({"mean": float("nan"), "ci95": [float("inf")]})) == {"mean": None, "ci95": [None]}
    monkeypatch.setattr(trainer_module, "mean_ci95", lambda scores: (float("nan"), float("nan")))
    evaluate(run, tasks=4, progress=False)

    def bare(constant):
        raise AssertionError(f"bare {constant} in evaluation-test.json")

    assert json.loads((run / "evaluation-test.json").read_text(), parse_constant=bare)["mean"] is None


@pytest.mark.parametrize("damage,message", [
    (lambda state: state.pop("model"), "no 'model' entry"),
    (lambda state: state["model"].update({k: torch.zeros(7) for k in list(state["model"])[:1]}),
     "'model' entry does not fit this run's network"),
])
def test_a_checkpoint_without_model_or_with_a_wrong_shape_is_one_line(run, capsys, damage, message):
    state = load_checkpoint(run / "checkpoint.pt")
    damage(state)
    resave(run, state)
    assert main(["evaluate", str(run), "--tasks", "4", "--quiet"]) == 2
    assert message in one_line(capsys)
    assert main(["train", "--resume", str(run), "--iterations", "4", "--quiet"]) == 2
    line = one_line(capsys)
    assert message in line or "not a training checkpoint (no model)" in line


@pytest.mark.parametrize("junk", [bytes(random.Random(0).randrange(256) for _ in range(300)), b"\0" * 500,
                                  b"junk " * 50, b""])
def test_junk_bytes_are_corrupt_not_code(run, capsys, junk):
    (run / "checkpoint.pt").write_bytes(junk)
    assert main(["evaluate", str(run), "--tasks", "4", "--quiet"]) == 2
    line = one_line(capsys)
    assert "truncated or corrupt" in line and "could run code" not in line


# --- damaged metrics.jsonl

@pytest.mark.parametrize("line", ["42", "[1, 2]", '{"iteration": "2", "split": "train"}', "true"])
def test_a_metrics_line_that_is_no_record_is_one_line_on_resume(run, capsys, line):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:1] + [line] + lines[1:]) + "\n")
    assert main(["train", "--resume", str(run), "--iterations", "4", "--quiet"]) == 2
    assert "metrics.jsonl, line 2" in one_line(capsys)
    assert (run / "metrics.jsonl").read_text().splitlines()[1] == line  # nothing rewritten


# --- a full disk

def test_a_full_disk_during_a_metrics_write_is_one_line_with_no_half_line(tmp_path, monkeypatch, capsys):
    real, calls = os.write, []

    def disk_full_on_the_third_record(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            calls.append(1)
            if len(calls) == 3:
                real(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", disk_full_on_the_third_record)
    assert main(["train", *FLAGS, "--checkpoint-every", "1", "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys)
    assert "metrics.jsonl (No space left on device)" in line and "intact" in line
    monkeypatch.setattr(os, "write", real)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2]  # whole lines, none lost
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 2
    train(None, tmp_path / "run", resume=True, progress=False)


def test_a_full_disk_during_a_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    real = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if (tmp_path / "run" / "checkpoint.pt").exists():  # the second checkpoint
            f.write(b"PK\x03\x04 half")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed") from OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    assert main(["train", *FLAGS, "--checkpoint-every", "1", "--out", str(tmp_path / "run")]) == 2
    assert "checkpoint.pt (No space left on device); what was written before is intact" in one_line(capsys)
    monkeypatch.setattr(torch, "save", real)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


# --- SIGTERM and SIGHUP

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_save_a_checkpoint_and_stop_like_ctrl_c(tmp_path, monkeypatch, capsys, signum):
    real, calls = distributed_module.batched_hypergrad, []

    def signalled_during_iteration_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed_module, "batched_hypergrad", signalled_during_iteration_2)
    config = TrainConfig(**{**TINY, "checkpoint_every": 100})
    with pytest.raises(TrainingInterrupted, match=f"interrupted \\({signal.Signals(signum).name}\\) after iteration 2"):
        train(config, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 2
    calls.clear()
    assert main(["train", *FLAGS, "--checkpoint-every", "100", "--out", str(tmp_path / "cli")]) == 130
    assert f"interrupted ({signal.Signals(signum).name}) after iteration 2" in one_line(capsys)
    assert signal.getsignal(signum) is signal.SIG_DFL  # restored
    monkeypatch.setattr(distributed_module, "batched_hypergrad", real)
    assert train(None, tmp_path / "run", resume=True, progress=False)["iterations"] == 3


# --- leftovers and the summary of an empty resume

def test_temp_files_of_a_killed_write_are_removed_at_the_next_start(run):
    leftovers = [run / ".checkpoint.pt.4242.0a1b2c3d.tmp", run / ".metrics.jsonl.17.ffff0000.tmp"]
    for path in leftovers:
        path.write_bytes(b"")
    (run / "notes.tmp").write_text("mine")
    train(None, run, resume=True, progress=False)
    assert not any(path.exists() for path in leftovers) and (run / "notes.tmp").exists()


def test_a_resume_with_nothing_left_keeps_the_peak_memory(run):
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "peak_memory_mb": 12.5}))
    assert train(None, run, resume=True, progress=False)["peak_memory_mb"] == 12.5
    assert json.loads((run / "summary.json").read_text())["peak_memory_mb"] == 12.5


def test_sigkill_at_random_times_during_checkpoint_writes(tmp_path):
    """A forked writer saves checkpoints in a loop and is killed at random moments: the file is
    always a whole checkpoint (the last one or the one before), and its leftovers are cleaned."""
    path, rng = tmp_path / "checkpoint.pt", random.Random(19)
    save_checkpoint(path, {"iteration": 0, "model": {"w": torch.zeros(200_000)}})
    for _ in range(8):
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                for i in range(1, 10_000):
                    save_checkpoint(path, {"iteration": i, "model": {"w": torch.full((200_000,), float(i))}})
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.001, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        state = load_checkpoint(path)  # digest and all
        assert torch.equal(state["model"]["w"], torch.full((200_000,), float(state["iteration"])))
        remove_leftover_temp_files(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_real_sigterm_saves_the_last_iteration_and_exits_130(tmp_path):
    """What `docker stop` and SLURM preemption send, to a real `bilevel train` process."""
    run_dir = tmp_path / "run"
    flags = [*FLAGS, "--iterations", "100000", "--checkpoint-every", "100000", "--val-every", "100000"]
    proc = subprocess.Popen([sys.executable, "-m", "bilevel.cli", "train", *flags, "--out", str(run_dir)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    log, deadline = run_dir / "metrics.jsonl", time.monotonic() + 60
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "no records logged"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1 and "(SIGTERM)" in stderr, stderr
    last = json.loads(log.read_text().splitlines()[-1])["iteration"]
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == last  # nothing lost


# --- the command line: --overwrite, compare's refusal, where-things-are settings on resume

def test_the_command_line_refuses_a_held_folder_and_overwrite_replaces_it(run, capsys):
    from bilevel.cli import main

    assert main(["train", *FLAGS, "--out", str(run)]) == 2
    assert "--overwrite" in one_line(capsys)
    assert main(["train", *FLAGS, "--out", str(run), "--overwrite"]) in (0, None)
    capsys.readouterr()
    assert not (run / "evaluation-test.json").exists()  # the old run's evaluation went with it
    assert main(["train", "--resume", str(run), "--overwrite", "--quiet"]) == 2
    assert "give one" in one_line(capsys)


def test_a_resume_may_change_where_the_data_and_the_computation_are(run, capsys):
    from bilevel.cli import main

    assert main(["train", "--resume", str(run), "--iterations", "4", "--device", "cpu", "--data-root",
                 str(run.parent / "elsewhere"), "--quiet"]) in (0, None)
    capsys.readouterr()
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 4
    assert main(["train", "--resume", str(run), "--inner-steps", "3", "--quiet"]) == 2  # what the run is: refused
    assert "--inner-steps 3 (the run has 2)" in one_line(capsys)


def test_compare_refuses_folders_that_hold_runs_unless_resume_or_overwrite(tmp_path, capsys):
    from bilevel.fewshot.compare import run_many

    config = TrainConfig(**TINY)
    held = tmp_path / "maml" / "seed-0"
    held.mkdir(parents=True)
    (held / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="already hold a run .*--resume .*--overwrite"):
        run_many([("maml", held, config)])
    with pytest.raises(ValueError, match="give one"):
        run_many([("maml", held, config)], resume=True, overwrite=True)


# --- review findings: a file system without locks, nohup, an overflowed validation

def test_a_file_system_without_locks_warns_and_runs_unlocked(tmp_path, monkeypatch):
    import fcntl

    from bilevel.fewshot.run_lock import RunLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match="cannot lock .*unlocked"):
        with RunLock(tmp_path, "train"):
            pass


def test_compare_keeps_a_signal_that_was_ignored_ignored():
    """`nohup bilevel compare`: SIGHUP stays ignored (the children ignore it too), SIGTERM is forwarded."""
    from bilevel.fewshot.children import Children

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    term = signal.getsignal(signal.SIGTERM)
    try:
        with Children().forwarding():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not term  # forwarded
        assert signal.getsignal(signal.SIGTERM) is term  # restored
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_checkpoint_that_could_not_be_loaded_is_never_written(tmp_path):
    """An overflowed validation (best_val inf) used to be saved, then refused on every load."""
    from bilevel.errors import NonFiniteError

    state = {"iteration": 3, "model": {"w": torch.zeros(2)}, "optimizer": {}, "best_val": float("inf")}
    with pytest.raises(NonFiniteError, match=r"best_val is not finite"):
        save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert not (tmp_path / "checkpoint.pt").exists()
