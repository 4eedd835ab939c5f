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
