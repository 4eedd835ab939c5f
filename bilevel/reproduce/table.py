"""Table 2 of the iMAML paper: Omniglot few-shot test accuracy, ours beside the paper's.

For each setting (5w1s, 5w5s, 20w1s, 20w5s) and each row (maml, fomaml, reptile, imaml-gd,
imaml-hf, imaml-hf-gn: iMAML-HF with a Gauss-Newton meta-gradient, and imaml-gd-official: the
released code's protocol), one training run of
``--budget ITERATIONSxMETA_BATCH`` and one evaluation on 600 test tasks (95%
interval); with ``seeds > 1``, one run per seed in ``OUT/<setting>/<row>/seed-<s>`` and each cell
the mean over seeds with its 95% interval over seeds (:mod:`bilevel.fewshot.seeds`). Runs live in
``OUT/<setting>/<row>`` and resume: rerunning the command continues
unfinished runs and reuses finished ones, so a budget too large for one sitting is reached
over several. ``--jobs N`` trains N runs at once (for a GPU or a many-core CPU).

Writes ``table.md`` (ours +- CI, then the paper's) and ``table.json`` (every row with its
budget, configuration, seconds per iteration and device).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fewshot.compare import run_configs, run_many, seed_runs
from ..fewshot.seeds import over_seeds
from .paper import SETTINGS, TABLE2

__all__ = ["ROWS", "parse_budget", "reproduce_table", "format_table"]

# Row name -> the TrainConfig settings that make it.
ROWS = {
    "maml": dict(method="maml"),
    "fomaml": dict(method="fomaml"),
    "reptile": dict(method="reptile"),
    "imaml-gd": dict(method="imaml-gd"),
    "imaml-hf": dict(method="imaml-hf"),
    # Not in the paper: iMAML-HF with the Gauss-Newton matrix in its meta-gradient's CG, the
    # variant that learns here (docs/reproduction.md, "Curvature").
    "imaml-hf-gn": dict(method="imaml-hf", curvature="gauss-newton"),
    "imaml-gd-official": dict(method="imaml-gd", protocol="official"),
}
# The rows that --lam / --lam-scale (``imaml``) set: the iMAML methods under the paper's protocol.
_PAPER_IMAML = tuple(r for r, s in ROWS.items() if s["method"].startswith("imaml") and "protocol" not in s)
PAPER_BUDGET = "20000x32"
QUICK_BUDGET = "2x2"


def parse_budget(text: str) -> tuple[int, int]:
    """``"ITERATIONSxMETA_BATCH"`` -> ``(iterations, meta_batch)``."""
    try:
        iterations, meta_batch = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--budget must look like ITERATIONSxMETA_BATCH (e.g. 1000x8), got {text!r}") from None
    if iterations < 1 or meta_batch < 1:
        raise ValueError(f"--budget: iterations and meta-batch must be positive, got {text!r}")
    return iterations, meta_batch


def reproduce_table(out: str | Path, *, settings: list[str], rows: list[str], budget: str = PAPER_BUDGET,
                    eval_tasks: int = 600, imaml: dict | None = None, common: dict | None = None,
                    jobs: int = 1, quick: bool = False, seeds: int = 1) -> list[dict]:
    """Train and evaluate every (setting, row); write ``table.md`` and ``table.json``.

    Args:
        settings: keys of :data:`~bilevel.reproduce.paper.SETTINGS`.
        rows: keys of :data:`ROWS`.
        budget: ``"ITERATIONSxMETA_BATCH"`` for every run (the same for all: a fair table).
        imaml: extra settings (``TrainConfig`` fields) for the paper-protocol iMAML rows (e.g.
            the lambda chosen on validation: ``{"lam": 0.4}``).
        common: extra settings for every run (``data_root``, ``device``, ...); those a row does
            not use are dropped for it.
        quick: a smoke run (2 iterations of 2 tasks, 20 test tasks, 10 validation tasks).
        seeds: training seeds per cell (``seed, seed + 1, ...`` from ``common``'s seed, default 0).
    """
    bad = [s for s in settings if s not in SETTINGS] + [r for r in rows if r not in ROWS]
    if bad or not settings or not rows:
        raise ValueError(f"reproduce table: unknown {bad or 'empty list'}; settings are {list(SETTINGS)}, "
                         f"rows are {list(ROWS)}")
    if quick:
        budget, eval_tasks = QUICK_BUDGET, 20
    iterations, meta_batch = parse_budget(budget)
    out = Path(out)
    own = {}
    for setting in settings:
        ways, shots = SETTINGS[setting]
        for row in rows:
            own[f"{setting}/{row}"] = dict(
                **ROWS[row], benchmark="omniglot", ways=ways, shots=shots, iterations=iterations,
                meta_batch=meta_batch, val_every=max(1, iterations // 10), **(dict(val_tasks=10) if quick else {}),
                **((imaml or {}) if row in _PAPER_IMAML else {}))
    configs = run_configs(own, common or {})
    results = run_many(seed_runs(configs, out, seeds), eval_tasks=eval_tasks, resume=True, jobs=jobs, quiet=True)
    for r in results:
        r["setting"], r["row"] = r["method"].split("/")
        r["config"] = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        r["paper"] = TABLE2.get(r["row"], {}).get(r["setting"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps({"budget": budget, "eval_tasks": eval_tasks, "seeds": seeds,
                                                "rows": results}, indent=2) + "\n")
    (out / "table.md").write_text(format_table(results, budget) + "\n")
    return results


def format_table(results: list[dict], budget: str) -> str:
    """Markdown: one line per row, one column per setting, ``ours +- CI (paper +- CI)``; over
    several seeds ``mean [95% CI over seeds] (n seeds)``."""
    settings = list(dict.fromkeys(r["setting"] for r in results))
    rows = list(dict.fromkeys(r["row"] for r in results))
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        cells.setdefault((r["row"], r["setting"]), []).append(r)
    several = any(len(v) > 1 for v in cells.values())
    scope = "95% CI over training seeds" if several else "95% CI over the test tasks"
    lines = [f"Omniglot test accuracy (%), {scope}; ours at budget {budget} "
             "(iterations x meta-batch), the paper's in parentheses.", "",
             "| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for row in rows:
        texts = []
        for s in settings:
            runs = cells.get((row, s))
            if not runs:
                texts.append("")
                continue
            if len(runs) > 1:
                stats = over_seeds([r["mean"] for r in runs])
                text = f"{100 * stats.mean:.2f} [{100 * stats.low:.2f}, {100 * stats.high:.2f}] ({len(runs)} seeds)"
            else:
                text = f"{100 * runs[0]['mean']:.2f} +- {100 * runs[0]['ci95']:.2f}"
            if runs[0]["paper"]:
                text += f" ({runs[0]['paper'][0]} +- {runs[0]['paper'][1]})"
            texts.append(text)
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines)
