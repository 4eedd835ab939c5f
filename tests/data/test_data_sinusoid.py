"""SinusoidTasks."""

from __future__ import annotations

import math

import pytest
import torch

from bilevel.data import EpisodeBatch, SinusoidTasks


def test_shapes_ranges_and_targets():
    tasks = SinusoidTasks(shots=5, queries=7, seed=0)
    batch, params = tasks.sample(256, return_params=True)
    assert isinstance(batch, EpisodeBatch)
    assert [tuple(t.shape) for t in batch] == [(256, 5, 1), (256, 5, 1), (256, 7, 1), (256, 7, 1)]
    assert all(t.dtype == torch.float32 for t in batch)
    assert 0.1 <= float(params.amplitude.min()) and float(params.amplitude.max()) <= 5.0
    assert 0.0 <= float(params.phase.min()) and float(params.phase.max()) <= math.pi
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert -5.0 <= float(x.min()) and float(x.max()) <= 5.0
    assert float(x.min()) < -4.5 and float(x.max()) > 4.5  # the whole range is used
    a, p = params.amplitude[:, None, None], params.phase[:, None, None]
    torch.testing.assert_close(batch.support_y, a * torch.sin(batch.support_x - p))
    torch.testing.assert_close(SinusoidTasks.function(batch.query_x, params), batch.query_y)


def test_custom_ranges_and_dtype():
    tasks = SinusoidTasks(
        amplitude=(1.0, 1.0),
        phase=(0.5, 0.5),
        x_range=(0.0, 1.0),
        shots=3,
        queries=2,
        seed=1,
        dtype=torch.float64,
    )
    batch, params = tasks.sample(4, return_params=True)
    assert batch.support_x.dtype == torch.float64
    assert torch.all(params.amplitude == 1.0) and torch.all(params.phase == 0.5)
    torch.testing.assert_close(batch.query_y, torch.sin(batch.query_x - 0.5))


def test_determinism_and_state_dict():
    a, b = SinusoidTasks(seed=3), SinusoidTasks(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.sample(4), b.sample(4)))
    assert not torch.equal(a.sample(4).support_x, SinusoidTasks(seed=4).sample(4).support_x)
    state = a.state_dict()
    want = a.sample(5)
    resumed = SinusoidTasks(seed=3)
    resumed.load_state_dict(state)
    assert resumed.num_sampled == 8
    assert all(torch.equal(x, y) for x, y in zip(resumed.sample(5), want))
    with pytest.raises(ValueError, match="SinusoidTasks.load_state_dict"):
        SinusoidTasks(seed=3, shots=2).load_state_dict(state)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(shots=0), ValueError, r"SinusoidTasks: shots must be >= 1, got 0"),
        (dict(queries=-1), ValueError, r"queries must be >= 1, got -1"),
        (
            dict(amplitude=(5.0, 0.1)),
            ValueError,
            r"SinusoidTasks\(amplitude=\(5.0, 0.1\)\): expected finite low <= high",
        ),
        (dict(x_range=(1.0, 1.0)), ValueError, r"low < high"),
        (dict(phase=3.0), TypeError, r"expected a pair"),
        (dict(dtype=torch.int64), TypeError, r"floating"),
    ],
)
def test_argument_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        SinusoidTasks(**kw)
