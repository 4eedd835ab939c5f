"""Checkpoints: loaded without running code, written atomically, never with a NaN, and the
run folders written before this format still load."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from bilevel.cli import main
from bilevel.errors import NonFiniteError
from bilevel.fewshot import TrainConfig, evaluate, train
from bilevel.fewshot.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bilevel.fewshot.trainer import setup

REPO = Path(__file__).resolve().parents[2]
TINY = dict(benchmark="sinusoid", method="fomaml", iterations=6, val_every=6, val_tasks=4, meta_batch=4,
            inner_steps=2, checkpoint_every=2, eval_tasks=4, device="cpu")


class RunsCode:
    """Unpickling this object would create the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_crafted_pickle_is_refused_without_running_its_code(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(TrainConfig(**{**TINY, "iterations": 2}), run_dir, progress=False)
    marker = tmp_path / "code-ran"
    state = load_checkpoint(run_dir / "checkpoint.pt")
    torch.save({**state, "best_val": RunsCode(marker)}, run_dir / "checkpoint.pt")
    path = str(run_dir / "checkpoint.pt")

    with pytest.raises(CheckpointError, match="refused to load") as info:
        train(None, run_dir, resume=True, iterations=4, progress=False)
    assert path in str(info.value) and "mkdir" in str(info.value)
    with pytest.raises(CheckpointError, match="refused to load"):
        evaluate(run_dir, tasks=4, progress=False)
    assert main(["evaluate", str(run_dir), "--tasks", "4", "--quiet"]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert path in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_damaged_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1, "model": {"w": torch.ones(3)}})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_an_interrupted_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_save, calls = torch.save, []

    def disk_full_on_the_second_checkpoint(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_the_second_checkpoint)
    with pytest.raises(CheckpointError, match="No space left") as info:  # one line (RunFolderError), exit 2
        train(TrainConfig(**TINY), run_dir, progress=False)
    assert "checkpoint.pt" in str(info.value) and "intact" in str(info.value)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 2  # the previous one, whole
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    train(None, run_dir, resume=True, progress=False)  # and it resumes
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 6


def test_a_checkpoint_with_nan_is_never_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1, "model": {"w": torch.ones(2)}, "optimizer": {}})
    before = path.read_bytes()
    for bad in ({"model": {"w": torch.tensor([1.0, float("nan")])}, "optimizer": {}},
                {"model": {"w": torch.ones(2)},
                 "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}}):
        with pytest.raises(NonFiniteError, match="iteration 7") as info:
            save_checkpoint(path, {"iteration": 7, **bad})
        assert str(path) in str(info.value)
        assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_only_tensors_and_plain_values_are_saved(tmp_path):
    """So that every checkpoint written loads with weights_only=True."""
    with pytest.raises(TypeError, match=r"checkpoint\['config'\]\['root'\] is a PosixPath"):
        save_checkpoint(tmp_path / "c.pt", {"iteration": 1, "config": {"root": Path("/data")}})
    assert not (tmp_path / "c.pt").exists()


def _existing_runs():
    runs = REPO / "runs"
    return [runs / "omniglot-5w1s" / "maml", *sorted((runs / "sinusoid-tuning-runs").glob("maml-*"))[:1]]


@pytest.mark.parametrize("run_dir", _existing_runs(), ids=lambda p: p.name)
def test_checkpoints_written_before_weights_only_still_load(run_dir, tmp_path):
    """Run folders from before this format (read here, never written): they load with
    weights_only=True into the network and optimizer of their config; a sinusoid run resumes."""
    if not (run_dir / "checkpoint.pt").exists():
        pytest.skip(f"{run_dir} is not here (runs/ is local, not in git)")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    from bilevel.fewshot.config import load_config, resolve

    config = resolve(load_config(run_dir / "config.json"))
    config.device = "cpu"
    _, model, _, _ = setup(config)
    model.load_state_dict(state["model"])
    torch.optim.Adam(model.parameters()).load_state_dict(state["optimizer"])
    assert isinstance(state["sampler"]["generator"], torch.Tensor) and state["iteration"] >= 1
    if config.benchmark == "sinusoid":
        copy = tmp_path / run_dir.name
        shutil.copytree(run_dir, copy)
        summary = train(None, copy, resume=True, iterations=state["iteration"] + 1, progress=False)
        assert summary["iterations"] == state["iteration"] + 1
