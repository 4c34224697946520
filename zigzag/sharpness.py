"""Sharpness: the top eigenvalue of the training-loss Hessian (Cohen et al. 2021, "edge of stability").

The loss is the one gradient descent follows (docs/design.md, "Steps, gradients and the loss"): over n
training examples, split into micro-batches B_1..B_m in order,

    L(theta) = (1/n) sum_j sum_{i in B_j} l(f(x_i; theta), y_i)        (train mode)

with l the run's loss (cross-entropy or MSE, zigzag/losses.py), so BatchNorm normalises each micro-batch by its own
statistics ("ghost batches") and the Hessian is H = (1/n) sum_j d^2/dtheta^2 [sum_{i in B_j} l_i]. For a vector v,
each micro-batch contributes d/dtheta <g_j(theta), v> with g_j the gradient of its summed loss (double backward),
so H v never forms H. theta is the flattened trainable parameters in ``model.parameters()`` order, the order of
every other flat gradient in zigzag.

The sharpness lambda_max(H) is the largest *algebraic* eigenvalue of H, the one that matters for
stability: on a quadratic, gradient descent with step size eta diverges along the top eigenvector once
lambda_max > 2/eta (a negative eigenvalue of larger magnitude is not the sharpness). ``top_eigenpair_of``
finds it by Lanczos with full reorthogonalisation on the operator v -> H v, warm-started from the previous
solve's eigenvector, and stops on the relative residual |H v - lambda v| / lambda <= ``tol``: lambda then
lies within tol lambda of an eigenvalue (and within |H v - lambda v|^2 / gap of it). The default 1e-3
keeps a solve going long enough to see a top eigenvalue that has just overtaken the previous one, which
1e-2 missed once by 3.6 % (BENCHMARKS.md).

Cost: a solve builds the gradient's graph once (``HessianOperator``), and each H v is then one backward
through it (on a 2-core CPU about 1.7 gradient passes without BatchNorm, 3-5 with it, where BatchNorm's
double backward takes almost half). A warm-started solve takes a few products, a cold one (the first) some
ten to fifty. ``SolveSteps`` says at which steps a run solves:
a grid, refined where the sharpness nears 2/lr. The defaults below are the run settings'
(``sharpness.*`` in zigzag/runconfig.py).
"""

from __future__ import annotations

import math
import sys
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from zigzag.distributed import Group
from zigzag.errors import ZigzagError
from zigzag.losses import logits, loss_sum
from zigzag.runchoices import MAX_ITER, NCV_COLD, NCV_WARM, REFINE_EVERY, REFINE_FROM, REFINE_UNTIL, TOL
from zigzag.settings import parse_step_selection

KEPT = 3  # Ritz vectors (the top ones) a full basis restarts from
STALL, STALL_PRODUCTS = 0.9, 34  # a solve whose last 34 products (two cold cycles) did not bring the residual
# below 0.9 times its best before them has stalled, and stops


class Eigenpair(NamedTuple):
    """The top eigenpair of a Hessian and what it cost.

    ``eigenvalue``: lambda_max (float). ``eigenvector``: unit vector, flattened parameter order, on
    the model's device in the parameters' dtype (its sign is arbitrary). ``n_hvp``: Hessian-vector
    products used. ``converged``: False when the solve stopped short of ``tol``, after ``max_iter`` cycles
    or once it stalled (``STALL_PRODUCTS``); the pair is then the last Ritz pair (its value a Rayleigh quotient: a lower
    bound on lambda_max, within ``residual`` |lambda| of an eigenvalue). ``residual``: |H v - lambda v| /
    |lambda| of the returned pair.
    """

    eigenvalue: float
    eigenvector: torch.Tensor
    n_hvp: int
    converged: bool
    residual: float


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


class HessianOperator:
    """v -> H v at the model's parameters as they are now, for the products of one solve.

    With g_j the gradient of micro-batch j's summed loss, H v = (1/n) sum_j d<g_j, v>/dtheta (double
    backward). The first product builds every g_j with its graph (one forward and backward with
    ``create_graph``, train mode); each product is then one backward through those graphs per micro-batch,
    ``autograd.grad(g_j, theta, grad_outputs=v)``, with no forward pass repeated: on a 2-core CPU about
    2.8 gradient passes per product on ResNet-18 and 1.7 on the CNN, against 4.3 and 2.6 for a
    forward-over-reverse pass per product (BENCHMARKS.md). The graphs hold every micro-batch's activations
    and first-backward intermediates while the operator lives; where they do not fit on a GPU (out of
    memory), each product rebuilds one micro-batch's graph at a time instead.

    BatchNorm layers normalise by the micro-batch's statistics and track no running ones while a graph is
    built, so the model is left exactly as found: buffers, train/eval flags and ``.grad`` untouched. The
    graphs run in the default memory layout (the double backward of a convolution is slower in
    channels_last on a CPU). Vectors are flat (trainable parameters, ``model.parameters()`` order); one is
    moved to the parameters' device and dtype, and so is the result. Do not change the parameters while
    the operator is in use.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, micro_batch: int,
                 loss: str = "cross_entropy", group: Group | None = None):
        """``loss``: the training loss (zigzag/losses.py); ``group``: the processes a run is split across
        (zigzag/distributed.py); each takes its chunk of the micro-batches and the products are summed across them."""
        self.model, self.loss, self.group = model, loss, group or Group()
        self.params = [p.detach().clone(memory_format=torch.contiguous_format).requires_grad_()
                       for p in _trainable(model)]
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.batches = [(images[i: i + micro_batch].clone(memory_format=torch.contiguous_format),
                         labels[i: i + micro_batch])
                        for i in range(*self.group.batch_share(len(images), micro_batch), micro_batch)]
        self.n = len(images)
        self.retain = True  # keep every micro-batch's graph between products
        self.gradients: list[tuple[torch.Tensor, ...]] | None = None

    def _gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """g_j with its graph: the gradient of the summed loss of (x, y) in train mode."""
        model = self.model
        batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved_modes = [(module, module.training) for module in model.modules()]
        saved_tracking = [(m, m.track_running_stats) for m in batch_norms]
        model.train()
        for m in batch_norms:
            m.track_running_stats = False
        try:
            with torch.enable_grad():
                out = logits(torch.func.functional_call(model, dict(zip(self.names, self.params)), (x,)))
                loss = loss_sum(out, y, self.loss)
                return torch.autograd.grad(loss, self.params, create_graph=True)
        finally:
            for m, track in saved_tracking:
                m.track_running_stats = track
            for module, training in saved_modes:
                module.training = training

    def _products(self, vector: torch.Tensor) -> torch.Tensor:
        tangents = [v.view_as(p) for p, v in zip(self.params, vector.split([p.numel() for p in self.params]))]
        if self.retain and self.gradients is None:
            self.gradients = [self._gradient(x, y) for x, y in self.batches]
        result = torch.zeros_like(vector)
        for j, (x, y) in enumerate(self.batches):
            gradient = self.gradients[j] if self.retain else self._gradient(x, y)
            hv = torch.autograd.grad(gradient, self.params, grad_outputs=tangents, retain_graph=self.retain,
                                     allow_unused=True, materialize_grads=True)
            result += torch.cat([h.reshape(-1) for h in hv])
        return self.group.sum(result) / self.n

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        first = self.params[0]
        vector = vector.detach().to(device=first.device, dtype=first.dtype)
        try:
            return self._products(vector)
        except torch.OutOfMemoryError:
            if not self.retain:
                raise
            self.retain, self.gradients = False, None
            return self._products(vector)


def hessian_vector_product(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                           vector: torch.Tensor, micro_batch: int, loss: str = "cross_entropy") -> torch.Tensor:
    """H v for the mean ``loss`` over ``images`` (train mode, micro-batches of ``micro_batch``): one
    product of a ``HessianOperator`` (see there); the model is left as found."""
    return HessianOperator(model, images, labels, micro_batch, loss)(vector)


def top_eigenpair_of(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, *,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                     v0: torch.Tensor | None = None, tol: float = TOL, max_iter: int = MAX_ITER,
                     seed: int = 0, ncv: int | None = None) -> Eigenpair:
    """Largest algebraic eigenpair of the symmetric operator ``hvp`` on R^dim, by a restarted Krylov method.

    ``hvp`` receives a flat tensor of ``dim`` entries on ``device`` in ``dtype`` and returns H times it.
    The search space starts from ``v0`` (e.g. the previous solve's eigenvector; without it a standard
    normal vector drawn with ``seed``). With Q = [q_1 .. q_m] its orthonormal basis (float64 on
    ``device``, Gram-Schmidt twice) and W = H Q (one product per column), the Ritz pair (theta, u = Q s) is
    the top eigenpair of Q^T W (Rayleigh-Ritz), and its residual r = W s - theta u is exact. The solve
    stops at the first m where

        |H u - theta u| <= tol * |theta|                                     (relative residual)

    and otherwise adds r, orthogonalised, to the basis, which so spans Lanczos's Krylov space [v0, H v0,
    H^2 v0, ...]. theta lies within tol |theta| of an eigenvalue of H (within |r|^2 / gap of it when
    separated by gap from the others) and theta <= lambda_max (a Rayleigh quotient); a top eigenvector
    that v0 barely touches can stay unseen while the Ritz pair of the next one already meets a loose tol
    (seen at 1e-2 where the top two eigenvalues lay 3.6 % apart; BENCHMARKS.md). After ``ncv`` basis
    vectors (default ``NCV_COLD`` without ``v0``, ``NCV_WARM`` with it) the basis restarts from its top
    ``KEPT`` Ritz vectors and their images (thick restart: no product lost). The solve stops with
    ``converged=False`` and the Ritz pair then held (theta, a lower bound on lambda_max) after ``max_iter``
    cycles, or once its last ``STALL_PRODUCTS`` products did not bring the residual below ``STALL`` times its
    best before them: the residual has reached the floor of the products' own rounding (float32 products of
    a BatchNorm network on 500 images level off near 1.5e-3 with theta settled to 7 digits; BENCHMARKS.md),
    and more products would only spend time. (Near a small gap at the top the residual can stall for a
    cycle while theta still climbs, then drop: the window spans two cold cycles.)
    """
    basis_size = min(dim, ncv or (NCV_COLD if v0 is None else NCV_WARM))
    if v0 is None:
        v0 = torch.from_numpy(np.random.default_rng(seed).standard_normal(dim))
    start = v0.detach().reshape(-1).to(device=device, dtype=torch.float64)
    if start.numel() != dim:
        raise ValueError(f"v0 has {start.numel()} entries, expected {dim}")
    basis_size = max(basis_size, KEPT + 1)
    basis = torch.zeros(basis_size, dim, dtype=torch.float64, device=device)
    products = torch.zeros_like(basis)
    m, n_hvp, cycles = 0, 0, 1
    residuals = []  # after each product
    theta, ritz, residual = float("nan"), start, float("inf")
    vector = start  # the next direction to add to the basis, at the cost of one product
    while True:
        for _ in range(2):
            vector = vector - (basis[:m] @ vector) @ basis[:m]
        norm = float(vector.norm())
        if m and norm <= 1e-12 * abs(theta):  # the residual lies in the basis: tol is below rounding
            return Eigenpair(theta, ritz.to(dtype), n_hvp, False, residual)
        basis[m] = vector / norm
        products[m] = hvp(basis[m].to(dtype)).detach().reshape(-1).to(device=device, dtype=torch.float64)
        n_hvp, m = n_hvp + 1, m + 1
        projected = (basis[:m] @ products[:m].T).cpu().numpy()
        values, vectors = np.linalg.eigh((projected + projected.T) / 2)
        theta, s = float(values[-1]), torch.from_numpy(vectors[:, -1]).to(device)
        ritz, image = s @ basis[:m], s @ products[:m]
        vector = image - theta * ritz
        residual = float(vector.norm()) / max(abs(theta), np.finfo(float).tiny)
        if residual <= tol or m == dim:
            return Eigenpair(theta, ritz.to(dtype), n_hvp, True, residual)
        residuals.append(residual)
        if n_hvp > STALL_PRODUCTS and min(residuals[-STALL_PRODUCTS:]) > STALL * min(residuals[:-STALL_PRODUCTS]):
            return Eigenpair(theta, ritz.to(dtype), n_hvp, False, residual)
        if m == basis_size:
            if cycles == max_iter:
                return Eigenpair(theta, ritz.to(dtype), n_hvp, False, residual)
            cycles += 1
            kept = torch.from_numpy(np.ascontiguousarray(vectors[:, ::-1][:, :KEPT])).to(device).T  # top Ritz vectors
            basis[: len(kept)], products[: len(kept)] = kept @ basis[:m], kept @ products[:m]
            m = len(kept)


def top_eigenpair(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, micro_batch: int, *,
                  v0: torch.Tensor | None = None, tol: float = TOL, max_iter: int = MAX_ITER,
                  seed: int = 0, ncv: int | None = None, loss: str = "cross_entropy",
                  group: Group | None = None) -> Eigenpair:
    """Sharpness of the training loss ``loss`` at the model's current parameters: ``top_eigenpair_of`` applied
    to a ``HessianOperator`` (same arguments and semantics as both; the model is left as found). Split across
    ``group``, every rank solves on the same summed products from the same start: the same vectors everywhere.

    ``images``/``labels`` should already be on the model's device; the eigenvector comes back there.
    """
    operator = HessianOperator(model, images, labels, micro_batch, loss, group)
    first = operator.params[0]
    return top_eigenpair_of(
        operator, sum(p.numel() for p in operator.params), device=first.device, dtype=first.dtype,
        v0=v0, tol=tol, max_iter=max_iter, seed=seed, ncv=ncv,
    )


class SolveSteps:
    """The steps at which a run solves for the sharpness (``sharpness.every`` and the ``refine_*`` settings).

    ``selection`` is what ``parse_step_selection`` made of ``sharpness.every``: None (never), a set of steps
    (exactly those), or K (``every:K``: the grid 0, K, 2K, ..., refined near 2/lr). With ``refine_every``
    r set, after a solve at step k whose sharpness s_k is still below ``refine_until`` * 2/lr_k, the next
    solve comes at k + r (at the latest at g, the next grid step after k) while

        max(s_k, s_k + (g - k) (s_k - s_j) / (k - j)) >= refine_from * 2/lr_k,

    the linear extrapolation from the previous solve j (at the first solve, no slope is known: refine).
    Once a solve reaches ``refine_until`` * 2/lr, only the grid. So the first step with sharpness >=
    refine_until * 2/lr (and any lower threshold above refine_from * 2/lr) is bracketed by solves at most r
    steps apart, unless the sharpness jumps past both within one grid interval against the extrapolation.
    """

    def __init__(self, selection: set[int] | int | None, refine_every: int = REFINE_EVERY,
                 refine_from: float = REFINE_FROM, refine_until: float = REFINE_UNTIL):
        self.selection, self.refine_every = selection, refine_every
        self.refine_from, self.refine_until = refine_from, refine_until
        self.previous: tuple[int, float] | None = None  # (step, sharpness) of the last solve
        self.reached = False
        self.next_refined: int | None = None  # an extra solve between grid steps, if one is due

    def on_grid(self, k: int) -> bool:
        """Whether step k is one of the selection's own steps (without refinement)."""
        if self.selection is None or isinstance(self.selection, set):
            return self.selection is not None and k in self.selection
        return k % self.selection == 0

    def due(self, k: int) -> bool:
        """Whether step k solves: a step of the selection, or a refined one."""
        return self.on_grid(k) or k == self.next_refined

    def record(self, k: int, sharpness: float, lr: float) -> None:
        """Take the solve of step k into account for the next ones."""
        self.next_refined = None
        stable = 2.0 / lr
        self.reached = self.reached or sharpness >= self.refine_until * stable
        if isinstance(self.selection, int) and not self.reached and math.isfinite(sharpness):
            grid = (k // self.selection + 1) * self.selection
            predicted = sharpness
            if self.previous is not None:
                j, s_j = self.previous
                predicted = max(sharpness, sharpness + (grid - k) * (sharpness - s_j) / (k - j))
            if self.previous is None or predicted >= self.refine_from * stable:
                self.next_refined = min(k + self.refine_every, grid)
        self.previous = (k, sharpness)

    def state_dict(self) -> dict:
        return {"previous": self.previous, "reached": self.reached, "next_refined": self.next_refined}

    def load_state_dict(self, state: dict) -> None:
        self.previous = None if state["previous"] is None else tuple(state["previous"])
        self.reached, self.next_refined = state["reached"], state["next_refined"]


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


class ClosureHessian:
    """v -> H v for the loss a closure returns (a differentiable scalar at the parameters ``params`` as they are
    now): one forward, backward with its graph at the first product (the closure is called once per solve),
    then one double backward per product. ``.grad`` is left untouched; whatever the closure's forward changes
    (e.g. BatchNorm's running statistics in train mode) it changes."""

    def __init__(self, closure: Callable[[], torch.Tensor], params: list[torch.Tensor]):
        self.closure, self.params = closure, params
        self.gradient: tuple[torch.Tensor, ...] | None = None

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        first = self.params[0]
        vector = vector.detach().to(device=first.device, dtype=first.dtype)
        if self.gradient is None:
            with torch.enable_grad():
                self.gradient = torch.autograd.grad(self.closure(), self.params, create_graph=True)
        tangents = [v.view_as(p) for p, v in zip(self.params, vector.split([p.numel() for p in self.params]))]
        hv = torch.autograd.grad(self.gradient, self.params, grad_outputs=tangents, retain_graph=True,
                                 allow_unused=True, materialize_grads=True)
        return torch.cat([h.reshape(-1) for h in hv])


class SharpnessTracker:
    """lambda_max at the steps a run's ``sharpness`` settings select (``SolveSteps``), on a fixed seeded
    subset of the training set (in its order, so its micro-batches stay the same), each solve warm-started
    from the last eigenvector."""

    def __init__(self, config, train_x: torch.Tensor | None, train_y: torch.Tensor | None, total_steps: int,
                 name: str = "", group: Group | None = None):
        """``config``: a ``zigzag.runconfig.RunConfig`` (or what has its ``sharpness_setting``, ``micro_batch``,
        ``seed`` and ``loss``); ``name``: the run, for its warnings; ``group``: the processes the products are split
        across. Without ``train_x`` every ``measure`` brings its operator."""
        self.name, self.setting, self.group = name, config.sharpness_setting, group
        self.micro_batch, self.seed, self.loss = config.micro_batch, config.seed, config.loss
        self.steps = SolveSteps(parse_step_selection(self.setting("every"), total_steps, "sharpness.every"),
                                *(self.setting(f"refine_{key}") for key in ("every", "from", "until")))
        self.eigenvector: torch.Tensor | None = None  # the warm start of the next solve
        if train_x is None:
            self.x = self.y = None
            return
        n = len(train_x)
        subset = self.setting("subset") or n
        if subset > n:
            raise ZigzagError(f"invalid sharpness.subset={subset}: larger than the training set ({n})")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:subset].sort().values
        self.x, self.y = train_x[order.to(train_x.device)], train_y[order.to(train_x.device)]

    @property
    def enabled(self) -> bool:
        return self.steps.selection is not None

    def due(self, k: int) -> bool:
        return self.steps.due(k)

    def measure(self, model: nn.Module, k: int, lr: float, grad: torch.Tensor,
                operator: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
        """The sharpness row of step k at theta_k (learning rate ``lr``, gradient ``grad`` = g_k); ``operator``:
        v -> H v with ``params`` (default: the ``HessianOperator`` of the run's mean loss on the subset)."""
        operator = operator or HessianOperator(model, self.x, self.y, self.micro_batch, self.loss, self.group)
        first = operator.params[0]
        pair = top_eigenpair_of(operator, sum(p.numel() for p in operator.params), device=first.device,
                                dtype=first.dtype, v0=self.eigenvector, tol=self.setting("tol"),
                                max_iter=self.setting("max_iter"), ncv=self.setting("ncv"), seed=self.seed)
        self.eigenvector = pair.eigenvector
        self.steps.record(k, pair.eigenvalue, lr)
        if not pair.converged:
            print(f"warning: {self.name}: the Lanczos solve at step {k} stopped short of tol={self.setting('tol')} "
                  f"at relative residual {pair.residual:.3g} after {pair.n_hvp} products (max_iter="
                  f"{self.setting('max_iter')} cycles, or {STALL_PRODUCTS} products that did not lower it by a "
                  f"tenth: the products' rounding floor); its sharpness {pair.eigenvalue:.6g} is a lower bound, "
                  "within that residual of an eigenvalue (sharpness_converged 0)", file=sys.stderr)
        return {"sharpness": pair.eigenvalue, "sharpness_hvps": pair.n_hvp,
                "sharpness_converged": float(pair.converged), "sharpness_residual": pair.residual,
                "grad_eigvec_cosine": gradient_eigenvector_cosine(grad, pair.eigenvector)}

    def attrs(self) -> dict:
        """The sample the sharpness is taken on and the batches its loss is split into (none: no sharpness)."""
        if not self.enabled or self.x is None:
            return {}
        return {"sharpness_subset": len(self.x), "sharpness_batch": min(self.micro_batch, len(self.x))}

    def state_dict(self) -> dict:
        return {"eigenvector": self.eigenvector, "steps": self.steps.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.eigenvector = state["eigenvector"]
        self.steps.load_state_dict(state["steps"])
