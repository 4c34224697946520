"""Sharpness: HVPs against dense Hessians, Lanczos against known spectra, buffers left untouched."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zigzag.sharpness import (
    SolveSteps,
    gradient_eigenvector_cosine,
    hessian_vector_product,
    top_eigenpair,
    top_eigenpair_of,
)


def known_spectrum(dim, eigenvalues, seed=0):
    """Q diag(eigenvalues) Q^T with a random orthogonal Q (float64), and Q."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T, q


def tiny_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    images = torch.randn(40, 2, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,))
    return model, images, labels


def dense_hessian(model, images, labels):
    """Hessian of the mean CE w.r.t. the flat parameter vector (one batch, no batch statistics)."""
    names = [name for name, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params = dict(zip(names, (t.view(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(model, params, (images,)), labels)

    return torch.autograd.functional.hessian(loss, theta)


def small_bn_cnn():
    """Smooth (softplus, average pooling), so finite differences of its gradient are clean."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(), nn.AvgPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Softplus(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).double()
    images = torch.randn(48, 1, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 10, (48,))
    return model, images, labels


def chunked_gradient(model, images, labels, micro_batch):
    """The GD gradient: sum-reduced CE over micro-batches (train mode) divided by n."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(images), micro_batch):
        loss = F.cross_entropy(model(images[start: start + micro_batch]), labels[start: start + micro_batch],
                               reduction="sum")
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t += g
    return torch.cat([t.reshape(-1) for t in total]) / len(images)


def test_top_eigenpair_of_known_spectrum():
    dim = 60
    eigenvalues = np.linspace(-3.0, 2.0, dim)
    eigenvalues[-1] = 5.0  # lambda_max; a larger |negative| one would win under "LM", not "LA"
    eigenvalues[0] = -8.0
    h, q = known_spectrum(dim, eigenvalues)
    result = top_eigenpair_of(lambda v: h @ v, dim, tol=1e-6)
    assert result.converged
    assert result.eigenvalue == pytest.approx(5.0, rel=1e-4)
    assert gradient_eigenvector_cosine(result.eigenvector, q[:, -1]) > 0.999
    assert result.n_hvp > 0


def test_hvp_matches_dense_hessian_and_chunking():
    model, images, labels = tiny_mlp()
    n_params = sum(p.numel() for p in model.parameters())
    dense = dense_hessian(model, images, labels)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(n_params, generator=gen, dtype=torch.float64)
        expected = dense @ v
        one_batch = hessian_vector_product(model, images, labels, v, micro_batch=len(images))
        chunked = hessian_vector_product(model, images, labels, v, micro_batch=7)
        scale = expected.abs().max()
        assert (one_batch - expected).abs().max() / scale < 1e-5
        assert (chunked - one_batch).abs().max() / scale < 1e-12
    assert all(p.grad is None for p in model.parameters())


def test_top_eigenvalue_of_mlp_matches_dense():
    model, images, labels = tiny_mlp()
    dense = dense_hessian(model, images, labels)
    expected = np.linalg.eigvalsh(dense.numpy()).max()
    result = top_eigenpair(model, images, labels, micro_batch=7, tol=1e-6)
    assert result.converged
    assert result.eigenvalue == pytest.approx(expected, rel=1e-4)
    residual = dense @ result.eigenvector - result.eigenvalue * result.eigenvector
    assert residual.norm() < 1e-3 * abs(expected)


def test_bn_hvp_is_derivative_of_ghost_batch_gradient():
    """With BatchNorm, H v is the directional derivative of the micro-batched GD gradient."""
    model, images, labels = small_bn_cnn()
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hv = hessian_vector_product(model, images, labels, v, micro_batch=16)
    eps = 1e-5
    grads = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, t, d in zip(params, theta, v.split([p.numel() for p in params])):
                p.copy_(t + sign * eps * d.view_as(p))
        grads.append(chunked_gradient(model, images, labels, micro_batch=16))
    finite_difference = (grads[0] - grads[1]) / (2 * eps)
    assert (hv - finite_difference).abs().max() / hv.abs().max() < 1e-6


def test_buffers_and_mode_untouched_by_top_eigenpair():
    model, images, labels = small_bn_cnn()
    model.eval()
    model(images)  # eval: no stats update; give the buffers non-trivial values next
    with torch.no_grad():
        model.train()
        model(images[:10])
        model.eval()
    before = {name: buf.clone() for name, buf in model.named_buffers()}
    result = top_eigenpair(model, images, labels, micro_batch=16, tol=1e-3)
    assert result.converged and result.eigenvalue > 0
    for name, buf in model.named_buffers():
        assert buf.dtype == before[name].dtype
        assert torch.equal(buf, before[name]), name
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_warm_start_costs_no_more_than_cold():
    model, images, labels = tiny_mlp()
    cold = top_eigenpair(model, images, labels, micro_batch=40)
    warm = top_eigenpair(model, images, labels, micro_batch=40, v0=cold.eigenvector)
    assert warm.eigenvalue == pytest.approx(cold.eigenvalue, rel=1e-4)
    assert warm.n_hvp <= cold.n_hvp
    # A hard case (small gap at the top): the warm start saves whole restarts.
    dim = 300
    h, q = known_spectrum(dim, np.r_[np.linspace(0.0, 1.0, dim - 1), 1.001])
    cold = top_eigenpair_of(lambda v: h @ v, dim, tol=1e-6)
    warm = top_eigenpair_of(lambda v: h @ v, dim, tol=1e-6, v0=q[:, -1] + 1e-3 * torch.randn(dim, dtype=torch.float64))
    assert cold.converged and warm.converged
    assert warm.eigenvalue == pytest.approx(1.001, rel=1e-6)
    assert warm.n_hvp < cold.n_hvp


def test_no_convergence_returns_marked_best_estimate():
    dim = 300
    h, _ = known_spectrum(dim, np.r_[np.linspace(0.0, 1.0, dim - 1), 1.001])
    result = top_eigenpair_of(lambda v: h @ v, dim, tol=1e-10, max_iter=1, ncv=5)
    assert not result.converged
    v = result.eigenvector
    assert v.norm().item() == pytest.approx(1.0)
    assert result.eigenvalue == pytest.approx((v @ h @ v).item())  # a Rayleigh quotient ...
    assert 0.0 < result.eigenvalue <= 1.001  # ... hence a lower bound on lambda_max
    assert result.n_hvp > 0


def test_a_solve_at_the_products_floor_stops_once_it_stalls():
    """Products with a noise floor (as float32 products of a BatchNorm network, whose residual levels off near
    1.5e-3): the solve stops once STALL_PRODUCTS products did not lower the residual by a tenth, marked not
    converged, with theta within the floor of lambda_max, instead of spending max_iter cycles."""
    dim, floor = 300, 3e-2
    h, _ = known_spectrum(dim, np.r_[np.linspace(0.0, 0.8, dim - 1), 1.0])
    noise = torch.Generator().manual_seed(0)

    def noisy(v):
        return h @ v + floor * v.norm() * torch.randn(dim, generator=noise, dtype=torch.float64) / dim**0.5

    result = top_eigenpair_of(noisy, dim, tol=1e-3, ncv=20)
    assert not result.converged and result.residual > 1e-3
    assert result.n_hvp <= 20 + 3 * 17  # four cycles at most, where max_iter allows 100
    assert result.eigenvalue == pytest.approx(1.0, abs=floor)
    exact = top_eigenpair_of(lambda v: h @ v, dim, tol=1e-3, ncv=20)  # the same spectrum without the floor
    assert exact.converged and exact.residual <= 1e-3


def test_gradient_eigenvector_cosine_ignores_sign():
    g = torch.tensor([3.0, 4.0, 0.0])
    v = torch.tensor([0.0, 1.0, 0.0])
    assert gradient_eigenvector_cosine(g, v) == pytest.approx(0.8)
    assert gradient_eigenvector_cosine(g, -v) == pytest.approx(0.8)
    assert np.isnan(gradient_eigenvector_cosine(torch.zeros(3), v))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model, images, labels = tiny_mlp()
    on_cpu = top_eigenpair(model, images, labels, micro_batch=7, tol=1e-6)
    model.cuda()
    on_gpu = top_eigenpair(model, images.cuda(), labels.cuda(), micro_batch=7, tol=1e-6)
    assert on_gpu.eigenvector.is_cuda
    assert on_gpu.eigenvalue == pytest.approx(on_cpu.eigenvalue, rel=1e-6)
    v = torch.randn(on_cpu.eigenvector.numel(), dtype=torch.float64)
    hv_gpu = hessian_vector_product(model, images.cuda(), labels.cuda(), v, micro_batch=7)
    assert hv_gpu.is_cuda
    model.cpu()
    hv_cpu = hessian_vector_product(model, images, labels, v, micro_batch=7)
    assert torch.allclose(hv_gpu.cpu(), hv_cpu, rtol=1e-9, atol=1e-12)


def solves_of(curve, steps, selection, lr=0.1, **refine):
    """The steps at which ``SolveSteps`` solves along a given sharpness curve (step -> value)."""
    plan = SolveSteps(selection, **refine)
    solved = []
    for k in range(steps):
        if plan.due(k):
            solved.append(k)
            plan.record(k, curve(k), lr)
    return solved


def test_solves_refine_near_two_over_lr_and_bracket_the_crossing():
    # Sharpness rising linearly from 5 to 25 over 100 steps at lr 0.1: 0.9 x 2/lr = 18 first at step 65.
    curve = lambda k: 5.0 + 0.2 * k  # noqa: E731
    solved = solves_of(curve, 100, 10, refine_every=2)
    assert set(range(0, 100, 10)) <= set(solved)  # the grid stays
    crossing = next(k for k in range(100) if curve(k) >= 18.0)
    assert crossing - max(k for k in solved if k < crossing) <= 2
    # Step 2 refines the first grid interval (no slope yet: 5.4 -> 7 at step 10, below half of 2/lr); then
    # refined from where the extrapolation reaches half of 2/lr (the solve at step 20 sees 9 -> 11 at 30)
    # until the first solve at or above 0.9 x 2/lr (18.2 at step 66); the grid alone before and after.
    assert [k for k in solved if k % 10] == [k for k in [2, *range(22, 68, 2)] if k % 10]
    assert solves_of(curve, 100, 10, refine_every=10) == list(range(0, 100, 10))  # refine_every >= K: the grid
    assert solves_of(curve, 100, {3, 50}, refine_every=2) == [3, 50]  # a list of steps is taken as given
    assert solves_of(curve, 100, None, refine_every=2) == []


def test_solves_stop_refining_at_an_early_jump_and_resume_from_their_state():
    # ResNet-like: sharpness at 8 (0.4 x 2/lr), past 2/lr a few steps later.
    curve = lambda k: 8.0 + 6.0 * k  # noqa: E731
    assert solves_of(curve, 40, 10, refine_every=2) == [0, 2, 10, 20, 30]  # 20 at step 2 >= 18: reached
    plan = SolveSteps(10, refine_every=2)
    plan.record(0, 8.0, 0.1)
    resumed = SolveSteps(10, refine_every=2)
    resumed.load_state_dict(plan.state_dict())
    assert [k for k in range(1, 10) if resumed.due(k)] == [2]
