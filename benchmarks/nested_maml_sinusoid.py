"""NestedMAML on sinusoid regression with outlier tasks: MAML, NestedMAML, an exact nested
hypergradient, and the oracle, over training seeds.

The setting follows the official code (Hugo101/NestedMAML,
``Synthetic_regression/sine_wave_outlier_regression/maml_synthetic_fixed_weight.py``) at a smaller
budget: a fixed pool of ``N`` training tasks ``y = A sin(x - phi)``, ``A ~ U[0.1, 5]``,
``phi ~ U[0, pi]``, ``x ~ U[-5, 5]`` (fresh points at every visit of a task, as the official
``sample_data``), of which the first ``round(p N)`` are corrupted; clean validation tasks; 600
clean test tasks. The official ``sample_outliers`` lives in a module its repository does not ship
(``Sine_Regression.OOD_Tasks.tasks`` from ``metaL-dss``), so the corruption here is ours: the
targets of a corrupted task come from another function family, ``y = A tanh(x) - 2 phi`` (the
one ``benchmarks/multilevel_error.py`` uses). The network is the official 1-40-40-1 ReLU MLP;
level 3 is second-order MAML (5 steps at 0.01 on 20 support points, the loss on 20 query points);
the meta-optimizer is Adam at 0.005 on the weighted mean ``sum_i w_i g_i / sum_i w_i`` over a
meta-batch of ``B`` pool tasks (the official code does not normalize; see :func:`weight_step`).

Methods (``--methods``):

* ``maml``: uniform weights ``w_i = 1``.
* ``nested``: NestedMAML. Every ``--weight-every`` iterations, on the meta-batch: the one-step
  lookahead ``dV/dw_i`` (:class:`bilevel.multilevel.Lookahead`, rate ``--lookahead-lr``) from the
  validation meta-loss, then ``w_i <- max(w_i - beta dV/dw_i, 0)``, then the weighted MAML step on
  the same batch with the new weights (the official order). One weight per pool task; no
  clustering (the official sinusoid code has none).
* ``unrolled3``: the same, with ``dV/dw`` exact for three differentiable SGD meta-steps
  (:class:`bilevel.multilevel.UnrolledMeta` through ``GradientDescent(lookahead_lr, steps=3)``):
  the lookahead's ``theta'`` replaced by ``theta_3``, every level-3 gradient second-order.
* ``oracle``: MAML on the clean pool tasks only.

Each ``(p, method, seed)`` run writes ``RUNS/p{p}/{method}/seed{seed}.json`` and is skipped when
that file exists (resume by running the same command again). ``--summarize`` turns the finished
runs into ``OUT/results.json``, ``results.log`` and ``test_mse.png``: per method and ``p``, the
test MSE's mean over seeds with its Student-t 95% interval, the paired difference to ``maml``
(:mod:`bilevel.fewshot.seeds`) and the AUC of the learned weights (corrupted vs clean).
``--official GIT_DIR`` reads the official repository's logged results into ``OUT/official.json``.

Run (one CPU thread):
    OMP_NUM_THREADS=1 python benchmarks/nested_maml_sinusoid.py              # the runs
    OMP_NUM_THREADS=1 python benchmarks/nested_maml_sinusoid.py --summarize  # the table
    OMP_NUM_THREADS=1 python benchmarks/nested_maml_sinusoid.py --quick      # a smoke test
    python benchmarks/nested_maml_sinusoid.py --official /work/.mirror/Hugo101+NestedMAML/repo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from bilevel import GradientDescent, Unrolled, batched_hypergrad, maml_problem  # noqa: E402
from bilevel.data.sinusoid import SinusoidParams, SinusoidTasks  # noqa: E402
from bilevel.multilevel import (Lookahead, TaskWeightedMetaTraining, UnrolledMeta,  # noqa: E402
                                weight_hypergrad)

METHODS = ("maml", "nested", "unrolled3", "oracle")
LAYERS = [(1, 40), (40, 40), (40, 1)]
TEST_SEED = 12345  # one test set for every training seed and method: the paired differences share it


@dataclass(frozen=True)
class Config:
    pool: int = 1000           # N training tasks (official: 10000)
    val_tasks: int = 100       # clean validation pool (official: 1024)
    test_tasks: int = 600
    shots: int = 20            # support points; as many query points (official: 2 * shots split in half)
    test_queries: int = 100    # query points per test task (a smoother estimate of each task's MSE)
    inner_steps: int = 5
    inner_lr: float = 0.01
    meta_lr: float = 0.005     # Adam
    meta_batch: int = 100      # training tasks per iteration (as the official code)
    val_batch: int = 100       # validation tasks per weight update (as the official code)
    iterations: int = 1000     # official: 10000 (5000 in its performance_plots.py)
    lookahead_lr: float = 0.005
    weight_lr: float = 300.0   # beta in w <- max(w - beta dV/dw, 0) (weights start at 1, not 1/N)
    weight_every: int = 1
    unrolled_steps: int = 3
    evals: int = 10            # test MSE checkpoints during training (the last one is the result)


# --- Data: a fixed pool of tasks, fresh points at every visit.

def outlier_function(x, params: SinusoidParams):
    """Targets of a corrupted task: another function family, ``A tanh(x) - 2 phi``."""
    return params.amplitude[:, None, None] * torch.tanh(x) - 2 * params.phase[:, None, None]


def draw_points(params: SinusoidParams, corrupted, n_support, n_query, g):
    """``(support, query)`` for the tasks ``params``: ``[B, n, 2]`` tensors of ``(x, y)``."""
    b = params.amplitude.shape[0]
    x = 10 * torch.rand(b, n_support + n_query, 1, generator=g) - 5
    y = torch.where(corrupted[:, None, None], outlier_function(x, params), SinusoidTasks.function(x, params))
    data = torch.cat([x, y], -1)
    return data[:, :n_support], data[:, n_support:]


def task_params(n, seed):
    _, params = SinusoidTasks(shots=1, queries=1, seed=seed).sample(n, return_params=True)
    return params


def subset(params: SinusoidParams, idx):
    return SinusoidParams(params.amplitude[idx], params.phase[idx])


# --- Model and level 3.

def init_theta(seed):
    g = torch.Generator().manual_seed(seed)
    theta = {}
    for i, (a, b) in enumerate(LAYERS):  # nn.Linear's default initialization
        bound = 1 / math.sqrt(a)
        theta[f"w{i}"] = (2 * torch.rand(a, b, generator=g) - 1) * bound
        theta[f"b{i}"] = (2 * torch.rand(b, generator=g) - 1) * bound
    return theta


def net(p, x):
    h = x
    for i in range(len(LAYERS)):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        if i < len(LAYERS) - 1:
            h = torch.relu(h)
    return h


def mse(p, batch):
    return ((net(p, batch[..., :1]) - batch[..., 1:]) ** 2).mean()


def make_problem(cfg: Config):
    return maml_problem(mse, GradientDescent(lr=cfg.inner_lr, steps=cfg.inner_steps))


def test_mse(problem, theta, test_data):
    """Mean over test tasks of the query MSE after the inner adaptation (values only)."""
    level = TaskWeightedMetaTraining(problem, Unrolled(), train=test_data, validation=test_data,
                                     meta_solver=GradientDescent(lr=1.0, steps=1), on_failure="ignore")
    return float(level.task_losses(theta).mean())


# --- One run.

def weight_method(method, cfg: Config):
    if method == "nested":
        return Lookahead(lr=cfg.lookahead_lr)
    if method == "unrolled3":
        return UnrolledMeta()
    return None


def weight_step(problem, cfg: Config, train, validation, w, theta, method, meta_steps):
    """NestedMAML's weight update on one meta-batch: ``w <- max(w - beta dV/dw, 0)``.

    Level 2 steps on the weighted mean ``G = sum_i u_i g_i``, ``u = w / sum(w)``; ``method`` gives
    ``dV/du`` (the weights enter ``G`` linearly), and the normalization's chain rule gives
    ``dV/dw_j = (dV/du_j - sum_i u_i dV/du_i) / sum(w)``: only a task's alignment with the
    validation gradient *relative to the batch* moves its weight.
    """
    total = w.sum()
    if total <= 0:
        return w
    u = w / total
    level = TaskWeightedMetaTraining(problem, Unrolled(), train=train, validation=validation,
                                     meta_solver=GradientDescent(lr=cfg.lookahead_lr, steps=meta_steps),
                                     on_failure="ignore")
    du = weight_hypergrad(level, u, {k: v.detach() for k, v in theta.items()}, method=method).grad
    dw = (du - torch.dot(u, du)) / total
    return (w - cfg.weight_lr * dw).clamp(min=0)


def run(cfg: Config, p: float, method: str, seed: int, log=print) -> dict:
    """Train one ``(p, method, seed)`` and return its result record (see ``RESULT_KEYS``)."""
    if method not in METHODS:
        raise ValueError(f"run: method must be one of {METHODS}, got {method!r}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)  # batches and points: the same stream for every method
    pool = task_params(cfg.pool, seed=10 * seed + 1)
    n_bad = round(p * cfg.pool)
    corrupted = torch.arange(cfg.pool) < n_bad
    val = task_params(cfg.val_tasks, seed=10 * seed + 2)
    no = torch.zeros(cfg.val_tasks, dtype=torch.bool)
    test = task_params(cfg.test_tasks, seed=TEST_SEED)
    test_data = draw_points(test, torch.zeros(cfg.test_tasks, dtype=torch.bool), cfg.shots, cfg.test_queries,
                            torch.Generator().manual_seed(TEST_SEED))
    problem = make_problem(cfg)
    theta = init_theta(seed)
    opt = torch.optim.Adam(list(theta.values()), lr=cfg.meta_lr)
    for v in theta.values():
        v.requires_grad_(True)
    w = torch.ones(cfg.pool)
    eligible = torch.nonzero(~corrupted).squeeze(1) if method == "oracle" else torch.arange(cfg.pool)
    wmethod = weight_method(method, cfg)
    meta_steps = cfg.unrolled_steps if method == "unrolled3" else 1
    curve, start, weight_seconds = [], time.perf_counter(), 0.0
    eval_at = {round(cfg.iterations * (k + 1) / cfg.evals) for k in range(cfg.evals)}
    for it in range(1, cfg.iterations + 1):
        idx = eligible[torch.randperm(len(eligible), generator=g)[:cfg.meta_batch]]
        train = draw_points(subset(pool, idx), corrupted[idx], cfg.shots, cfg.shots, g)
        vidx = torch.randperm(cfg.val_tasks, generator=g)[:cfg.val_batch]
        validation = draw_points(subset(val, vidx), no[vidx], cfg.shots, cfg.shots, g)
        if wmethod is not None and it % cfg.weight_every == 0:
            t0 = time.perf_counter()
            w[idx] = weight_step(problem, cfg, train, validation, w[idx], theta, wmethod, meta_steps)
            weight_seconds += time.perf_counter() - t0
        total = w[idx].sum()
        hg = batched_hypergrad(problem, theta, *train, backend=Unrolled(), reduction="none", on_failure="ignore")
        if total > 0:  # every weight of the batch clipped to zero: no meta-step
            u = w[idx] / total
            for k, v in theta.items():
                v.grad = torch.tensordot(u, hg.grad[k], dims=1)
            opt.step()
        if it in eval_at:
            mse_now = test_mse(problem, theta, test_data)
            curve.append({"iteration": it, "test_mse": mse_now, "seconds": time.perf_counter() - start})
            log(f"  p={p} {method:9s} seed={seed} it {it:5d}/{cfg.iterations} train {float(hg.loss.mean()):.3f} "
                f"test {mse_now:.4f} mean w clean {float(w[~corrupted].mean()):.3f} "
                f"corrupted {float(w[corrupted].mean()) if n_bad else float('nan'):.3f} "
                f"{time.perf_counter() - start:6.0f} s")
    auc = weight_auc(w, corrupted) if wmethod is not None else None
    return {
        "p": p, "method": method, "seed": seed, "config": asdict(cfg),
        "test_mse": curve[-1]["test_mse"], "curve": curve,
        "weight_auc": auc,
        "mean_weight_clean": float(w[~corrupted].mean()),
        "mean_weight_corrupted": float(w[corrupted].mean()) if n_bad else None,
        "zero_weights_clean": int((w[~corrupted] == 0).sum()),
        "zero_weights_corrupted": int((w[corrupted] == 0).sum()),
        "weight_amplitude_spearman_clean": spearman(w[~corrupted], pool.amplitude[~corrupted])
        if wmethod is not None else None,
        "weights": [round(float(x), 6) for x in w], "amplitude": [round(float(a), 6) for a in pool.amplitude],
        "seconds": time.perf_counter() - start, "weight_seconds": weight_seconds,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


RESULT_KEYS = {"p", "method", "seed", "config", "test_mse", "curve", "weight_auc", "mean_weight_clean",
               "mean_weight_corrupted", "zero_weights_clean", "zero_weights_corrupted", "seconds",
               "weight_seconds", "torch", "threads", "weight_amplitude_spearman_clean", "weights", "amplitude"}


def spearman(a, b):
    """Rank correlation of the clean tasks' weights with their amplitudes (does the lookahead prefer
    tasks with large gradients, i.e. large amplitudes?)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def weight_auc(w, corrupted):
    """AUC of ``-w`` as a score for "corrupted" (1: every corrupted task weighs less than every clean one)."""
    if corrupted.all() or not corrupted.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(corrupted.numpy(), (-w).numpy()))


def run_path(runs: Path, p, method, seed) -> Path:
    return runs / f"p{p}" / method / f"seed{seed}.json"


def run_all(cfg: Config, ps, methods, seeds, runs: Path, log=print):
    for seed in seeds:  # seeds outermost: an interrupted sweep leaves whole seeds of every method
        for p in ps:
            for method in methods:
                path = run_path(runs, p, method, seed)
                if path.exists():
                    log(f"skip {path} (done)")
                    continue
                log(f"run p={p} method={method} seed={seed}")
                record = run(cfg, p, method, seed, log)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(record, indent=1))
                tmp.replace(path)
                log(f"done p={p} method={method} seed={seed}: test MSE {record['test_mse']:.4f}, "
                    f"AUC {record['weight_auc']}, {record['seconds']:.0f} s")


# --- The table.

def summarize(runs: Path, out: Path, command: str, reference="maml"):
    from bilevel.fewshot.seeds import over_seeds, paired_difference

    records = [json.loads(f.read_text()) for f in sorted(runs.glob("p*/*/seed*.json"))]
    if not records:
        raise SystemExit(f"summarize: no finished runs under {runs}")
    by = {}
    for r in records:
        by.setdefault((r["p"], r["method"]), {})[r["seed"]] = r
    rows = []
    for p in sorted({k[0] for k in by}):
        ref = by.get((p, reference), {})
        for method in METHODS:
            runs_pm = by.get((p, method))
            if not runs_pm:
                continue
            seeds = sorted(runs_pm)
            mse = [runs_pm[s]["test_mse"] for s in seeds]
            stat = over_seeds(mse)
            row = {"p": p, "method": method, "seeds": seeds, "test_mse": mse,
                   "mean": stat.mean, "low": stat.low, "high": stat.high,
                   "seconds": [runs_pm[s]["seconds"] for s in seeds]}
            shared = [s for s in seeds if s in ref]
            if method != reference and shared:
                d = paired_difference([runs_pm[s]["test_mse"] for s in shared], [ref[s]["test_mse"] for s in shared])
                row["diff_to_maml"] = {"seeds": shared, "mean": d.mean, "low": d.low, "high": d.high,
                                       "excludes_zero": d.excludes_zero()}
            aucs = [runs_pm[s]["weight_auc"] for s in seeds]
            if all(a is not None for a in aucs):
                a = over_seeds(aucs)
                row["weight_auc"] = {"values": aucs, "mean": a.mean, "low": a.low, "high": a.high}
                row["mean_weight_clean"] = [runs_pm[s]["mean_weight_clean"] for s in seeds]
                row["mean_weight_corrupted"] = [runs_pm[s]["mean_weight_corrupted"] for s in seeds]
                row["weight_amplitude_spearman_clean"] = [runs_pm[s].get("weight_amplitude_spearman_clean")
                                                          for s in seeds]
            rows.append(row)
    # a reference run ignores the weight settings, so a sweep may reuse it: show a weighted run's config
    config = next((r["config"] for r in records if r["method"] != reference), records[0]["config"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command.replace(" --summarize", ""),
                                                  "summarize": command, "config": config, "rows": rows,
                                                  "torch": records[0]["torch"]}, indent=1))
    train = command.replace(" --summarize", "")
    lines = [train, f"(table: {command})",
             f"torch {records[0]['torch']}, {records[0]['threads']} thread(s); config {json.dumps(config)}",
             "", table(rows), "", "per run (p, method, seed: test MSE, weight AUC, seconds):"]
    for r in sorted(records, key=lambda r: (r["p"], METHODS.index(r["method"]), r["seed"])):
        auc = "—" if r["weight_auc"] is None else f"{r['weight_auc']:.4f}"
        lines.append(f"  p={r['p']} {r['method']:9s} seed={r['seed']}: {r['test_mse']:.4f}  AUC {auc}  "
                     f"{r['seconds']:.0f} s  curve " + " ".join(f"{c['iteration']}:{c['test_mse']:.4f}"
                                                             for c in r["curve"]))
    (out / "results.log").write_text("\n".join(lines) + "\n")
    plot(rows, out / "test_mse.png")
    print("\n".join(lines))


def fmt(m, lo, hi, digits=3):
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(rows):
    head = ("| p | method | seeds | test MSE [95% CI] | minus MAML [95% CI] | weight AUC [95% CI] | "
            "mean w corrupted / clean | rank corr. (w, A), clean |\n|---|---|---|---|---|---|---|---|")
    out = [head]
    mean = lambda xs: sum(xs) / len(xs)
    for r in rows:
        d = r.get("diff_to_maml")
        a = r.get("weight_auc")
        rho = [x for x in r.get("weight_amplitude_spearman_clean", []) if x is not None]
        out.append(f"| {r['p']} | {r['method']} | {len(r['seeds'])} | {fmt(r['mean'], r['low'], r['high'])} | "
                   + (fmt(d["mean"], d["low"], d["high"]) if d else "—") + " | "
                   + (fmt(a["mean"], a["low"], a["high"]) if a else "—") + " | "
                   + (f"{mean(r['mean_weight_corrupted']):.2f} / {mean(r['mean_weight_clean']):.2f}" if a else "—")
                   + " | " + (f"{mean(rho):+.2f}" if rho else "—") + " |")
    return "\n".join(out)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted({r["p"] for r in rows})
    fig, axes = plt.subplots(1, len(ps), figsize=(4.5 * len(ps), 3.6), squeeze=False)
    for ax, p in zip(axes[0], ps):
        rs = [r for r in rows if r["p"] == p]
        x = range(len(rs))
        err = [[r["mean"] - r["low"] if math.isfinite(r["low"]) else 0 for r in rs],
               [r["high"] - r["mean"] if math.isfinite(r["high"]) else 0 for r in rs]]
        ax.errorbar(x, [r["mean"] for r in rs], yerr=err, fmt="o", capsize=4)
        for i, r in enumerate(rs):
            ax.scatter([i] * len(r["test_mse"]), r["test_mse"], s=10, color="gray", alpha=0.6)
        ax.set_xticks(list(x), [r["method"] for r in rs])
        ax.set_xlim(-0.5, len(rs) - 0.5)
        ax.set_title(f"p = {p} corrupted training tasks")
        ax.set_ylabel("test MSE (600 clean tasks)")
    fig.suptitle("NestedMAML, sinusoid with outlier tasks: mean over seeds, 95% t-interval (dots: seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- The official code's logged results (Hugo101/NestedMAML, Results_Final).

OFFICIAL_DIR = "Synthetic_regression/sine_wave_outlier_regression/Results_Final"
OFFICIAL_METHODS = {"maml_sine_losses": "maml", "maml_fixedwt_sine_losses": "nested (fixed weights)",
                    "maml_rewt_sine_losses": "online reweighting (L2RW-style)", "maml_rm_ood_sine_losses": "oracle"}


def concatenated_floats(text):
    """The official logs write ``str(x)`` for every x with no separator ("0.1710.189..."); every
    value there is in ``[0, 10)`` with one integer digit, so each "." starts a new number."""
    parts = text.strip().split(".")
    out = []
    for k in range(1, len(parts)):
        frac = parts[k] if k == len(parts) - 1 else parts[k][:-1]
        if not frac.isdigit() or not parts[k - 1][-1:].isdigit():
            raise ValueError(f"concatenated_floats: cannot split at part {k}: {parts[k - 1]!r}.{parts[k]!r}")
        out.append(float(parts[k - 1][-1] + "." + frac))
    return out


def official(git_dir: Path, out: Path, command: str, last=10):
    """Final test MSE of the official runs: the mean of the last ``last`` logged test errors
    (each the mean over 100 test tasks, logged every 10 iterations) times ``shots``, because
    the official ``fast_adapt`` divides the mean squared error by the query size (= shots)."""
    import re
    import subprocess

    def show(name):
        return subprocess.run(["git", "-C", str(git_dir), "show", f"HEAD:{OFFICIAL_DIR}/{name}"], check=True,
                              capture_output=True, text=True).stdout

    commit = subprocess.run(["git", "-C", str(git_dir), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for shots in (5, 10, 20):
        for p in ("0.3", "0.5", "0.8", "0.9"):
            for prefix, method in OFFICIAL_METHODS.items():
                values = concatenated_floats(show(f"{prefix}{shots}{p}.txt"))
                rows.append({"shots": shots, "p": float(p), "method": method, "file": f"{prefix}{shots}{p}.txt",
                             "logged": len(values), "final_logged": sum(values[-last:]) / last,
                             "test_mse": shots * sum(values[-last:]) / last})
            logged = show(f"maml_fixedwt_wts{shots}{p}.txt")
            ood, clean = (float(x) for x in re.findall(r"tensor\(([0-9.e+-]+)", logged))
            rows.append({"shots": shots, "p": float(p), "method": "nested (fixed weights)",
                         "file": f"maml_fixedwt_wts{shots}{p}.txt", "mean_weight_corrupted": ood,
                         "mean_weight_clean_as_logged": clean})
    out.mkdir(parents=True, exist_ok=True)
    (out / "official.json").write_text(json.dumps({"command": command, "commit": commit, "rows": rows}, indent=1))
    lines = [command, f"Hugo101/NestedMAML {commit}, {OFFICIAL_DIR}: final test MSE = shots x mean of the last "
             f"{last} logged test errors", "", "| shots | p | maml | nested (fixed weights) | online reweighting | "
             "oracle | weights corrupted / clean |", "|---|---|---|---|---|---|---|"]
    for shots in (5, 10, 20):
        for p in (0.3, 0.5, 0.8, 0.9):
            r = {x["method"]: x for x in rows if x["shots"] == shots and x["p"] == p and "test_mse" in x}
            wt = next(x for x in rows if x["shots"] == shots and x["p"] == p and "mean_weight_corrupted" in x)
            lines.append(f"| {shots} | {p} | "
                         + " | ".join(f"{r[m]['test_mse']:.3f}" for m in OFFICIAL_METHODS.values())
                         + f" | {wt['mean_weight_corrupted']:.3g} / {wt['mean_weight_clean_as_logged']:.3g} |")
    (out / "official.log").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


QUICK = Config(pool=40, val_tasks=20, test_tasks=50, meta_batch=10, val_batch=10, iterations=20, evals=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ps", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/nested-maml-sinusoid"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/nested-maml-sinusoid"))
    parser.add_argument("--quick", action="store_true", help="a tiny setting into RUNS-quick (a smoke test)")
    parser.add_argument("--summarize", action="store_true", help="write the table from the finished runs")
    parser.add_argument("--official", type=Path, metavar="GIT_DIR",
                        help="write OUT/official.json from a git directory of Hugo101/NestedMAML")
    for field in ("iterations", "pool", "meta_batch", "val_batch", "weight_every"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int)
    parser.add_argument("--weight-lr", type=float)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else Config()
    cfg = replace(cfg, **{k: getattr(args, k) for k in ("iterations", "pool", "meta_batch", "val_batch",
                                                        "weight_every", "weight_lr") if getattr(args, k) is not None})
    runs = args.runs.with_name(args.runs.name + "-quick") if args.quick else args.runs
    command = "OMP_NUM_THREADS=1 python benchmarks/nested_maml_sinusoid.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    if args.official is not None:
        official(args.official, args.out, command.strip())
        return
    if args.summarize:
        summarize(runs, args.out, command.strip())
        return
    log = lambda s: print(s, flush=True)
    log(f"config {asdict(cfg)} -> {runs}")
    run_all(cfg, args.ps, args.methods, args.seeds, runs, log)


if __name__ == "__main__":
    main()
