"""``bilevel train``: meta-train one method, or resume a run exactly where it stopped."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..distributed import World
from ..fewshot.compare import describe_training
from ..fewshot.config import TrainConfig, resolve
from ..validation import check_output_dir
from .arguments import EXAMPLES, add_threads, add_training_flags, given_settings
from .checks import check_environment, refuse_inapplicable, run_dir_config

__all__ = ["PARSER", "LOCATION_FIELDS", "add_arguments", "run"]

# Settings that say where the data and the computation are, not what the run is: a resume may
# change them (the data moved; a run saved with --device auto continues on the CPU).
LOCATION_FIELDS = ("data_root", "device")

PARSER = dict(epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
              description="Meta-train one method; writes config.json, metrics.jsonl, checkpoint.pt and "
              "summary.json to --out.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_flags(p)
    p.add_argument("--out", help="run directory (default: runs/<benchmark>-<method>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped "
                   "(its saved config is used: other training flags must agree with it; --iterations may "
                   "extend it; --data-root and --device, which only say where things are, may change)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoint, "
                   "log, summary and evaluations are deleted); without it such a folder is refused")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from ..fewshot.trainer import train

    if args.resume:
        config = resumed_config(args)
        out = args.resume
    else:
        asked = TrainConfig(**given_settings(args))
        config = resolve(asked)
        refuse_inapplicable(asked)
        out = args.out or f"runs/{config.benchmark}-{config.method}"
        check_output_dir(None, "--out", out)
    check_environment(config)
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume continues the run in its folder and --overwrite replaces it: give one")
        summary = train(None, out, resume=True, iterations=args.iterations, progress=not args.quiet,
                        data_root=args.data_root, device=args.device)
    else:
        summary = train(config, out, progress=not args.quiet, overwrite=args.overwrite)
    if World.launched().is_main:  # under torchrun, rank 0 prints the result
        print(describe_training(summary, out))
    return 0


def resumed_config(args: argparse.Namespace) -> TrainConfig:
    """``--resume``: the saved config; given flags must agree with it, except ``--iterations``
    (a new total) and the settings that only say where things are (:data:`LOCATION_FIELDS`)."""
    run_dir = Path(args.resume)
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise ValueError(f"--out {args.out} contradicts --resume {run_dir}: a resumed run stays in its folder; "
                         "drop --out")
    saved = run_dir_config("--resume", run_dir)
    given = given_settings(args)
    iterations = given.pop("iterations", None)
    located = {k: given.pop(k) for k in LOCATION_FIELDS if k in given}
    differ = [f"--{k.replace('_', '-')} {v} (the run has {getattr(saved, k)})" for k, v in given.items()
              if getattr(saved, k) != v]
    if differ:
        raise ValueError(f"--resume {run_dir}: {', '.join(differ)}: a resumed run keeps its saved settings; drop "
                         "these flags, or start a new run with --out")
    check_output_dir(None, "--resume", run_dir)
    return resolve(dataclasses.replace(saved, iterations=iterations or saved.iterations, **located))
