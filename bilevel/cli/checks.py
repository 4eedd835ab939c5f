"""The checks a command makes before any work: the device, the data, the flags that do not apply, a run folder.

Each raises ``ValueError`` with one line naming the flag and the fix; :func:`bilevel.cli.main`
prints it as ``bilevel <command>: error: ...``.
"""

from __future__ import annotations

from pathlib import Path

from ..fewshot.benchmarks import BENCHMARKS
from ..fewshot.config import TrainConfig, inapplicable, load_config, resolve

__all__ = ["check_device", "check_environment", "refuse_inapplicable", "run_dir_config"]


def check_device(device: str) -> None:
    """A CUDA device that torch cannot see is refused here, not after the data are loaded."""
    if device.startswith("cuda"):
        import torch

        index = int(device[5:]) if device.startswith("cuda:") else 0
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no CUDA device; use --device cpu (or auto)")
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s); "
                             "use --device cuda:0")


def check_environment(config: TrainConfig) -> None:
    """The device and the data of a resolved config, cheaply (nothing is loaded)."""
    check_device(config.device)
    BENCHMARKS[config.benchmark].check_data(config.data_root)


def refuse_inapplicable(config: TrainConfig) -> None:
    """The first flag set in an unresolved ``config`` that its run would not use, as an error."""
    problems = inapplicable(config)
    if problems:
        raise ValueError(next(iter(problems.values())))


def run_dir_config(flag: str, run_dir: Path) -> TrainConfig:
    """The resolved saved config of an existing run directory, or a one-line error naming ``flag``."""
    where = f"{flag} {run_dir}".lstrip()
    if not run_dir.is_dir():
        raise ValueError(f"{where}: no such run directory; train one with `bilevel train --out {run_dir}`")
    if not (run_dir / "checkpoint.pt").is_file():
        raise ValueError(f"{where}: no checkpoint.pt there; start a run with --out {run_dir}")
    try:
        return resolve(load_config(run_dir / "config.json"))
    except ValueError as exc:
        raise ValueError(f"{where}: its config.json: {exc}") from None
