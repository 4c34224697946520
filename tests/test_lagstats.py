"""Lag statistics against a NumPy brute force and constructed sequences."""

import numpy as np
import pytest
import torch

from zigzag.lagstats import CHUNK, LANE_BLOCKS, FlatGradients, LagRing
from zigzag.models import build_model


def brute_force(grads: np.ndarray, lags: int):
    """In float64: dot[k, l] = <g_k, g_{k-l}>; the share of entries with g_k * g_{k-l} < 0 among all entries, among
    those non-zero in both, and weighted by |g_k * g_{k-l}| (the flipped entries' share of sum |g_k * g_{k-l}|)."""
    k_steps = len(grads)
    dot, opp, opp_nonzero, opp_weight = (np.full((k_steps, lags + 1), np.nan) for _ in range(4))
    for k in range(k_steps):
        for lag in range(min(k, lags) + 1):
            a, b = grads[k].astype(np.float64), grads[k - lag].astype(np.float64)
            product = a * b
            dot[k, lag] = product.sum()
            opp[k, lag] = np.mean(product < 0)
            with np.errstate(invalid="ignore"):  # 0 / 0 where a gradient is zero everywhere: NaN
                opp_nonzero[k, lag] = np.sum(product < 0) / np.sum((a != 0) & (b != 0))
                opp_weight[k, lag] = np.abs(product[product < 0]).sum() / np.abs(product).sum()
    return dot, opp, opp_nonzero, opp_weight


def run_ring(grads: np.ndarray, lags: int):
    ring = LagRing(grads.shape[1], lags)
    rows = [ring.push(torch.from_numpy(g)) for g in grads]
    return tuple(np.stack([r[i].numpy() for r in rows]) for i in range(4))


@pytest.mark.parametrize("lags", [1, 3, 8])
def test_random_sequence_matches_brute_force(lags):
    rng = np.random.default_rng(lags)
    grads = rng.standard_normal((13, 257)).astype(np.float32)
    grads[:, :20] = 0.0  # exact zeros never count as opposite
    grads[3, 50:60] = 0.0
    grads[rng.random(grads.shape) < 0.25] = 0.0  # and zeros that differ from step to step
    dot, opp, opp_nonzero, opp_weight = run_ring(grads, lags)
    ref_dot, ref_opp, ref_nonzero, ref_weight = brute_force(grads, lags)
    np.testing.assert_array_equal(np.isnan(dot), np.isnan(ref_dot))
    np.testing.assert_allclose(dot, ref_dot, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(opp, ref_opp)
    np.testing.assert_array_equal(np.isnan(opp_nonzero), np.isnan(ref_nonzero))
    np.testing.assert_allclose(opp_nonzero, ref_nonzero, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(opp_weight), np.isnan(ref_weight))
    np.testing.assert_allclose(opp_weight, ref_weight, rtol=1e-6, atol=0)


def test_sign_flip_counts_match_brute_force_across_blocks_with_a_zero_block():
    """Several blocks of CHUNK entries and a tail, a whole block zero at one step, zeros at a quarter of the
    entries, and a step that is zero everywhere (its shares among non-zero entries and by weight are NaN)."""
    lags, n = 3, 2 * CHUNK + 1000
    rng = np.random.default_rng(7)
    grads = (rng.standard_normal((7, n)) * rng.random(n) ** 3).astype(np.float32)
    grads[rng.random(grads.shape) < 0.25] = 0.0
    grads[2, CHUNK:2 * CHUNK] = 0.0
    grads[5] = 0.0
    dot, opp, opp_nonzero, opp_weight = run_ring(grads, lags)
    ref_dot, ref_opp, ref_nonzero, ref_weight = brute_force(grads, lags)
    np.testing.assert_allclose(dot, ref_dot, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(opp, ref_opp, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(opp_nonzero), np.isnan(ref_nonzero))
    np.testing.assert_allclose(opp_nonzero, ref_nonzero, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(opp_weight), np.isnan(ref_weight))
    assert np.isnan(opp_weight[5, :4]).all() and np.isnan(opp_nonzero[5, :4]).all()
    np.testing.assert_allclose(opp_weight, ref_weight, rtol=1e-6, atol=0)


def test_alternating_sequence_gives_minus_one_and_full_sign_shift():
    g = torch.tensor([1.0, -2.0, 3.0, 0.5])
    ring = LagRing(4, 3)
    for k, grad in enumerate([g, -g, g, -g]):
        dot, opp, opp_nonzero, opp_weight = ring.push(grad)
    cos1 = dot[1] / torch.sqrt(dot[0] * dot[0])
    assert cos1.item() == pytest.approx(-1.0)
    assert opp[1].item() == 1.0 and opp[2].item() == 0.0 and opp[3].item() == 1.0
    assert opp_nonzero.tolist() == [0.0, 1.0, 0.0, 1.0] and opp_weight.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert dot[2].item() == pytest.approx(dot[0].item())


def test_constant_sequence_gives_plus_one_and_no_sign_shift():
    g = torch.tensor([1.0, -2.0, 0.0])
    ring = LagRing(3, 2)
    rows = [ring.push(g) for _ in range(3)]
    dot, opp, opp_nonzero, opp_weight = rows[-1]
    assert (dot[1:] / dot[0]).tolist() == [1.0, 1.0]
    assert opp.tolist() == [0.0, 0.0, 0.0]
    assert opp_nonzero.tolist() == [0.0, 0.0, 0.0] and opp_weight.tolist() == [0.0, 0.0, 0.0]
    assert torch.isnan(rows[0][0][1:]).all() and torch.isnan(rows[1][0][2])


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((9, 31)).astype(np.float32)
    ring = LagRing(31, 4)
    for g in grads[:5]:
        ring.push(torch.from_numpy(g))
    resumed = LagRing(31, 4)
    resumed.load_state_dict(ring.state_dict())
    for g in grads[5:]:
        a, b = ring.push(torch.from_numpy(g)), resumed.push(torch.from_numpy(g))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_flat_gradients_are_views_filled_by_backward():
    torch.manual_seed(0)
    model = build_model("cnn", width=0.25, in_channels=1, batch_norm=True)
    grads = FlatGradients(model)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        grads.zero_()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert grads.intact()
    reference = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(grads.flat, reference)
    assert grads.flat.abs().sum() > 0


def test_dot_products_match_float64_at_resnet34_size():
    """At 21,282,122 parameters (ResNet-34) every dot is within 1e-6 (relative) of the float64 reference;
    a float32 matrix-vector product is off by about 1e-3 here."""
    n, lags = 21_282_122, 2
    rng = np.random.default_rng(0)
    scale = (rng.random(n, dtype=np.float32) ** 4) * np.float32(1e-2)  # gradient-like: most entries tiny
    common = rng.standard_normal(n, dtype=np.float32)
    grads = [(common * np.float32((-1) ** k * 0.8) + rng.standard_normal(n, dtype=np.float32)) * scale
             for k in range(lags + 1)]
    ring = LagRing(n, lags)
    for k, g in enumerate(grads):
        dot = ring.push(torch.from_numpy(g)).dot
    ref = np.array([grads[-1].astype(np.float64) @ grads[-1 - lag].astype(np.float64) for lag in range(lags + 1)])
    rel = np.abs(dot.numpy() - ref) / np.abs(ref)
    assert rel.max() <= 1e-6, rel


def test_per_layer_statistics_match_brute_force_per_tensor_and_leave_the_whole_vector_bit_identical():
    """Tensors that straddle blocks of CHUNK entries, share one, span several, and one of a single entry: each
    tensor's dot and opposite-sign share equal the float64 brute force on its slice; summed over tensors the dots
    give the whole-vector dot; the whole-vector statistics equal those of a ring without layers bit for bit."""
    lags, sizes = 3, [5, CHUNK - 3, 7, 2 * CHUNK + 11, 300, 1]
    n = sum(sizes)
    rng = np.random.default_rng(3)
    grads = (rng.standard_normal((7, n)) * rng.random(n) ** 3).astype(np.float32)
    grads[rng.random(grads.shape) < 0.25] = 0.0
    grads[2, 5:CHUNK + 2] = 0.0  # one tensor zero at one step
    plain, layered = LagRing(n, lags), LagRing(n, lags, layer_sizes=sizes)
    rows = []
    for g in grads:
        whole = plain.push(torch.from_numpy(g))
        stats, per_layer = layered.push_layers(torch.from_numpy(g))
        for a, b in zip(whole, stats, strict=True):
            assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num())
        rows.append((stats.dot.numpy(), per_layer.dot.numpy(), per_layer.opposite.numpy()))
    dot = np.stack([r[0] for r in rows])
    layer_dot, layer_opp = np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])
    assert layer_dot.shape == layer_opp.shape == (7, len(sizes), lags + 1)
    ends = np.cumsum(sizes)
    for t, (start, end) in enumerate(zip(ends - sizes, ends, strict=True)):
        ref_dot, ref_opp, _, _ = brute_force(grads[:, start:end], lags)
        np.testing.assert_array_equal(np.isnan(layer_dot[:, t]), np.isnan(ref_dot))
        np.testing.assert_allclose(layer_dot[:, t], ref_dot, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(layer_opp[:, t], ref_opp)
    np.testing.assert_allclose(layer_dot.sum(1), dot, rtol=1e-6, atol=1e-6 * np.nanmax(dot[:, 0]))  # of |g|^2
    assert np.isnan(layer_dot[0, :, 1:]).all() and np.isfinite(layer_dot[3:]).all()


def test_push_layers_needs_the_layer_sizes():
    with pytest.raises(ValueError, match="layer_sizes"):
        LagRing(4, 1).push_layers(torch.ones(4))
    with pytest.raises(ValueError, match="n_params"):
        LagRing(4, 1, layer_sizes=[1, 2])


def test_batched_block_products_give_the_same_statistics_as_the_block_loop():
    """The GPU's way (batched products over spans of several blocks), run on the CPU: the sign-flip counts equal
    those of the per-block loop exactly, the dots and overlaps to float32 rounding (the sums run in another order);
    with and without exact zeros."""
    lags, n = 2, 5 * CHUNK + 77
    rng = np.random.default_rng(11)
    grads = rng.standard_normal((5, n)).astype(np.float32)
    grads[3:, : 2 * CHUNK][rng.random((2, 2 * CHUNK)) < 0.3] = 0.0  # zeros only in the last two steps
    loop, batched = LagRing(n, lags), LagRing(n, lags)
    batched._scratch = [torch.empty(lags + 1, 2 * CHUNK)]
    batched._lanes = [batched._make_spans(2 * CHUNK)]  # spans of two blocks, and a span of one
    assert [span.blocks for span in batched._lanes[0]] == [2, 2, None, None]  # batched, batched, one block, tail
    for g in grads:
        a, b = loop.push(torch.from_numpy(g)), batched.push(torch.from_numpy(g))
        assert torch.equal(a.opposite.nan_to_num(), b.opposite.nan_to_num())
        assert torch.equal(a.opposite_nonzero.nan_to_num(), b.opposite_nonzero.nan_to_num())
        torch.testing.assert_close(b.dot, a.dot, rtol=0, atol=1e-5 * float(a.dot[0]), equal_nan=True)  # of |g|^2
        torch.testing.assert_close(b.opposite_weight, a.opposite_weight, rtol=1e-5, atol=1e-6, equal_nan=True)
    ref_dot, ref_opp, ref_nonzero, _ = brute_force(grads, lags)
    np.testing.assert_allclose(b.dot.numpy(), ref_dot[-1], rtol=0, atol=1e-6 * ref_dot[-1, 0])
    np.testing.assert_array_equal(b.opposite.numpy(), ref_opp[-1])
    np.testing.assert_allclose(b.opposite_nonzero.numpy(), ref_nonzero[-1], rtol=0, atol=1e-12)


def test_two_lanes_on_two_threads_give_the_statistics_of_one():
    """A ring of at least ``LANE_BLOCKS`` blocks pushed with two CPU threads runs its blocks in two lanes at once;
    every statistic equals, bit for bit, the same ring's pushed on one thread (one lane after the other), and the
    counts equal float64 brute force."""
    lags, n = 2, LANE_BLOCKS * CHUNK + 5
    rng = np.random.default_rng(12)
    grads = rng.standard_normal((4, n)).astype(np.float32)
    grads[2:, ::3] = 0.0
    threads = torch.get_num_threads()
    two, one = LagRing(n, lags), LagRing(n, lags)
    assert len(two._lanes) == 2
    try:
        for g in grads:
            torch.set_num_threads(2)
            a = two.push(torch.from_numpy(g))
            assert two._pool is not None and torch.get_num_threads() == 2
            torch.set_num_threads(1)
            b = one.push(torch.from_numpy(g))
            for x, y in zip(a, b):
                assert torch.equal(x.nan_to_num(), y.nan_to_num())
    finally:
        torch.set_num_threads(threads)
    _, ref_opp, ref_nonzero, _ = brute_force(grads, lags)
    np.testing.assert_array_equal(a.opposite.numpy(), ref_opp[-1])
    np.testing.assert_allclose(a.opposite_nonzero.numpy(), ref_nonzero[-1], rtol=0, atol=1e-12)
