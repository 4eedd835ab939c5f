"""Fig. 2b of the iMAML paper: memory and time per meta-iteration against inner steps.

MAML (``Unrolled`` through gradient descent) and iMAML-GD (``Implicit(CG(5))`` at the
gradient-descent solution of the proximal problem) on Omniglot (20-way 5-shot by default, the
paper's setting), conv4, for 1, 5, 10, 20, 40 and 100 inner steps. Each point runs in a fresh
process, so its peak is its own: the peak CUDA memory allocated (``torch.cuda``) on a GPU, the
growth of the process's peak resident memory (``ru_maxrss``) over the meta-iterations on a CPU.
Time is the median of ``repeats`` meta-iterations after one warm-up.

A point that runs out of memory or past ``--point-timeout`` is recorded as such and the larger
step counts of that method are skipped. Writes ``memory.csv`` and ``memory.png``.
"""

from __future__ import annotations

import csv
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["measure_point", "reproduce_memory", "DEFAULT_STEPS"]

DEFAULT_STEPS = (1, 5, 10, 20, 40, 100)
METHODS = {"maml": "MAML (Unrolled)", "imaml-gd": "iMAML-GD (Implicit, CG 5)"}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_point(method: str, steps: int, ways: int, shots: int, meta_batch: int, repeats: int, device: str,
                  data_root: str | None, vectorize: str = "auto") -> dict:
    """One method at one number of inner steps, in this process."""
    from ..fewshot.benchmarks import batch_to_tasks
    from ..fewshot.config import TrainConfig, resolve
    from ..fewshot.trainer import resolve_vectorize, setup
    from ..hypergrad import batched_hypergrad

    config = resolve(TrainConfig(benchmark="omniglot", method=method, ways=ways, shots=shots, inner_steps=steps,
                                 meta_batch=meta_batch, device=device, data_root=data_root, vectorize=vectorize))
    benchmark, model, m, dev = setup(config)
    sampler = benchmark.sampler("train", config.seed)
    vectorized = resolve_vectorize(config.vectorize, dev, benchmark)
    batches = [batch_to_tasks(sampler.sample(meta_batch), dev) for _ in range(repeats + 1)]
    params = dict(model.named_parameters())
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _peak_rss_mb()
    seconds = []
    for support, query in batches:
        t0 = time.perf_counter()
        result = batched_hypergrad(m.problem, params, support, query, backend=m.backend, vectorize=vectorized)
        if cuda:
            torch.cuda.synchronize(dev)
        seconds.append(time.perf_counter() - t0)
        del result
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if cuda else _peak_rss_mb() - base
    return {"method": method, "steps": steps, "ways": ways, "shots": shots, "meta_batch": meta_batch,
            "device": str(dev), "memory_kind": "peak CUDA memory allocated" if cuda else "peak RSS growth",
            "peak_memory_mb": peak, "seconds_per_iteration": statistics.median(seconds[1:]), "status": "ok",
            "vectorized": vectorized}


def reproduce_memory(out: str | Path, *, steps=DEFAULT_STEPS, methods=tuple(METHODS), ways: int = 20, shots: int = 5,
                     meta_batch: int = 1, repeats: int = 2, device: str = "auto", data_root: str | None = None,
                     point_timeout: float = 600.0, vectorize: str = "auto", progress: bool = True) -> list[dict]:
    """Every (method, steps) point in its own process; writes ``memory.csv`` and ``memory.png``."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    points = [(m, k) for m in methods for k in steps]
    failed = set()
    for method, k in tqdm(points, desc="memory points", disable=not progress):
        if method in failed:
            rows.append({"method": method, "steps": k, "status": "skipped (a smaller step count failed)"})
            continue
        args = json.dumps(dict(method=method, steps=k, ways=ways, shots=shots, meta_batch=meta_batch, repeats=repeats,
                               device=device, data_root=data_root, vectorize=vectorize))
        try:
            proc = subprocess.run([sys.executable, "-m", "bilevel.reproduce.memory", args], capture_output=True,
                                  text=True, timeout=point_timeout)
            if proc.returncode == 0:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                continue
            status = "out of memory" if "out of memory" in proc.stderr.lower() else f"failed: {proc.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            status = f"over the {point_timeout:.0f} s point timeout"
        rows.append({"method": method, "steps": k, "status": status})
        failed.add(method)
    fields = ["method", "steps", "ways", "shots", "meta_batch", "device", "memory_kind", "peak_memory_mb",
              "seconds_per_iteration", "status"]
    with open(out / "memory.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "memory.png")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for method, label in METHODS.items():
        pts = sorted((r for r in ok if r["method"] == method), key=lambda r: r["steps"])
        if pts:
            ax_mem.plot([r["steps"] for r in pts], [r["peak_memory_mb"] for r in pts], "o-", label=label)
            ax_time.plot([r["steps"] for r in pts], [r["seconds_per_iteration"] for r in pts], "o-", label=label)
    first = ok[0]
    ax_mem.set_ylabel(f"{first['memory_kind']} (MB)")
    ax_time.set_ylabel("seconds per meta-iteration")
    for ax in (ax_mem, ax_time):
        ax.set_xlabel("inner gradient steps")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Omniglot {first['ways']}-way {first['shots']}-shot, conv4, meta-batch {first['meta_batch']}, "
                 f"{first['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # one point, in a fresh process; prints its row as JSON
    print(json.dumps(measure_point(**json.loads(sys.argv[1]))))
