"""Sinusoid regression tasks (Finn et al., 2017): ``y = A sin(x - phi)``, one (A, phi) per task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..validation import check_int
from .episodes import EpisodeBatch

__all__ = ["SinusoidTasks", "SinusoidParams"]


class SinusoidParams(NamedTuple):
    """True task parameters of a sinusoid meta-batch: ``amplitude [B]`` and ``phase [B]``."""

    amplitude: Tensor
    phase: Tensor


def _check_range(call: str, name: str, value: Any, *, strict: bool) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{call}({name}={value!r}): expected a pair (low, high) of numbers") from None
    ok = math.isfinite(lo) and math.isfinite(hi) and (lo < hi if strict else lo <= hi)
    if not ok:
        rel = "<" if strict else "<="
        raise ValueError(f"{call}({name}={value!r}): expected finite low {rel} high, got low={lo}, high={hi}")
    return lo, hi


class SinusoidTasks:
    """Seeded sampler of sinusoid regression tasks.

    Each task draws ``A ~ U(amplitude)``, ``phi ~ U(phase)``, and ``shots + queries`` inputs
    ``x ~ U(x_range)``; targets are ``y = A * sin(x - phi)`` (as in Finn et al.'s MAML code),
    computed in float64 and returned in ``dtype``. Defaults follow MAML: A in [0.1, 5],
    phi in [0, pi], x in [-5, 5].

    ``sample(B)`` returns an ``EpisodeBatch`` with ``support_x``, ``support_y`` of shape
    ``[B, shots, 1]`` and ``query_x``, ``query_y`` of shape ``[B, queries, 1]``;
    ``sample(B, return_params=True)`` also returns the true ``SinusoidParams`` for evaluation,
    and ``SinusoidTasks.function(x, params)`` evaluates the true curves at any ``x``.

    Example:
        >>> tasks = SinusoidTasks(shots=10, queries=10, seed=0)
        >>> batch, params = tasks.sample(4, return_params=True)
        >>> tuple(batch.support_x.shape), tuple(params.amplitude.shape)
        ((4, 10, 1), (4,))
        >>> bool(torch.allclose(SinusoidTasks.function(batch.query_x, params), batch.query_y, atol=1e-6))
        True
    """

    def __init__(
        self,
        amplitude: Sequence[float] = (0.1, 5.0),
        phase: Sequence[float] = (0.0, math.pi),
        x_range: Sequence[float] = (-5.0, 5.0),
        *,
        shots: int = 10,
        queries: int = 10,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        call = "SinusoidTasks"
        self.amplitude = _check_range(call, "amplitude", amplitude, strict=False)
        self.phase = _check_range(call, "phase", phase, strict=False)
        self.x_range = _check_range(call, "x_range", x_range, strict=True)
        self.shots = check_int(call, "shots", shots, minimum=1, fix="Use --shots >= 1.")
        self.queries = check_int(call, "queries", queries, minimum=1, fix="Use --queries >= 1.")
        self.seed = check_int(call, "seed", seed, minimum=0, fix="Pass a non-negative integer seed.")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"{call}(dtype={dtype!r}): expected a floating torch.dtype")
        self.dtype = dtype
        self.num_sampled = 0  # tasks drawn so far
        self._generator = torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        return (
            f"SinusoidTasks(amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range}, "
            f"shots={self.shots}, queries={self.queries}, seed={self.seed})"
        )

    @staticmethod
    def function(x: Tensor, params: SinusoidParams) -> Tensor:
        """Return ``A * sin(x - phi)`` for ``x [B, M, 1]`` and per-task ``params`` (``[B]`` each)."""
        a = params.amplitude.to(x)[:, None, None]
        p = params.phase.to(x)[:, None, None]
        return a * torch.sin(x - p)

    def _uniform(self, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
        u = torch.rand(shape, generator=self._generator, dtype=torch.float64)
        return lo + (hi - lo) * u

    def sample(
        self, meta_batch: int, return_params: bool = False
    ) -> EpisodeBatch | tuple[EpisodeBatch, SinusoidParams]:
        """Draw ``meta_batch`` tasks; see the class docstring for shapes."""
        b = check_int(
            "SinusoidTasks.sample", "meta_batch", meta_batch, minimum=1, fix="Use --meta-batch >= 1."
        )
        amp = self._uniform((b,), *self.amplitude)
        phase = self._uniform((b,), *self.phase)
        x = self._uniform((b, self.shots + self.queries, 1), *self.x_range)
        y = amp[:, None, None] * torch.sin(x - phase[:, None, None])
        x, y = x.to(self.dtype), y.to(self.dtype)
        k = self.shots
        batch = EpisodeBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
        self.num_sampled += b
        if return_params:
            return batch, SinusoidParams(amp.to(self.dtype), phase.to(self.dtype))
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Return the position in the task stream (generator state, tasks drawn, configuration)."""
        return {
            "generator": self._generator.get_state(),
            "num_sampled": self.num_sampled,
            "config": self._config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by ``state_dict``; raise ``ValueError`` if the config differs."""
        if state.get("config") != self._config():
            raise ValueError(
                f"SinusoidTasks.load_state_dict: the saved state has config {state.get('config')!r} "
                f"but this sampler has {self._config()!r}; build it with the same arguments as the "
                "run that saved it"
            )
        self._generator.set_state(state["generator"])
        self.num_sampled = int(state["num_sampled"])

    def _config(self) -> dict[str, Any]:
        return {
            "amplitude": list(self.amplitude),
            "phase": list(self.phase),
            "x_range": list(self.x_range),
            "shots": self.shots,
            "queries": self.queries,
            "seed": self.seed,
        }
