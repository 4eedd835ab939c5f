"""Reference problems with exact answers, shared by the tests (float64 throughout)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bilevel import BilevelProblem

DTYPE = torch.float64


def ridge_data(seed: int = 0, n: int = 30, d: int = 5, n_val: int = 20):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DTYPE)
    y = torch.randn(n, generator=g, dtype=DTYPE)
    Xv = torch.randn(n_val, d, generator=g, dtype=DTYPE)
    yv = torch.randn(n_val, generator=g, dtype=DTYPE)
    theta = {"w": torch.randn(d, generator=g, dtype=DTYPE)}
    return (X, y), (Xv, yv), theta


def ridge_problem(lam: float, inner_solver=None, inner_init="theta") -> BilevelProblem:
    """Inner ``0.5||Xw - y||^2 + (lam/2)||w - theta||^2``, outer ``0.5||Xv w - yv||^2``."""

    def inner(phi, theta, batch):
        X, y = batch
        return 0.5 * ((X @ phi["w"] - y) ** 2).sum() + 0.5 * lam * ((phi["w"] - theta["w"]) ** 2).sum()

    def outer(phi, theta, batch):
        Xv, yv = batch
        return 0.5 * ((Xv @ phi["w"] - yv) ** 2).sum()

    return BilevelProblem(inner, outer, inner_solver, inner_init)


def ridge_exact(lam: float, inner_batch, outer_batch, theta):
    """``w* = (X^T X + lam I)^-1 (X^T y + lam theta)``, hypergrad ``lam (X^T X + lam I)^-1 grad L_out(w*)``."""
    X, y = inner_batch
    Xv, yv = outer_batch
    A = X.T @ X + lam * torch.eye(X.shape[1], dtype=DTYPE)
    w = torch.linalg.solve(A, X.T @ y + lam * theta["w"])
    g_w = Xv.T @ (Xv @ w - yv)
    loss = 0.5 * ((Xv @ w - yv) ** 2).sum()
    return w, lam * torch.linalg.solve(A, g_w), loss, g_w


def ridge_lipschitz(lam: float, inner_batch) -> float:
    X, _ = inner_batch
    return float(torch.linalg.eigvalsh(X.T @ X).max()) + lam


def logistic_data(seed: int = 1, n: int = 40, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DTYPE)
    w_true = torch.randn(d, generator=g, dtype=DTYPE)
    y = (X @ w_true + 0.5 * torch.randn(n, generator=g, dtype=DTYPE) > 0).to(DTYPE)
    Xv = torch.randn(n, d, generator=g, dtype=DTYPE)
    yv = (Xv @ w_true > 0).to(DTYPE)
    theta = {"log_l2": torch.randn(d, generator=g, dtype=DTYPE) * 0.3 - 1.0}
    return (X, y), (Xv, yv), theta


def logistic_problem(inner_solver, d: int = 4) -> BilevelProblem:
    """Logistic regression with a per-feature L2 weight ``exp(log_l2_j)`` (the outer parameters)."""

    def inner(phi, theta, batch):
        X, y = batch
        logits = X @ phi["w"]
        return F.binary_cross_entropy_with_logits(logits, y) + 0.5 * (theta["log_l2"].exp() * phi["w"] ** 2).sum()

    def outer(phi, theta, batch):
        Xv, yv = batch
        return F.binary_cross_entropy_with_logits(Xv @ phi["w"], yv)

    return BilevelProblem(inner, outer, inner_solver, inner_init={"w": torch.zeros(d, dtype=DTYPE)})


class TinyConvNet(nn.Module):
    """The few-shot net's shape in miniature: conv-BN-ReLU-pool twice, then linear."""

    def __init__(self, ways: int = 3, channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels, track_running_stats=False),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels, track_running_stats=False),
            nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(channels * 2 * 2, ways)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def conv_tasks(num_tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0):
    """Random 8x8 images: support/query batches stacked over tasks, and the net's parameters."""
    torch.manual_seed(seed)
    net = TinyConvNet(ways).to(DTYPE)
    g = torch.Generator().manual_seed(seed + 1)

    def split(k):
        x = torch.randn(num_tasks, ways * k, 1, 8, 8, generator=g, dtype=DTYPE)
        y = torch.arange(ways).repeat_interleave(k).expand(num_tasks, -1).clone()
        return x, y

    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    return net, theta, split(shots), split(queries)


def net_loss(net):
    def loss(params, batch):
        x, y = batch
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    return loss


def rel_err(a, b):
    """``||a - b|| / ||b||`` over all leaves of two parameter dicts (one number, so that leaves
    whose exact gradient is zero, like conv biases before BatchNorm, do not divide by zero)."""
    num = sum(((a[k] - b[k]) ** 2).sum() for k in b).sqrt()
    return float(num / sum((b[k] ** 2).sum() for k in b).sqrt())
