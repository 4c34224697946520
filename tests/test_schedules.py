"""Schedules of the paper's section 5.2: closed forms, the online mean correlation, the GAWU switch."""

import io
import math
import textwrap

import numpy as np
import pytest
import torch

import zigzag.schedules as schedules
from zigzag.errors import ZigzagError
from zigzag.schedules import GAWU, GradientCorrelationMonitor, WarmupCosine


def _optimizer(groups=1):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(3))]} for _ in range(groups)], lr=1.0)


def _advance(opt, sched):
    opt.step()  # no gradients: a no-op that keeps torch's step-order check quiet
    sched.step()


def _lrs(opt):
    return [group["lr"] for group in opt.param_groups]


def test_warmup_cosine_closed_form():
    eta0, omega, t, total = 0.01, 0.1, 5, 13
    opt = _optimizer(groups=2)
    sched = WarmupCosine(opt, eta0=eta0, omega=omega, change_point=t, total=total)
    seen = []
    for _ in range(total + 2):
        lrs = _lrs(opt)
        assert lrs[0] == lrs[1]
        seen.append(lrs[0])
        _advance(opt, sched)
    peak = eta0 * math.exp(omega * t * (t + 1) / 2)
    assert sched.growth == "paper"
    assert seen[0] == eta0
    assert seen[3] == pytest.approx(eta0 * math.exp(0.1 * 6), rel=1e-15)
    for u in range(1, t + 1):  # Section 5.2: eta_u = exp(omega * u) * eta_(u-1)
        assert seen[u] / seen[u - 1] == pytest.approx(math.exp(omega * u), rel=1e-14)
    assert seen[t] == pytest.approx(peak, rel=1e-15)
    assert seen[9] == pytest.approx(peak / 2, rel=1e-14)  # middle of the 8 decay units
    assert seen[12] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 7 / 8)), rel=1e-14)
    assert seen[13] == seen[14] == 0.0
    assert sched.get_last_lr() == [0.0, 0.0]


@pytest.mark.parametrize(("t", "peak"), [(10, 0.245), (11, 0.735), (12, 2.44)])
def test_paper_warmup_reaches_the_linear_scaling_lr(t, peak):
    """eta0 = 0.001, omega = 0.1 (Section 5.2): eta0 * exp(0.1 * t (t + 1) / 2) at the change point."""
    for make in (lambda opt: WarmupCosine(opt, eta0=0.001, omega=0.1, change_point=t, total=100),
                 lambda opt: GAWU(opt, eta0=0.001, omega=0.1, total=100, max_warmup=t)):
        opt = _optimizer()
        sched = make(opt)
        lrs, _ = _run(sched, opt, range(t + 2))
        assert lrs[t] == pytest.approx(peak, rel=2e-3) and max(lrs) == lrs[t]
        assert lrs[t] == pytest.approx(0.001 * math.exp(0.1 * t * (t + 1) / 2), rel=1e-14)


def test_constant_growth_is_the_explicit_option():
    eta0, omega, t, total = 0.01, 0.1, 5, 13
    opt = _optimizer()
    sched = WarmupCosine(opt, eta0=eta0, omega=omega, change_point=t, total=total, growth="constant")
    seen, _ = _run(sched, opt, range(total))
    for u in range(t):  # a constant factor exp(omega) per warm-up unit
        assert seen[u + 1] / seen[u] == pytest.approx(math.exp(omega), rel=1e-14)
    assert seen[t] == pytest.approx(eta0 * math.exp(omega * t), rel=1e-15)
    opt = _optimizer()
    gawu = GAWU(opt, eta0=eta0, omega=omega, total=total, max_warmup=t, growth="constant")
    assert _run(gawu, opt, range(total))[0] == seen


def test_warmup_cosine_last_epoch_resumes_at_the_closed_form():
    opt = _optimizer()
    opt.param_groups[0]["initial_lr"] = 1.0
    sched = WarmupCosine(opt, eta0=0.01, omega=0.1, change_point=5, total=13, last_epoch=6)
    assert sched.last_epoch == 7
    assert _lrs(opt)[0] == pytest.approx(0.01 * math.exp(0.1 * 15) * 0.5 * (1 + math.cos(math.pi * 2 / 8)))


def test_monitor_alternating_gives_minus_one():
    g = torch.randn(50)
    monitor = GradientCorrelationMonitor(h=5)
    assert math.isnan(monitor.update(g))
    for k in range(1, 7):
        assert monitor.update(g if k % 2 == 0 else -g) == -1.0
        assert math.isnan(monitor.mean_correlation) if k < 4 else monitor.mean_correlation == -1.0


def test_monitor_constant_gives_plus_one():
    g = torch.randn(50)
    monitor = GradientCorrelationMonitor(h=3)
    monitor.update(g)
    assert monitor.update(g) == 1.0
    assert math.isnan(monitor.mean_correlation)
    assert monitor.update(g) == 1.0
    assert monitor.mean_correlation == 1.0


def test_monitor_matches_brute_force_eq3():
    rng = np.random.default_rng(0)
    h, steps = 5, 14
    grads = [rng.standard_normal(40)]
    for _ in range(steps - 1):  # mixed signs of correlation: a damped, sometimes flipped random walk
        grads.append(rng.choice([-0.9, 0.9]) * grads[-1] + rng.standard_normal(40))
    grads = np.array(grads)

    def mu(j, k):
        return grads[j] @ grads[k] / (np.linalg.norm(grads[j]) * np.linalg.norm(grads[k]))

    mean_mu = [np.mean([mu(k + m - 1, k + m) for m in range(1, h)]) for k in range(steps - h + 1)]
    monitor = GradientCorrelationMonitor(h=h)
    for k in range(steps):
        cosine = monitor.update(torch.tensor(grads[k], dtype=torch.float32))
        if k == 0:
            assert math.isnan(cosine)
        else:
            assert cosine == pytest.approx(mu(k - 1, k), abs=1e-6)  # float32 input
        if k < h - 1:
            assert math.isnan(monitor.mean_correlation)
        else:  # the window that ends at k starts at k - h + 1
            assert monitor.mean_correlation == pytest.approx(mean_mu[k - h + 1], abs=1e-6)


def test_monitor_reads_parameter_gradients_in_order_with_none_as_zeros():
    a, b, c = (torch.nn.Parameter(torch.zeros(n)) for n in (2, 3, 4))
    from_params, from_tensor = GradientCorrelationMonitor(h=2), GradientCorrelationMonitor(h=2)
    for _ in range(3):
        a.grad, b.grad = torch.randn(2), torch.randn(3)
        flat = torch.cat([a.grad, b.grad, torch.zeros(4)])
        expected = from_tensor.update(flat)
        assert from_params.update(p for p in (a, b, c)) == pytest.approx(expected, abs=1e-15, nan_ok=True)
    single = GradientCorrelationMonitor(h=2)  # one Parameter: its .grad (orthogonal here), not its value
    a.data, a.grad = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    single.update(a)
    a.data = torch.tensor([-1.0, 0.0])
    assert single.update(a) == 1.0


def test_monitor_zero_gradient_is_undefined():
    monitor = GradientCorrelationMonitor(h=2)
    monitor.update(torch.ones(3))
    assert math.isnan(monitor.update(torch.zeros(3)))
    assert math.isnan(monitor.mean_correlation)


# Gradients g_0..g_6 = g, then g_7 = -g, g_8 = g, ... (alternating). Adjacent cosines mu(k-1, k):
# +1 for k = 1..6, -1 from k = 7 on. With h = 5 the mean at unit k averages the cosines of units
# k-3..k: unit 4, 5, 6 -> +1 (armed); unit 7 -> (1+1+1-1)/4 = 0.5; unit 8 -> (1+1-1-1)/4 = 0 (exact
# zero: neither arms nor triggers); unit 9 -> (1-1-1-1)/4 = -0.5 < 0 after a positive: t = 9.
EXPECTED_T = 9
TOTAL = 20


def _gradients(seed=0):
    g = torch.randn(30, generator=torch.Generator().manual_seed(seed))
    return [g if k < 7 or (k - 7) % 2 == 1 else -g for k in range(TOTAL)]


def _run(sched, opt, units, grads=None):
    """The lr of each unit (and, with gradients fed to GAWU, the mean correlation after it)."""
    lrs, means = [], []
    for k in units:
        lrs.append(_lrs(opt)[0])
        if grads is not None:
            sched.observe(grads[k])
            means.append(sched.monitor.mean_correlation)
        _advance(opt, sched)
    return lrs, means


def test_gawu_switches_at_the_first_negative_after_a_positive():
    opt = _optimizer()
    sched = GAWU(opt, eta0=1e-3, omega=0.1, total=TOTAL)
    lrs, means = _run(sched, opt, range(TOTAL), _gradients())
    assert means[4:10] == [1.0, 1.0, 1.0, 0.5, 0.0, -0.5]
    assert sched.change_point == EXPECTED_T
    ref_opt = _optimizer()
    ref = WarmupCosine(ref_opt, eta0=1e-3, omega=0.1, change_point=EXPECTED_T, total=TOTAL)
    assert lrs == _run(ref, ref_opt, range(TOTAL))[0]
    assert max(lrs) == lrs[EXPECTED_T] == 1e-3 * math.exp(0.1 * EXPECTED_T * (EXPECTED_T + 1) / 2)


class _StubMonitor:
    """A user's own monitor: GAWU reads only ``h``, ``mean_correlation`` and its state."""

    h = 5
    mean_correlation = math.nan

    def state_dict(self):
        return {}


@pytest.mark.parametrize(
    ("means", "expected"),
    [
        ([-0.5, -0.8, 0.3, 0.2, -0.1, -0.4], 4),  # negatives before any positive do not switch
        ([math.nan, 0.4, 0.0, math.nan, -0.2], 4),  # zero and NaN between a positive and a negative
        ([0.2, 0.1, 0.0, 0.3], None),  # never negative after a positive: no switch
    ],
)
def test_gawu_switch_rule(means, expected):
    opt, monitor = _optimizer(), _StubMonitor()
    sched = GAWU(opt, eta0=1e-3, omega=0.1, total=10, monitor=monitor)
    for m in means:
        monitor.mean_correlation = m
        _advance(opt, sched)
    assert sched.change_point == expected


def test_gawu_never_detected_keeps_warming_up_unless_capped():
    opt = _optimizer()
    sched = GAWU(opt, eta0=1e-3, omega=0.1, total=8, h=2)
    lrs, _ = _run(sched, opt, range(9), [torch.ones(3)] * 9)
    assert sched.change_point is None
    assert lrs[:8] == pytest.approx([1e-3 * math.exp(0.1 * (u * (u + 1) / 2)) for u in range(8)], rel=1e-15)
    assert lrs[8] == 0.0

    opt = _optimizer()
    sched = GAWU(opt, eta0=1e-3, omega=0.1, total=TOTAL, max_warmup=5)
    lrs, _ = _run(sched, opt, range(TOTAL), _gradients())
    assert sched.change_point == 5  # the mean correlation is still +1 at unit 5
    ref_opt = _optimizer()
    assert lrs == _run(WarmupCosine(ref_opt, 1e-3, 0.1, 5, TOTAL), ref_opt, range(TOTAL))[0]


@pytest.mark.parametrize("split", [1, 4, 8])
def test_gawu_state_dict_round_trip(split):
    grads = _gradients()
    opt = _optimizer()
    full = GAWU(opt, eta0=1e-3, omega=0.1, total=TOTAL)
    expected, _ = _run(full, opt, range(TOTAL), grads)

    opt = _optimizer()
    first = GAWU(opt, eta0=1e-3, omega=0.1, total=TOTAL)
    before, _ = _run(first, opt, range(split), grads)
    buffer = io.BytesIO()
    torch.save({"sched": first.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    opt = _optimizer()
    monitor = GradientCorrelationMonitor(h=5)
    resumed = GAWU(opt, eta0=1e-3, omega=0.1, total=TOTAL, monitor=monitor)
    opt.load_state_dict(saved["opt"])
    resumed.load_state_dict(saved["sched"])
    assert resumed.monitor is monitor
    after, _ = _run(resumed, opt, range(split, TOTAL), grads)
    assert before + after == expected
    assert resumed.change_point == full.change_point == EXPECTED_T


def test_module_example_runs():
    code = textwrap.dedent(schedules.__doc__.split("::\n", 1)[1])
    torch.manual_seed(0)
    namespace = {}
    exec(compile(code, "zigzag.schedules example", "exec"), namespace)
    sched, opt = namespace["sched"], namespace["opt"]
    assert sched.last_epoch == 50
    assert sched.change_point is None or 0 <= sched.change_point < 50
    assert not math.isnan(sched.monitor.mean_correlation)
    assert sched.get_last_lr() == [0.0] and opt.param_groups[0]["lr"] == 0.0  # the budget is spent


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: WarmupCosine(opt, eta0=0.0, omega=0.1, change_point=2, total=10),
        lambda opt: WarmupCosine(opt, eta0=-1e-3, omega=0.1, change_point=2, total=10),
        lambda opt: WarmupCosine(opt, eta0=math.nan, omega=0.1, change_point=2, total=10),
        lambda opt: WarmupCosine(opt, eta0=1e-3, omega=0.0, change_point=2, total=10),
        lambda opt: WarmupCosine(opt, eta0=1e-3, omega=0.1, change_point=-1, total=10),
        lambda opt: WarmupCosine(opt, eta0=1e-3, omega=0.1, change_point=10, total=10),
        lambda opt: WarmupCosine(opt, eta0=1e-3, omega=0.1, change_point=2.0, total=10),
        lambda opt: WarmupCosine(opt, eta0=1e-3, omega=0.1, change_point=0, total=0),
        lambda opt: WarmupCosine(opt, eta0=1e-3, omega=1.0, change_point=9999, total=10000),
        lambda opt: GAWU(opt, eta0=1e-3, omega=-0.1, total=10),
        lambda opt: GAWU(opt, eta0=1e-3, omega=0.1, total=0),
        lambda opt: GAWU(opt, eta0=1e-3, omega=0.1, total=10, max_warmup=10),
        lambda opt: GAWU(opt, eta0=1e-3, omega=0.1, total=100000),
        lambda opt: GAWU(opt, eta0=1e-3, omega=0.1, total=200),  # paper growth: exp(0.1 * 199 * 200 / 2)
        lambda opt: GAWU(opt, eta0=1e-3, omega=0.1, total=10, growth="linear"),
        lambda opt: WarmupCosine(opt, eta0=1e-3, omega=0.1, change_point=2, total=10, growth=None),
        lambda opt: GAWU(opt, eta0=1e-3, omega=0.1, total=10, h=3, monitor=GradientCorrelationMonitor(h=5)),
        lambda opt: GradientCorrelationMonitor(h=1),
    ],
)
def test_invalid_arguments_raise(make):
    with pytest.raises(ZigzagError):
        make(_optimizer())


def test_monitor_bad_input_raises():
    monitor = GradientCorrelationMonitor()
    with pytest.raises(ZigzagError):
        monitor.update([])
    monitor.update(torch.ones(3))
    with pytest.raises(ZigzagError):
        monitor.update(torch.ones(4))
    with pytest.raises(ZigzagError):
        GradientCorrelationMonitor(h=3).load_state_dict(monitor.state_dict())
