"""Outcomes of every backend on many random problems: right, warned, raised or silently wrong.

The problems, backends, references and tolerances are those of ``tests/test_fuzz.py`` (imported
from there, so the two never drift apart); the test draws a few problems per (kind, backend)
with hypothesis, this script a larger seeded sample of each kind (``--problems``, default 50),
every applicable backend on every problem, and counts for each (kind, backend):

* ``right``: within the case's tolerance of its reference;
* ``warned``: not within it, and a ``SolverWarning`` was emitted (``on_failure="warn"``);
  ``warned_wrong`` counts those whose answer was off by more than 1% (``WRONG``);
* ``raised``: ``SolverError`` or ``NonFiniteError``;
* ``silent_wrong``: off by more than 1% with no warning (the failure the issue forbids);
* ``silent_inaccurate``: above the tolerance but within 1%, with no warning;

and, in ``reasons``, the failure kinds the diagnostics named (``not_stationary``,
``negative_curvature``, ``diverged``, ``not_converged``), over all outcomes.

A problem kind whose draw yields no valid problem (no nondegenerate saddle found) is redrawn.
Writes ``results.json`` and ``results.log`` (the command on the first line) to ``--out``.

Run: OMP_NUM_THREADS=1 python benchmarks/fuzz_outcomes.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_fuzz as fuzz  # noqa: E402

OUT = REPO / "docs" / "results" / "fuzz-outcomes"
STATUSES = ("right", "warned", "raised", "silent_inaccurate", "silent_wrong")


def classify(out: fuzz.Outcome) -> str:
    if out.status == "silent":
        return "silent_wrong" if out.wrong else "silent_inaccurate"
    return out.status


def draw(kind: str, rng: random.Random, attempts: int = 20):
    for _ in range(attempts):
        spec = fuzz.sample_spec(kind, rng)
        fz = fuzz.BUILD[kind](*spec)
        if fz is not None:
            return fz
    raise RuntimeError(f"{kind}: no valid problem in {attempts} draws")


def cell(counts: dict) -> str:
    """``"50 right"``, ``"12 right, 38 warned (38 wrong)"``, ..."""
    parts = []
    for status in STATUSES:
        n = counts.get(status, 0)
        if not n:
            continue
        text = f"{n} {status.replace('_', '-')}"
        if status == "warned":
            text += f" ({counts.get('warned_wrong', 0)} wrong)"
        parts.append(text)
    return ", ".join(parts) or "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=50, help="random problems per kind (default 50)")
    parser.add_argument("--kinds", nargs="+", default=list(fuzz.PARAMS), choices=list(fuzz.PARAMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    threads = os.environ.get("OMP_NUM_THREADS")
    given = sys.argv[1:] if argv is None else argv
    command = ((f"OMP_NUM_THREADS={threads} " if threads else "")
               + shlex.join(["python", "benchmarks/fuzz_outcomes.py", *given]))
    cases = [c for c in fuzz.CASES if c.available()]
    lines: list[str] = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    log(f"$ {command}")
    log(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, float64; "
        f"TOL {fuzz.TOL:g} (exact claims), BUDGET_TOL {fuzz.BUDGET_TOL:g} (short inner budgets), "
        f"wrong: > {fuzz.WRONG:g}")
    log(f"# backends: {', '.join(c.id for c in cases)}; skipped (not installed): "
        f"{', '.join(c.id for c in fuzz.CASES if not c.available()) or 'none'}")
    start = time.perf_counter()
    table: dict = {}
    silent: list = []
    for k, kind in enumerate(args.kinds):
        rng = random.Random(args.seed * 1000 + k)
        counts = {c.id: {} for c in cases if fuzz.applies(kind, c)}
        t_kind = time.perf_counter()
        for i in range(args.problems):
            fz = draw(kind, rng)
            for case in cases:
                if not fuzz.applies(kind, case):
                    continue
                out = fuzz.run_case(fz, case)
                status = classify(out)
                c = counts[case.id]
                c[status] = c.get(status, 0) + 1
                if status == "warned" and out.wrong:
                    c["warned_wrong"] = c.get("warned_wrong", 0) + 1
                for reason in out.reasons:  # what the warnings named (a right answer may carry one too)
                    c.setdefault("reasons", {})[reason] = c.get("reasons", {}).get(reason, 0) + 1
                if status.startswith("silent"):
                    silent.append({"kind": kind, "spec": list(fz.spec), "backend": case.id, "err": out.err,
                                   "diagnostics": out.message})
                    log(f"  SILENT {kind}{fz.spec} {case.id}: err {out.err:.3e}; {out.message}")
        table[kind] = counts
        log(f"\n## {kind}: {args.problems} problems, {time.perf_counter() - t_kind:.1f} s")
        for case_id, c in counts.items():
            reasons = ", ".join(f"{k} {n}" for k, n in sorted(c.get("reasons", {}).items()))
            log(f"  {case_id:22s} {cell(c)}" + (f"   [reported: {reasons}]" if reasons else ""))
    log(f"\ntotal {time.perf_counter() - start:.1f} s")
    payload = {"command": command, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "problems_per_kind": args.problems, "seed": args.seed,
               "tolerances": {"TOL": fuzz.TOL, "BUDGET_TOL": fuzz.BUDGET_TOL, "WRONG": fuzz.WRONG,
                              "FD_H": fuzz.FD_H, "FD_FLOOR": fuzz.FD_FLOOR},
               "backends": [c.id for c in cases], "outcomes": table, "silent": silent,
               "cells": {kind: {b: cell(c) for b, c in counts.items()} for kind, counts in table.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "results.log").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
