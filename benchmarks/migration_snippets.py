"""Run the Python snippets of docs/migration.md in order and print how far each `bilevel` snippet
is from the `higher` / TorchOpt / torch.func snippet before it (the numbers the page quotes).

The snippets are read from the page itself; tests/test_examples.py::test_migration_page_snippets_agree
asserts tolerances on the same :func:`measure`. Needs higher and torchopt.

Run: python benchmarks/migration_snippets.py
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "migration.md"


def measure(page: Path = PAGE) -> dict:
    """Run the page's 11 snippets in order; the differences between each pair of snippets that
    compute the same thing (largest absolute difference unless said)."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if len(blocks) != 11:
        raise ValueError(f"{page} has {len(blocks)} Python snippets; this script knows the page's 11")
    ns = {"__name__": "migration"}

    def run(*indices):
        for i in indices:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)  # torchopt's functorch calls
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                exec(compile(blocks[i], f"{page}[{i}]", "exec"), ns)

    def model_grads():
        return {k: p.grad.clone() for k, p in ns["model"].named_parameters()}

    def max_diff(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    out = {}
    run(0)
    init = {k: v.clone() for k, v in ns["model"].state_dict().items()}
    run(1)  # higher.innerloop_ctx
    g_higher = model_grads()
    ns["model"].load_state_dict(init)
    run(2)  # Unrolled
    out["higher_vs_unrolled"] = max_diff(g_higher, ns["result"].grad)
    ns["model"].load_state_dict(init)
    run(3)  # torchopt.MetaSGD
    out["metasgd_vs_unrolled"] = max_diff(model_grads(), ns["result"].grad)
    run(4, 5)  # custom_root
    out["custom_root"] = float(ns["log_lam"].grad)
    run(6)  # Implicit(CG)
    out["implicit_cg"] = float(ns["result"].grad["log_lam"])
    stats = ns["result"].stats
    out.update(cg_converged=bool(stats["converged"]), cg_steps=int(stats["steps"]),
               cg_residual=float(stats["residual_norm"]), inner_grad_norm=float(stats["inner_grad_norm"]))
    run(7, 8)  # solve_cg
    res = ns["res"]
    out.update(solve_cg_diff=float((ns["x"]["w"] - res.solution["w"]).abs().max()),
               solve_cg_converged=bool(res.converged), solve_cg_steps=int(res.steps))
    ns["model"].load_state_dict(init)
    run(9, 10)  # torch.func by hand
    out["torch_func_vs_unrolled"] = max_diff(ns["meta_grad"], ns["result"].grad)
    out["loss_finite"] = bool(torch.isfinite(ns["result"].loss))
    return out


def main():
    m = measure()
    print(f"torch {torch.__version__}; snippets of {PAGE.name}")
    print(f"MAML, higher.innerloop_ctx vs Unrolled(): largest |difference| {m['higher_vs_unrolled']:.2e}")
    print(f"MAML, torchopt.MetaSGD vs Unrolled(): largest |difference| {m['metasgd_vs_unrolled']:.2e}")
    theirs, ours = m["custom_root"], m["implicit_cg"]
    print(f"ridge log_lam: custom_root {theirs:.6f}, Implicit(CG) {ours:.6f}, |difference| {abs(theirs - ours):.1e}"
          f" ({abs(theirs - ours) / abs(ours):.1e} relative)")
    print(f"  Implicit(CG) stats: converged {m['cg_converged']}, CG steps {m['cg_steps']}, "
          f"residual_norm {m['cg_residual']:.1e}, inner_grad_norm {m['inner_grad_norm']:.1e}")
    print(f"solve_cg: largest |difference| of the solutions {m['solve_cg_diff']:.1e}; "
          f"ours converged {m['solve_cg_converged']} in {m['solve_cg_steps']} steps")
    print(f"MAML, hand-written torch.func vs Unrolled(): largest |difference| {m['torch_func_vs_unrolled']:.1e}")


if __name__ == "__main__":
    main()
