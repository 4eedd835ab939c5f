"""The backend contract: one abstract method, one signature, nested batches without torch internals."""

from typing import NamedTuple

import pytest
import torch

from bilevel import AutogradAdapter, HypergradBackend, Hypergradient, batched_hypergrad
from bilevel.tree import nested_leaves, nested_map
from backends import CASES


def test_a_backend_must_implement_hypergrad():
    class Incomplete(HypergradBackend):
        pass

    with pytest.raises(TypeError, match="abstract method"):
        Incomplete()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_backend_in_the_table_has_the_one_signature(case):
    import inspect

    backend, _ = case.build(10.0, 1.0, 3)
    params = inspect.signature(type(backend).hypergrad).parameters
    assert list(params) == ["self", "problem", "theta", "inner_batch", "outer_batch", "inner_solution", "create_graph"]
    for name, default in (("inner_solution", None), ("create_graph", False)):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is default


def test_a_new_backend_is_one_class():
    """A user-defined backend works with batched_hypergrad with nothing registered anywhere."""

    class ZeroGradient(HypergradBackend):
        def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None):
            phi = problem.inner_solution("ZeroGradient", theta, inner_batch, inner_solution)
            loss = problem.outer_loss(phi, theta, outer_batch)
            return Hypergradient(loss, {k: torch.zeros_like(v) for k, v in theta.items()}, phi)

    from bilevel import BilevelProblem, GradientDescent
    problem = BilevelProblem(lambda phi, th, b: ((phi["w"] - th["w"] * b) ** 2).sum(),
                             lambda phi, th, b: (phi["w"] * b).sum(), GradientDescent(0.1, 3))
    theta = {"w": torch.ones(2)}
    batches = torch.arange(6.0).reshape(3, 2)
    for backend in (ZeroGradient(),):
        result = batched_hypergrad(problem, theta, batches, batches, backend=backend)
        assert result.grad["w"].shape == (2,) and result.stats["task_loss"].shape == (3,)
    assert not isinstance(ZeroGradient(), AutogradAdapter)  # so it runs under vmap


class Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


def test_nested_map_and_leaves_keep_container_types():
    tree = {"a": (torch.zeros(2), [torch.ones(3), None]), "b": Pair(torch.ones(1), torch.zeros(1))}
    assert [t.shape for t in nested_leaves(tree)] == [(2,), (3,), (1,), (1,)]
    doubled = nested_map(lambda t: t + 1, tree)
    assert isinstance(doubled["b"], Pair) and isinstance(doubled["a"][1], list) and doubled["a"][1][1] is None
    torch.testing.assert_close(doubled["a"][1][0], torch.full((3,), 2.0))
    stacked = nested_map(lambda *ts: torch.stack(ts), tree, tree)
    assert stacked["b"].x.shape == (2, 1)
