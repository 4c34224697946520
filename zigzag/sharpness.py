"""Sharpness: the top eigenvalue of the training-loss Hessian (Cohen et al. 2021, "edge of stability").

The loss is the one gradient descent follows (docs/design.md, "Steps, gradients and the loss"): over n
training examples, split into micro-batches B_1..B_m in order,

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

Cost: one H v is one forward-over-reverse pass over the training set (``hessian_vector_product``;
on a 2-core CPU about 2.5 gradient passes without BatchNorm, 3.5-4.5 with it); ``top_eigenpair`` uses
about ``ncv`` + 1 of them when one Lanczos cycle converges, more with restarts. The defaults below are
the run settings' (``sharpness.tol``, ``max_iter``, ``ncv`` in zigzag/runconfig.py): a cold start
converges in one cycle of ``NCV_COLD`` vectors where ``NCV_WARM`` would restart several times, and a
warm start from the last step's eigenvector needs only a few.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn

TOL = 1e-3  # relative accuracy of lambda_max
MAX_ITER = 100  # implicit restarts at most
NCV_COLD, NCV_WARM = 20, 8  # Lanczos basis size without and with a start vector v0


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

    Forward-over-reverse: per micro-batch, the directional derivative along v of its gradient,
    d/dt g_j(theta + t v) at t = 0, by ``torch.func.jvp`` of ``torch.func.grad`` (one forward+backward
    pass carrying tangents), which costs less than differentiating <g_j, v> by a second backward
    (no graph of the first backward is kept). BatchNorm layers normalise by the micro-batch's
    statistics and, for the duration, track no running ones, so the model is left exactly as found:
    buffers, train/eval flags and ``.grad`` untouched.

    ``vector`` is flat (trainable parameters, ``model.parameters()`` order); it is moved to the
    parameters' device and dtype, and so is the result.
    """
    named = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
    params = dict(named)
    vector = vector.detach().to(device=named[0][1].device, dtype=named[0][1].dtype)
    tangents = {name: v.view_as(p) for (name, p), v in zip(named, vector.split([p.numel() for _, p in named]))}
    result = torch.zeros_like(vector)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_modes = [(module, module.training) for module in model.modules()]
    saved_tracking = [(m, m.track_running_stats) for m in batch_norms]
    model.train()
    for m in batch_norms:
        m.track_running_stats = False
    try:
        for start in range(0, len(images), micro_batch):
            x, y = images[start: start + micro_batch], labels[start: start + micro_batch]

            def loss(p, x=x, y=y):
                return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y, reduction="sum")

            with warnings.catch_warnings():  # torch's forward AD loads its decompositions via torch.jit.script
                warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
                _, hv = torch.func.jvp(torch.func.grad(loss), (params,), (tangents,))
            result += torch.cat([hv[name].reshape(-1) for name, _ in named])
    finally:
        for m, track in saved_tracking:
            m.track_running_stats = track
        for module, training in saved_modes:
            module.training = training
    return result / len(images)


def top_eigenpair_of(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, *,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                     v0: torch.Tensor | None = None, tol: float = TOL, max_iter: int = MAX_ITER,
                     seed: int = 0, ncv: int | None = None) -> Eigenpair:
    """Largest algebraic eigenpair of the symmetric operator ``hvp`` on R^dim, by Lanczos (eigsh).

    ``hvp`` receives a flat tensor of ``dim`` entries on ``device`` in ``dtype`` and returns H times
    it; ARPACK works in float64 on the CPU and each product is converted to and from it.

    ``tol`` is eigsh's relative accuracy: ARPACK stops once the Ritz pair's residual satisfies
    |H u - lambda u| <= tol * |lambda|, so lambda is within about tol * |lambda| of an eigenvalue
    (for a symmetric operator the error is even of order residual^2 / spectral gap).
    ``max_iter`` is eigsh's ``maxiter``: implicit restarts, each costing up to ``ncv`` products
    (``ncv`` None: ``NCV_COLD`` without ``v0``, ``NCV_WARM`` with it, at most dim); a call always costs
    at least about ``ncv`` products.
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
    if ncv is None:
        ncv = min(dim, NCV_COLD if v0 is None else NCV_WARM)
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
                  v0: torch.Tensor | None = None, tol: float = TOL, max_iter: int = MAX_ITER,
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
