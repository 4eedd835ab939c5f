"""Training runs: exact resume after a stop or a crash, evaluation's interval, real Omniglot."""

import json
import math

import pytest
import torch

import bilevel.distributed as distributed_module
from bilevel.fewshot import METHODS, TrainConfig, evaluate, mean_ci95, train

SMALL = dict(benchmark="sinusoid", iterations=6, val_every=3, val_tasks=4, meta_batch=4, inner_steps=2,
             checkpoint_every=2, eval_tasks=8)


def state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if k not in ("seconds", "tasks_per_second")} for r in records
            if r["split"] == "train"]


def assert_same_run(a, b):
    sa, sb = state(a), state(b)
    assert sa["iteration"] == sb["iteration"]
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert sa["sampler"].keys() == sb["sampler"].keys()
    for k, v in sa["sampler"].items():
        assert torch.equal(v, sb["sampler"][k]) if isinstance(v, torch.Tensor) else v == sb["sampler"][k], k
    assert train_records(a) == train_records(b)


@pytest.mark.parametrize("method", ["maml", "imaml-gd"])
def test_resume_after_a_stop_equals_uninterrupted_training(tmp_path, method):
    train(TrainConfig(method=method, **SMALL), tmp_path / "full", progress=False)
    train(TrainConfig(method=method, **{**SMALL, "iterations": 4}), tmp_path / "split", progress=False)
    train(None, tmp_path / "split", resume=True, iterations=6, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "split")


def test_resume_after_a_crash_equals_uninterrupted_training(tmp_path, monkeypatch):
    """Killed during iteration 5 (after the checkpoint of iteration 4): resuming replays 5 and 6
    and drops the log lines written after the checkpoint."""
    train(TrainConfig(method="imaml-gd", **SMALL), tmp_path / "full", progress=False)
    real = distributed_module.batched_hypergrad
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed_module, "batched_hypergrad", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(method="imaml-gd", **SMALL), tmp_path / "crash", progress=False)
    monkeypatch.setattr(distributed_module, "batched_hypergrad", real)
    assert state(tmp_path / "crash")["iteration"] == 4
    train(None, tmp_path / "crash", resume=True, progress=False)
    assert_same_run(tmp_path / "full", tmp_path / "crash")
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    crash = (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()
    strip = lambda r: {k: v for k, v in json.loads(r).items() if k not in ("seconds", "tasks_per_second")}
    assert [strip(r) for r in full] == [strip(r) for r in crash]  # val records included


def test_run_directory_contents_and_evaluation(tmp_path):
    summary = train(TrainConfig(method="fomaml", **SMALL), tmp_path, progress=False)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == "fomaml" and config["lam"] == 2.0 and config["shots"] == 10
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["split"] == "val"] == [3, 6]
    assert all(math.isfinite(r["loss"]) for r in records if r["split"] == "train")
    assert summary["seconds_per_iteration"] > 0
    result = evaluate(tmp_path, tasks=8)
    assert result["tasks"] == 8 and result["metric"] == "mse" and result["ci95"] > 0
    assert json.loads((tmp_path / "evaluation-test.json").read_text())["mean"] == result["mean"]


def test_mean_ci95_is_the_normal_interval():
    values = torch.tensor([0.5, 1.0, 0.75, 1.0, 0.25])
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(0.7)
    assert ci == pytest.approx(1.96 * float(values.double().std()) / math.sqrt(5))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_evaluates_on_real_omniglot(tmp_path, omniglot_root, method):
    """Two tiny iterations of each method through the conv4 net, then a 6-task evaluation."""
    config = TrainConfig(benchmark="omniglot", method=method, ways=3, shots=1, queries=2, iterations=2,
                         meta_batch=2, inner_steps=2, hf_steps=1, val_every=2, val_tasks=3, data_root=str(omniglot_root))
    train(config, tmp_path, progress=False)
    result = evaluate(tmp_path, tasks=6)
    assert 0.0 <= result["mean"] <= 1.0 and result["tasks"] == 6


def test_vectorized_and_looped_training_agree(tmp_path):
    """lambda 10: at the sinusoid default of 0.5 the meta-gradient's CG amplifies float32
    rounding (vmap and the loop sum in different orders) to differences of up to 3e-6 in a
    meta-gradient whose entries go down to 7e-6, and Adam's normalized steps carry that to
    2e-5 in a weight after 6 iterations."""
    a = train(TrainConfig(method="imaml-gd", lam=10.0, vectorize="on", **SMALL), tmp_path / "vmap", progress=False)
    b = train(TrainConfig(method="imaml-gd", lam=10.0, vectorize="off", **SMALL), tmp_path / "loop", progress=False)
    sa, sb = state(tmp_path / "vmap"), state(tmp_path / "loop")
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=1e-4, atol=1e-6)  # float32 reductions
    del a, b


def test_miniimagenet_trains_on_a_generated_stand_in(tmp_path):
    """The real data cannot be had here: 3 classes x 4 images per split in the pickle format."""
    import pickle

    import numpy as np

    root = tmp_path / "mini"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        images = rng.integers(0, 256, (12, 84, 84, 3), dtype=np.uint8)
        class_dict = {f"n0{split}{c}": list(range(4 * c, 4 * c + 4)) for c in range(3)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)
    config = TrainConfig(benchmark="miniimagenet", method="imaml-gd", ways=3, shots=1, queries=1, iterations=2,
                         meta_batch=2, inner_steps=1, val_every=1, val_tasks=2, data_root=str(root))
    train(config, tmp_path / "run", progress=False)
    result = evaluate(tmp_path / "run", tasks=4)
    assert result["tasks"] == 4 and 0.0 <= result["mean"] <= 1.0
