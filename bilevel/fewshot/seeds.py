"""Statistics over training seeds: what a comparison between methods may claim.

A run's test score is the mean over its test tasks; its 95% interval over those tasks says how
well that one trained model was measured, not how much another training run would differ.
Across training seeds the model itself changes (initialization, task stream, and on another
machine float rounding that 500 iterations amplify), so a ranking is only a result if it holds
over seeds. For ``n`` seeds with per-seed scores ``x_1..x_n`` this module reports

* the mean over seeds with its Student-t 95% interval ``mean +- t_{0.975, n-1} s / sqrt(n)``
  (``scipy.stats``);
* the paired difference to a reference method trained with the same seeds (same
  initialization seed and task streams): ``d_i = x_i - r_i``, its mean and t-interval
  (``scipy.stats.ttest_rel``), which is narrower than the two separate intervals whenever the
  seeds' effects are shared;
* the interquartile mean and its stratified-bootstrap 95% interval (``rliable``, Agarwal et al.,
  NeurIPS 2021), the field's convention for few-run comparisons, when ``rliable`` is installed
  (``pip install 'bilevel[stats]'``) and there are at least 4 seeds (with 3 it is the mean).

With one seed the intervals over seeds are undefined (``nan``): nothing is claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SeedStats", "over_seeds", "paired_difference", "iqm_interval", "rliable_available"]


@dataclass(frozen=True)
class SeedStats:
    """A mean over ``n`` seeds and its 95% interval ``[low, high]`` (``nan`` for one seed)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        """Whether the interval lies on one side of 0 (a paired difference that holds over seeds)."""
        return self.low > 0 or self.high < 0


def _check(values, what: str) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{what}: no seeds")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}: a seed's score is not finite ({values})")
    return values


def _no_spread(values: list[float]) -> bool:
    """Equal up to float rounding (``-0.3`` as ``0.7 - 1.0`` and as ``0.9 - 1.2``)."""
    return max(values) - min(values) <= 1e-12 * max(1.0, max(abs(v) for v in values))


def over_seeds(values) -> SeedStats:
    """Mean of the per-seed scores with its Student-t 95% interval (``scipy.stats.ttest_1samp``).

    >>> s = over_seeds([1.0, 2.0, 3.0])
    >>> round(s.mean, 6), round(s.low, 4), round(s.high, 4)
    (2.0, -0.4841, 4.4841)
    """
    values = _check(values, "over_seeds")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return SeedStats(mean, math.nan, math.nan, n)
    from scipy import stats

    if _no_spread(values):  # a zero-width interval (scipy returns nan or warns here)
        return SeedStats(mean, mean, mean, n)
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    return SeedStats(mean, float(ci.low), float(ci.high), n)


def paired_difference(values, reference) -> SeedStats:
    """Mean of ``values[i] - reference[i]`` over seeds with its paired t 95% interval
    (``scipy.stats.ttest_rel``); seed ``i`` of both must be the same training seed.

    >>> d = paired_difference([1.1, 2.1, 3.2], [1.0, 2.0, 3.0])
    >>> round(d.mean, 6), round(d.low, 4), round(d.high, 4), d.excludes_zero()
    (0.133333, -0.0101, 0.2768, False)
    """
    values, reference = _check(values, "paired_difference"), _check(reference, "paired_difference")
    if len(values) != len(reference):
        raise ValueError(f"paired_difference: {len(values)} seeds against {len(reference)} for the reference")
    diffs = [v - r for v, r in zip(values, reference)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return SeedStats(mean, math.nan, math.nan, n)
    if _no_spread(diffs):
        return SeedStats(mean, mean, mean, n)
    from scipy import stats

    ci = stats.ttest_rel(values, reference).confidence_interval(0.95)
    return SeedStats(mean, float(ci.low), float(ci.high), n)


def rliable_available() -> bool:
    try:
        import rliable  # noqa: F401
    except Exception:  # not installed, or a broken dependency (arch against pandas 3)
        return False
    return True


def iqm_interval(values, reps: int = 2000, seed: int = 0) -> SeedStats | None:
    """The interquartile mean over seeds and its stratified-bootstrap 95% interval by ``rliable``
    (``None`` when ``rliable`` is not installed, or for fewer than 4 seeds: rliable trims
    ``int(0.25 n)`` runs from each end, none below 4, so the IQM of 3 seeds is their mean).

    The score matrix is ``(seeds, 1)``: one benchmark, so the stratified bootstrap resamples the
    seeds; ``seed`` fixes the bootstrap's random state, so the table is reproducible.
    """
    values = _check(values, "iqm_interval")
    if len(values) < 4 or not rliable_available():
        return None
    import numpy as np
    from rliable import library as rly
    from rliable import metrics

    scores = {"x": np.asarray(values, dtype=float).reshape(-1, 1)}
    state = np.random.get_state()
    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    try:
        point, interval = rly.get_interval_estimates(scores, lambda x: np.array([metrics.aggregate_iqm(x)]),
                                                     reps=reps)
    finally:
        np.random.set_state(state)
    return SeedStats(float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0]), len(values))
