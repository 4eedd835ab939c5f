"""Run the Python snippets of docs/migration.md in order and print how far each `bilevel` snippet
is from the `higher` / TorchOpt / torch.func snippet before it (the numbers the page quotes).

The snippets are read from the page itself, as tests/test_examples.py::test_migration_page_snippets_agree
does (which asserts tolerances; this script prints the values). Needs higher and torchopt.

Run: python benchmarks/migration_snippets.py
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "migration.md"


def main():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 11, len(blocks)
    ns = {"__name__": "migration"}

    def run(i):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # torchopt's functorch calls
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            exec(compile(blocks[i], f"{PAGE}[{i}]", "exec"), ns)

    def model_grads():
        return {k: p.grad.clone() for k, p in ns["model"].named_parameters()}

    def max_diff(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    print(f"torch {torch.__version__}; snippets of {PAGE.name}")
    run(0)
    init = {k: v.clone() for k, v in ns["model"].state_dict().items()}

    run(1)  # higher.innerloop_ctx
    g_higher = model_grads()
    ns["model"].load_state_dict(init)
    run(2)  # Unrolled
    print(f"MAML, higher.innerloop_ctx vs Unrolled(): largest |difference| {max_diff(g_higher, ns['result'].grad):.2e}")

    ns["model"].load_state_dict(init)
    run(3)  # torchopt.MetaSGD
    print(f"MAML, torchopt.MetaSGD vs Unrolled(): largest |difference| {max_diff(model_grads(), ns['result'].grad):.2e}")

    run(4), run(5)  # custom_root
    theirs = float(ns["log_lam"].grad)
    run(6)  # Implicit(CG)
    ours = float(ns["result"].grad["log_lam"])
    stats = ns["result"].stats
    print(f"ridge log_lam: custom_root {theirs:.6f}, Implicit(CG) {ours:.6f}, |difference| {abs(theirs - ours):.1e}"
          f" ({abs(theirs - ours) / abs(ours):.1e} relative)")
    print(f"  Implicit(CG) stats: converged {bool(stats['converged'])}, CG steps {int(stats['steps'])}, "
          f"residual_norm {float(stats['residual_norm']):.1e}, inner_grad_norm {float(stats['inner_grad_norm']):.1e}")

    run(7), run(8)  # solve_cg
    res = ns["res"]
    print(f"solve_cg: largest |difference| of the solutions {float((ns['x']['w'] - res.solution['w']).abs().max()):.1e}; "
          f"ours converged {bool(res.converged)} in {int(res.steps)} steps")

    ns["model"].load_state_dict(init)
    run(9), run(10)  # torch.func by hand
    print(f"MAML, hand-written torch.func vs Unrolled(): largest |difference| {max_diff(ns['meta_grad'], ns['result'].grad):.1e}")


if __name__ == "__main__":
    main()
