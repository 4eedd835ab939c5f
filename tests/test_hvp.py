"""Hessian-vector products against the dense Hessian, in both modes."""

import pytest
import torch

from bilevel import hvp, make_hvp

DTYPE = torch.float64


def f(p):
    return (torch.sin(p["a"]) ** 2).sum() * p["b"].exp().sum() + (p["a"] @ p["M"] @ p["a"])


@pytest.mark.parametrize("mode", ["forward-over-reverse", "reverse-over-reverse"])
def test_hvp_matches_dense_hessian(mode):
    g = torch.Generator().manual_seed(0)
    x = {"a": torch.randn(3, generator=g, dtype=DTYPE), "b": torch.randn(2, generator=g, dtype=DTYPE),
         "M": torch.randn(3, 3, generator=g, dtype=DTYPE)}
    v = {k: torch.randn(t.shape, generator=g, dtype=DTYPE) for k, t in x.items()}
    keys = list(x)
    sizes = [x[k].numel() for k in keys]

    def flat_f(z):
        parts = torch.split(z, sizes)
        return f({k: p.reshape(x[k].shape) for k, p in zip(keys, parts)})

    z = torch.cat([x[k].reshape(-1) for k in keys])
    H = torch.autograd.functional.hessian(flat_f, z)
    expected = H @ torch.cat([v[k].reshape(-1) for k in keys])
    out = hvp(f, x, v, mode=mode)
    torch.testing.assert_close(torch.cat([out[k].reshape(-1) for k in keys]), expected, rtol=1e-12, atol=1e-12)
    matvec = make_hvp(f, x, mode)
    torch.testing.assert_close(matvec(v)["a"], out["a"], rtol=0, atol=0)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown hvp mode 'fwd'"):
        hvp(f, {"a": torch.zeros(3)}, {"a": torch.zeros(3)}, mode="fwd")


def test_missing_forward_mode_rule_names_the_fallback():
    """F.mse_loss's backward has no forward-mode rule on torch 2.13; the error says what to do,
    and reverse-over-reverse works."""
    import torch.nn.functional as F

    x, y = torch.randn(6, 2, dtype=DTYPE), torch.randn(6, dtype=DTYPE)
    f_mse = lambda p: F.mse_loss(x @ p["w"], y)
    p = {"w": torch.randn(2, dtype=DTYPE)}
    expected = 2 * x.T @ x @ p["w"] / 6
    try:
        out = hvp(f_mse, p, p)
    except RuntimeError as exc:
        assert "hvp_mode='reverse-over-reverse'" in str(exc)
    else:  # a torch that has the rule
        torch.testing.assert_close(out["w"], expected)
    torch.testing.assert_close(hvp(f_mse, p, p, mode="reverse-over-reverse")["w"], expected)


def test_auto_mode_is_reverse_over_reverse_on_a_cpu():
    from bilevel.hvp import resolve_hvp_mode

    x = {"w": torch.ones(2)}
    assert resolve_hvp_mode("auto", x) == "reverse-over-reverse"
    assert resolve_hvp_mode("forward-over-reverse", x) == "forward-over-reverse"
    f = lambda p: (p["w"] ** 3).sum()
    torch.testing.assert_close(hvp(f, x, {"w": torch.ones(2)})["w"], torch.full((2,), 6.0))
