"""Speed and memory of our meta-gradients against the peers', on the same tasks (``bilevel bench``).

Implementations, each computing the mean meta-gradient of a meta-batch of Omniglot-shaped
N-way K-shot tasks on the same conv4 net:

* MAML (``S`` inner SGD steps, second order): ours (``Unrolled`` through
  ``batched_hypergrad``), ``higher`` (``innerloop_ctx``, one task at a time, as its docs do),
  ``learn2learn`` (``l2l.algorithms.MAML``, when it is installed).
* iMAML (``S`` inner steps on the proximal problem, ``K`` CG steps): ours (``Implicit(CG)``
  through ``batched_hypergrad``), TorchOpt (``torchopt.diff.implicit.custom_root`` with
  ``torchopt.linear_solve.solve_cg``, one task at a time).

Before any timing, every implementation's meta-gradient is compared with ours in float64 on
the same tasks: a fast wrong answer does not count. Timings alternate between the
implementations (round-robin, ``repeats`` rounds after a warm-up), and the median seconds
per meta-iteration is reported with the peak CUDA memory (on a GPU) and the ratio
``peer time / our time`` (above 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .devices import resolve_device
from .hypergrad import batched_hypergrad
from .solvers.inner import GradientDescent
from .solvers.linear import CG
from .meta import imaml_problem, maml_problem, model_loss
from .adapters import Implicit, Unrolled

__all__ = ["BenchConfig", "run_bench", "main"]

CHECK_RTOL = 1e-8  # float64 agreement required before timing


@dataclass
class BenchConfig:
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 32
    inner_steps: list[int] = field(default_factory=lambda: [1, 5, 16])
    cg_steps: int = 5
    inner_lr: float = 0.4
    lam: float = 2.0
    net: str = "maxpool"
    channels: int = 64
    repeats: int = 5
    device: str = "auto"
    threads: int | None = None
    seed: int = 0


def _tasks(c: BenchConfig, device, dtype):
    g = torch.Generator().manual_seed(c.seed)

    def split(k):
        x = torch.randn(c.meta_batch, c.ways * k, 1, 28, 28, generator=g).to(device, dtype)
        y = torch.arange(c.ways).repeat_interleave(k).expand(c.meta_batch, -1).contiguous().to(device)
        return x, y

    return split(c.shots), split(c.queries)


def _net(c: BenchConfig, device, dtype) -> nn.Module:
    from .fewshot.models import Conv4

    torch.manual_seed(c.seed)
    return Conv4(c.ways, channels=c.channels, net=c.net).to(device, dtype)


# --- ours ----------------------------------------------------------------------------------


def ours_maml(net, c, steps, support, query, vectorize):
    problem = maml_problem(model_loss(net), GradientDescent(c.inner_lr, steps))
    theta = dict(net.named_parameters())
    return batched_hypergrad(problem, theta, support, query, backend=Unrolled(), vectorize=vectorize).grad


def ours_imaml(net, c, steps, support, query, vectorize):
    problem = imaml_problem(model_loss(net), c.lam, GradientDescent(c.inner_lr, steps))
    # iMAML as the trainer runs it: a deliberate K-step CG budget, stationarity not judged per
    # step (the peers compute no diagnostics either); hvp_mode auto.
    backend = Implicit(CG(maxiter=c.cg_steps, tol=0.0, negative_curvature="continue", truncated=True),
                       stationarity_rtol=None)
    theta = dict(net.named_parameters())
    return batched_hypergrad(problem, theta, support, query, backend=backend, vectorize=vectorize).grad


# --- peers, written as their documentation does ------------------------------------------------


def _mean_grads(net, per_task: Callable[[int], None], tasks: int):
    for p in net.parameters():
        p.grad = None
    for i in range(tasks):
        per_task(i)
    return {k: p.grad / tasks for k, p in net.named_parameters()}


def higher_maml(net, c, steps, support, query, vectorize):
    import higher

    opt = torch.optim.SGD(net.parameters(), lr=c.inner_lr)

    def task(i):
        with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fnet(support[0][i]), support[1][i]))
            F.cross_entropy(fnet(query[0][i]), query[1][i]).backward()

    return _mean_grads(net, task, support[0].shape[0])


def l2l_maml(net, c, steps, support, query, vectorize):
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(net, lr=c.inner_lr, first_order=False)

    def task(i):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support[0][i]), support[1][i]))
        F.cross_entropy(learner(query[0][i]), query[1][i]).backward()

    grads = _mean_grads(maml, task, support[0].shape[0])
    return {k.removeprefix("module."): g for k, g in grads.items()}


def torchopt_imaml(net, c, steps, support, query, vectorize):
    import torchopt

    names = [k for k, _ in net.named_parameters()]
    loss_fn = model_loss(net)

    def task(i):
        xs, ys = support[0][i], support[1][i]
        theta = tuple(p for p in net.parameters())

        def inner(phi, th):
            phi_d = dict(zip(names, phi))
            return loss_fn(phi_d, (xs, ys)) + 0.5 * c.lam * sum(((a - b) ** 2).sum() for a, b in zip(phi, th))

        optimality = torch.func.grad(inner, argnums=0)

        @torchopt.diff.implicit.custom_root(optimality, argnums=1,
                                            solve=torchopt.linear_solve.solve_cg(maxiter=c.cg_steps, rtol=0.0, atol=0.0))
        def solve(phi0, th):
            phi = tuple(t.detach() for t in th)
            for _ in range(steps):  # GD on the proximal problem, no graph
                g = optimality(phi, tuple(t.detach() for t in th))
                phi = tuple(p - c.inner_lr * gp for p, gp in zip(phi, g))
            return phi

        phi = solve(tuple(t.detach().clone() for t in theta), theta)
        loss_fn(dict(zip(names, phi)), (query[0][i], query[1][i])).backward()

    return _mean_grads(net, task, support[0].shape[0])


IMPLEMENTATIONS = {
    "maml": {"ours": ours_maml, "higher": higher_maml, "learn2learn": l2l_maml},
    "imaml": {"ours": ours_imaml, "torchopt": torchopt_imaml},
}
_LIBRARY = {"higher": "higher", "learn2learn": "learn2learn", "torchopt": "torchopt"}


def _available(name: str) -> str | None:
    """``None`` if the implementation can run, else why not."""
    if name == "ours":
        return None
    import importlib

    try:
        importlib.import_module(_LIBRARY[name])
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip with a note"
        return f"{_LIBRARY[name]} is not importable ({type(exc).__name__}: {exc}); pip install {_LIBRARY[name]}"
    return None


def _rel_err(a, b) -> float:
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in b) ** 0.5
    return num / max(sum(float((b[k] ** 2).sum()) for k in b) ** 0.5, 1e-300)


def run_bench(c: BenchConfig, progress: Callable[[str], None] = print) -> dict:
    """Check, then time, every available implementation; returns the JSON-able report."""
    device = resolve_device(c.device)
    if c.threads:
        torch.set_num_threads(c.threads)
    vectorize = device.type == "cuda"  # on a CPU a loop over tasks is faster than vmap
    report = {"config": asdict(c), "device": str(device), "machine": _machine(device),
              "torch": torch.__version__, "vectorize": vectorize, "threads": torch.get_num_threads(),
              "skipped": {}, "checks": [], "results": []}
    for algo, impls in IMPLEMENTATIONS.items():
        runnable = {}
        for name, fn in impls.items():
            why = _available(name)
            if why:
                report["skipped"][f"{algo}/{name}"] = why
                progress(f"skip {algo}/{name}: {why}")
            else:
                runnable[name] = fn
        # correctness first: float64, the first two tasks, the smallest step count
        check_c = BenchConfig(**{**asdict(c), "meta_batch": min(2, c.meta_batch)})
        net64 = _net(check_c, device, torch.float64)
        sup64, qry64 = _tasks(check_c, device, torch.float64)
        steps0 = min(c.inner_steps)
        reference = runnable["ours"](net64, check_c, steps0, sup64, qry64, vectorize)
        for name, fn in list(runnable.items()):
            if name == "ours":
                continue
            err = _rel_err(fn(net64, check_c, steps0, sup64, qry64, vectorize), reference)
            ok = err <= CHECK_RTOL
            report["checks"].append({"algorithm": algo, "peer": name, "rel_err": err, "ok": ok})
            progress(f"check {algo}/{name}: relative difference to ours {err:.1e} ({'ok' if ok else 'MISMATCH'})")
            if not ok:
                del runnable[name]
        net = _net(c, device, torch.float32)
        support, query = _tasks(c, device, torch.float32)
        for steps in c.inner_steps:
            times = {name: [] for name in runnable}
            peaks = {name: 0.0 for name in runnable}
            for round_ in range(c.repeats + 1):  # round 0 warms up
                for name, fn in runnable.items():
                    seconds, peak = _timed(lambda: fn(net, c, steps, support, query, vectorize), device)
                    if round_:
                        times[name].append(seconds)
                        peaks[name] = max(peaks[name], peak)
            ours_t = statistics.median(times["ours"])
            for name in runnable:
                t = statistics.median(times[name])
                row = {"algorithm": algo, "implementation": name, "inner_steps": steps, "median_s": t,
                       "peak_mb": peaks[name] if device.type == "cuda" else None,
                       "peer_time_over_ours": t / ours_t}
                report["results"].append(row)
                progress(f"{algo:5s} {name:11s} S={steps:3d}: {t:.4f} s/it"
                         + (f", peak {peaks[name]:.0f} MB" if device.type == "cuda" else "")
                         + ("" if name == "ours" else f", {t / ours_t:.2f}x our time"))
    return report


def _timed(fn, device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return seconds, peak


def _machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def markdown(report: dict) -> str:
    lines = [f"device: {report['machine']} (torch {report['torch']}, vmap over tasks: {report['vectorize']})", "",
             "| algorithm | implementation | inner steps | median s / meta-iteration | peak MB | peer time / ours |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        peak = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['algorithm']} | {r['implementation']} | {r['inner_steps']} | {r['median_s']:.4f} | {peak} | "
                     f"{r['peer_time_over_ours']:.2f} |")
    for key, why in report["skipped"].items():
        lines.append(f"\nskipped {key}: {why}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bilevel bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CPU smoke run of a minute or two")
    parser.add_argument("--meta-batch", type=int, help="tasks per meta-iteration (default 32; quick 4)")
    parser.add_argument("--inner-steps", help="comma-separated inner step counts (default 1,5,16; quick 1,5)")
    parser.add_argument("--queries", type=int, help="query examples per class (default 15; quick 5)")
    parser.add_argument("--repeats", type=int, help="timed rounds after one warm-up (default 5; quick 3)")
    parser.add_argument("--net", choices=["maxpool", "strided"], default="maxpool")
    parser.add_argument("--channels", type=int, default=64, help="conv filters (default 64, the paper's net)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", help="write the JSON report (and a .md table beside it) here")
    args = parser.parse_args(argv)
    c = BenchConfig(net=args.net, channels=args.channels, device=args.device, threads=args.threads)
    if args.quick:
        c.meta_batch, c.inner_steps, c.queries, c.repeats = 4, [1, 5], 5, 3
    if args.meta_batch:
        c.meta_batch = args.meta_batch
    if args.inner_steps:
        c.inner_steps = [int(s) for s in args.inner_steps.split(",")]
    if args.queries:
        c.queries = args.queries
    if args.repeats:
        c.repeats = args.repeats
    report = run_bench(c)
    table = markdown(report)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(table)
    return 1 if any(not ch["ok"] for ch in report["checks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
