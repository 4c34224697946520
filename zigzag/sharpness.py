"""Sharpness: the top eigenvalue of the training-loss Hessian (Cohen et al. 2021, "edge of stability").

The loss is the one gradient descent follows (DESIGN.md, "Definitions"): over n training examples,
split into micro-batches B_1..B_m in order,

    L(theta) = (1/n) sum_j sum_{i in B_j} CE(f(x_i; theta), y_i)        (train mode)

so BatchNorm normalises each micro-batch by its own statistics ("ghost batches") and the Hessian is
H = (1/n) sum_j d^2/dtheta^2 [sum_{i in B_j} CE_i]. For a vector v, each micro-batch contributes
d/dtheta <g_j(theta), v> with g_j the gradient of its summed loss (double backward), so H v
never forms H. theta is the flattened trainable parameters in ``model.parameters()`` order, the
order of every other flat gradient in zigzag.

The sharpness lambda_max(H) comes from Lanczos (ARPACK's implicitly restarted Lanczos through
``scipy.sparse.linalg.eigsh``) on the operator v -> H v, with which="LA": the largest *algebraic*
eigenvalue, the one that matters for stability. On a quadratic, gradient descent with step size eta
diverges along the top eigenvector once lambda_max > 2/eta. A negative eigenvalue of larger
magnitude (what which="LM" could return) is not the sharpness.

Cost: one H v is one double-backward pass over the training set (on a 2-core CPU about 3 gradient
passes for a CNN without BatchNorm, 5-7 with it); ``top_eigenpair`` uses about ``ncv`` + 1 of them
when one Lanczos cycle converges (21 with eigsh's default ``ncv`` of 20), more with restarts.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn


class Eigenpair(NamedTuple):
    """The top eigenpair of a Hessian and what it cost.

    ``eigenvalue``: lambda_max (float). ``eigenvector``: unit vector, flattened parameter order, on
    the model's device in the parameters' dtype (its sign is arbitrary). ``n_hvp``: Hessian-vector
    products used. ``converged``: False when ARPACK stopped at ``max_iter`` restarts without meeting
    ``tol``; the pair is then the best Rayleigh quotient v^T H v among the vectors tried (a lower
    bound on lambda_max), not a Ritz pair.
    """

    eigenvalue: float
    eigenvector: torch.Tensor
    n_hvp: int
    converged: bool


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def hessian_vector_product(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                           vector: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """H v for the mean cross-entropy over ``images`` (train mode, micro-batches of ``micro_batch``).

    ``vector`` is flat (trainable parameters, ``model.parameters()`` order); it is moved to the
    parameters' device and dtype, and so is the result. The model is left exactly as found: its
    buffers (BatchNorm running statistics, ``num_batches_tracked``) are restored bit for bit, its
    train/eval flags reset, and no ``.grad`` is touched.
    """
    params = _trainable(model)
    vector = vector.detach().to(device=params[0].device, dtype=params[0].dtype)
    pieces = [v.view_as(p) for v, p in zip(vector.split([p.numel() for p in params]), params)]
    result = torch.zeros_like(vector)
    saved_buffers = [(buf, buf.clone()) for buf in model.buffers()]
    saved_modes = [(module, module.training) for module in model.modules()]
    model.train()
    try:
        with torch.enable_grad():
            for start in range(0, len(images), micro_batch):
                x, y = images[start: start + micro_batch], labels[start: start + micro_batch]
                loss = F.cross_entropy(model(x), y, reduction="sum")
                grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
                grad_dot_v = sum((g * v).sum() for g, v in zip(grads, pieces))
                hv = torch.autograd.grad(grad_dot_v, params, materialize_grads=True)
                result += torch.cat([h.reshape(-1) for h in hv])
    finally:
        with torch.no_grad():
            for buf, saved in saved_buffers:
                buf.copy_(saved)
        for module, training in saved_modes:
            module.training = training
    return result / len(images)


def top_eigenpair_of(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, *,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                     v0: torch.Tensor | None = None, tol: float = 1e-4, max_iter: int = 100,
                     seed: int = 0, ncv: int | None = None) -> Eigenpair:
    """Largest algebraic eigenpair of the symmetric operator ``hvp`` on R^dim, by Lanczos (eigsh).

    ``hvp`` receives a flat tensor of ``dim`` entries on ``device`` in ``dtype`` and returns H times
    it; ARPACK works in float64 on the CPU and each product is converted to and from it.

    ``tol`` is eigsh's relative accuracy: ARPACK stops once the Ritz pair's residual satisfies
    |H u - lambda u| <= tol * |lambda|, so lambda is within about tol * |lambda| of an eigenvalue
    (for a symmetric operator the error is even of order residual^2 / spectral gap).
    ``max_iter`` is eigsh's ``maxiter``: implicit restarts, each costing up to ``ncv`` products
    (eigsh's default ``ncv`` is min(dim, 20)); a call always costs at least about ``ncv`` products.
    ``v0`` (e.g. the eigenvector of the previous step) warm-starts the iteration, which saves
    restarts; without it the start is a standard normal vector drawn with ``seed``, so results are
    reproducible. On non-convergence the result is marked ``converged=False`` (see ``Eigenpair``).
    """
    if v0 is None:
        start = np.random.default_rng(seed).standard_normal(dim)
    else:
        start = v0.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
        if start.shape != (dim,):
            raise ValueError(f"v0 has {start.size} entries, expected {dim}")
    n_hvp = 0
    best = (-np.inf, None)  # (Rayleigh quotient, vector) of the best product seen: the fallback

    def matvec(x: np.ndarray) -> np.ndarray:
        nonlocal n_hvp, best
        n_hvp += 1
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        hx = hvp(torch.from_numpy(x).to(device=device, dtype=dtype))
        hx = hx.detach().to(device="cpu", dtype=torch.float64).numpy()
        quotient = float(x @ hx) / float(x @ x)
        if quotient > best[0]:
            best = (quotient, x / np.linalg.norm(x))
        return hx

    operator = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    try:
        values, vectors = eigsh(operator, k=1, which="LA", v0=start, tol=tol, maxiter=max_iter, ncv=ncv)
        value, vector, converged = float(values[0]), vectors[:, 0], True
    except ArpackNoConvergence:
        (value, vector), converged = best, False
    eigenvector = torch.from_numpy(np.ascontiguousarray(vector)).to(device=device, dtype=dtype)
    return Eigenpair(value, eigenvector, n_hvp, converged)


def top_eigenpair(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, micro_batch: int, *,
                  v0: torch.Tensor | None = None, tol: float = 1e-4, max_iter: int = 100,
                  seed: int = 0, ncv: int | None = None) -> Eigenpair:
    """Sharpness of the training loss at the model's current parameters: ``top_eigenpair_of`` applied
    to ``hessian_vector_product`` (same arguments and semantics as both; the model is left as found).

    ``images``/``labels`` should already be on the model's device; the eigenvector comes back there.
    """
    params = _trainable(model)
    return top_eigenpair_of(
        lambda v: hessian_vector_product(model, images, labels, v, micro_batch),
        sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype,
        v0=v0, tol=tol, max_iter=max_iter, seed=seed, ncv=ncv,
    )


def gradient_eigenvector_cosine(grad: torch.Tensor, eigvec: torch.Tensor) -> float:
    """|<g, v>| / (|g| |v|): how much of the gradient lies along the top Hessian direction.

    Absolute, because an eigenvector's sign is arbitrary (v and -v are the same eigendirection and
    Lanczos may return either), so a signed cosine would carry no information. Computed in float64;
    NaN if either vector is zero.
    """
    g = grad.detach().reshape(-1).double()
    v = eigvec.detach().reshape(-1).to(device=g.device, dtype=torch.float64)
    denominator = (g.norm() * v.norm()).item()
    if denominator == 0.0:
        return float("nan")
    return abs((g @ v).item()) / denominator
