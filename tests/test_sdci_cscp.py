"""SDCI's CSCP stage (rsseg.models.sdci.cscp): Eq. 16 weights, Eq. 17 energy and its minimisers over Eq. 18."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, brentq, minimize
from scipy.special import lambertw
from skimage.segmentation import felzenszwalb

from rsseg.models.sdci.cscp import (
    CSCP,
    _released_prox,
    as_distribution,
    cscp_energy,
    cscp_solve,
    edge_weights,
    felzenszwalb_superpixels,
)

A = 1.2  # λ_C + λ_D with the paper's λ_C = 1.0, λ_D = 0.2


def random_problem(batch: int, k: int, h: int, w: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p_clip = torch.rand(batch, k, h, w, generator=g, dtype=dtype) + 0.05
    p_dino = torch.rand(batch, k, h, w, generator=g, dtype=dtype) + 0.05
    labels = torch.randint(0, 3, (batch, h, w), generator=g)
    wx, wy = edge_weights(labels, dtype=dtype)
    return p_clip / p_clip.sum(1, keepdim=True), p_dino / p_dino.sum(1, keepdim=True), wx, wy


def log_b(p_clip, p_dino):
    return 1.0 * p_clip.log() + 0.2 * p_dino.log()


def assert_on_simplex(q: torch.Tensor) -> None:
    assert (q >= 0).all()
    assert torch.allclose(q.double().sum(1), torch.ones((), dtype=torch.float64), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- Eq. 16, Eq. 17


def test_edge_weights_on_a_hand_made_label_map():
    labels = torch.tensor([[0, 0, 1], [2, 2, 1]])
    wx, wy = edge_weights(labels)
    assert torch.equal(wx, torch.tensor([[[1.0, 0.1], [1.0, 0.1]]]))
    assert torch.equal(wy, torch.tensor([[[0.1, 0.1, 1.0]]]))
    wx2, wy2 = edge_weights(np.stack([labels.numpy(), np.zeros((2, 3), np.int64)]), w_in=0.7, w_cross=0.2)
    assert wx2.shape == (2, 2, 2) and wy2.shape == (2, 1, 3)
    assert torch.allclose(wx2[0], torch.tensor([[0.7, 0.2], [0.7, 0.2]]))
    assert torch.allclose(wy2[1], torch.full((1, 3), 0.7))
    with pytest.raises(ValueError):
        edge_weights(torch.zeros(2, 3))  # float labels


def test_energy_on_a_hand_computed_two_pixel_case():
    # One row of two pixels, K = 2, joined by a cross-superpixel edge (w = 0.1).
    q = torch.tensor([[0.7, 0.4], [0.3, 0.6]], dtype=torch.float64).reshape(1, 2, 1, 2)
    p_clip = torch.tensor([[0.6, 0.5], [0.4, 0.5]], dtype=torch.float64).reshape(1, 2, 1, 2)
    p_dino = torch.tensor([[0.8, 0.3], [0.2, 0.7]], dtype=torch.float64).reshape(1, 2, 1, 2)
    wx, wy = torch.tensor([[[0.1]]], dtype=torch.float64), torch.zeros(1, 0, 2)
    kl_clip = (0.7 * math.log(0.7 / 0.6) + 0.3 * math.log(0.3 / 0.4)  # pixel 1
               + 0.4 * math.log(0.4 / 0.5) + 0.6 * math.log(0.6 / 0.5))  # pixel 2
    kl_dino = (0.7 * math.log(0.7 / 0.8) + 0.3 * math.log(0.3 / 0.2)
               + 0.4 * math.log(0.4 / 0.3) + 0.6 * math.log(0.6 / 0.7))
    tv = 0.1 * (abs(0.7 - 0.4) + abs(0.3 - 0.6))
    for lc, ld, beta in ((1.0, 0.2, 0.1), (0.5, 2.0, 3.0)):
        expected = lc * kl_clip + ld * kl_dino + beta * tv
        energy = cscp_energy(q, p_clip, p_dino, wx, wy, lc, ld, beta)
        assert energy.dtype == torch.float64 and energy.shape == (1,)
        assert energy.item() == pytest.approx(expected, rel=1e-14)


# ------------------------------------------------------------------------------------------ closed-form optima


@pytest.mark.parametrize("schedule", ["fista", "released"])
def test_single_pixel_is_the_normalised_weighted_geometric_mean(schedule):
    p_clip, p_dino, _, _ = random_problem(2, 4, 1, 1, seed=1)
    wx, wy = torch.ones(2, 1, 0), torch.ones(2, 0, 1)  # no edges
    q, info = cscp_solve(p_clip, p_dino, wx, wy, schedule=schedule, tol=1e-10, atol=0)
    geo = p_clip ** (1.0 / A) * p_dino ** (0.2 / A)
    expected = geo / geo.sum(1, keepdim=True)  # = softmax(b/a)
    assert torch.allclose(expected, torch.softmax(log_b(p_clip, p_dino) / A, 1))
    # The released prox is solved inexactly (10-step bisection), so it drifts off the fixed point a little.
    assert torch.allclose(q, expected, rtol=0, atol=1e-12 if schedule == "fista" else 2e-3)
    assert_on_simplex(q)
    if schedule == "fista":
        assert info.converged.all() and (info.gap <= 1e-12).all()


def test_two_pixels_with_a_large_beta_merge():
    p_clip, p_dino, _, _ = random_problem(1, 3, 1, 2, seed=2)
    b = log_b(p_clip, p_dino)
    expected = torch.softmax((b[..., 0] + b[..., 1]) / (2 * A), 1)  # argmin of Σ_pixels F for q1 = q2
    for w in (1.0, 0.1):
        q, info = cscp_solve(p_clip, p_dino, torch.full((1, 1, 1), w), torch.zeros(1, 0, 2), beta=50.0,
                             tol=1e-12, atol=0)
        assert info.converged.all()
        assert torch.allclose(q[..., 0], expected, rtol=0, atol=1e-7)
        assert torch.allclose(q[..., 1], expected, rtol=0, atol=1e-7)
    # With a tiny β the pixels keep (almost) their own closed forms.
    q, _ = cscp_solve(p_clip, p_dino, torch.ones(1, 1, 1), torch.zeros(1, 0, 2), beta=0.0, tol=1e-12, atol=0)
    assert torch.allclose(q, torch.softmax(b / A, 1), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------ random problems


def slsqp_reference(p_clip, p_dino, wx, wy, beta):
    """Eq. 17 for one image as a smooth problem with slack variables t ≥ |q_i − q_j| per edge and class."""
    _, k, h, w = p_clip.shape
    b = log_b(p_clip, p_dino)[0].reshape(k, h * w).numpy().ravel()
    edges = [(y * w + x, y * w + x + 1, wx[0, y, x].item()) for y in range(h) for x in range(w - 1)]
    edges += [(y * w + x, (y + 1) * w + x, wy[0, y, x].item()) for y in range(h - 1) for x in range(w)]
    n_pix, n_edges = h * w, len(edges)
    nq, nt = k * n_pix, k * n_edges
    weights = np.tile([e[2] for e in edges], k)
    ineq = np.zeros((2 * nt, nq + nt))
    row = 0
    for c in range(k):
        for e, (i, j, _) in enumerate(edges):
            for sign in (1, -1):
                ineq[row, c * n_pix + j], ineq[row, c * n_pix + i], ineq[row, nq + c * n_edges + e] = sign, -sign, 1
                row += 1
    eq = np.zeros((n_pix, nq + nt))
    for c in range(k):
        eq[np.arange(n_pix), c * n_pix + np.arange(n_pix)] = 1

    def fun(x):
        q = x[:nq]
        return A * np.sum(q * np.log(q)) - b @ q + beta * weights @ x[nq:]

    def jac(x):
        return np.concatenate([A * (np.log(x[:nq]) + 1) - b, beta * weights])

    x0 = np.concatenate([np.full(nq, 1 / k), np.full(nt, 0.01)])
    res = minimize(fun, x0, jac=jac, method="SLSQP",
                   bounds=Bounds(np.r_[np.full(nq, 1e-12), np.zeros(nt)], np.r_[np.ones(nq), np.full(nt, np.inf)]),
                   constraints=[{"type": "ineq", "fun": lambda x: ineq @ x, "jac": lambda x: ineq},
                                {"type": "eq", "fun": lambda x: eq @ x - 1, "jac": lambda x: eq}],
                   options={"ftol": 1e-12, "maxiter": 2000})
    assert res.success, res.message
    q = np.clip(res.x[:nq].reshape(1, k, h, w), 0, None)
    return torch.from_numpy(q / q.sum(1, keepdims=True))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_default_solver_is_certified_and_beats_the_released_schedule(beta):
    p_clip, p_dino, wx, wy = random_problem(2, 3, 6, 7, seed=3)
    q, info = cscp_solve(p_clip, p_dino, wx, wy, beta=beta, tol=1e-6, atol=0)
    assert info.converged.all() and (info.relative_gap <= 1e-6).all()
    energy = cscp_energy(q, p_clip, p_dino, wx, wy, beta=beta)
    assert torch.allclose(energy, info.energy, rtol=1e-12, atol=0)
    assert (info.dual <= energy).all()
    q_rel, info_rel = cscp_solve(p_clip, p_dino, wx, wy, beta=beta, schedule="released")
    energy_rel = cscp_energy(q_rel, p_clip, p_dino, wx, wy, beta=beta)
    assert (energy <= energy_rel).all()
    assert (info.dual <= energy_rel).all()  # D(π) bounds every feasible point's energy from below
    assert torch.allclose(energy_rel, info_rel.energy, rtol=1e-6, atol=0)  # released iterates in float32


def test_default_solver_matches_an_independent_slsqp_solution():
    p_clip, p_dino, wx, wy = random_problem(2, 3, 4, 5, seed=4)
    for beta in (0.1, 0.4):
        q, info = cscp_solve(p_clip, p_dino, wx, wy, beta=beta, tol=1e-9, atol=0)
        for i in range(2):
            ref = slsqp_reference(p_clip[i:i + 1], p_dino[i:i + 1], wx[i:i + 1], wy[i:i + 1], beta)
            e_ref = cscp_energy(ref, p_clip[i:i + 1], p_dino[i:i + 1], wx[i:i + 1], wy[i:i + 1], beta=beta)
            assert info.dual[i] <= e_ref[0] + 1e-12  # D(π) is a lower bound on any feasible energy
            assert info.energy[i] <= e_ref[0] + info.gap[i] + 1e-12  # E(q) − min E ≤ gap
            assert info.energy[i] == pytest.approx(e_ref[0].item(), rel=1e-8)
            assert torch.allclose(q[i:i + 1], ref, rtol=0, atol=1e-5)


def test_kkt_conditions_with_the_returned_dual_point():
    p_clip, p_dino, wx, wy = random_problem(1, 3, 5, 6, seed=5)
    beta = 0.3
    q, info = cscp_solve(p_clip, p_dino, wx, wy, beta=beta, tol=1e-10, atol=0, return_dual=True)
    px, py = (t[0].numpy() for t in info.dual_point)
    qn, b = q[0].numpy(), log_b(p_clip, p_dino)[0].numpy()
    bx, by = beta * wx[0].numpy(), beta * wy[0].numpy()
    assert (np.abs(px) <= bx + 1e-12).all() and (np.abs(py) <= by + 1e-12).all()  # dual feasibility
    div = np.zeros_like(qn)  # ∇ᵀπ, edge by edge
    _, h, w = qn.shape
    for y in range(h):
        for x in range(w - 1):
            div[:, y, x] -= px[:, y, x]
            div[:, y, x + 1] += px[:, y, x]
    for y in range(h - 1):
        for x in range(w):
            div[:, y, x] -= py[:, y, x]
            div[:, y + 1, x] += py[:, y, x]
    # Stationarity on Δ: a log q − b + ∇ᵀπ is constant over the classes at each pixel (the multiplier of Σq = 1).
    residual = A * np.log(qn) - b + div
    assert np.abs(residual - residual.mean(0, keepdims=True)).max() < 1e-4
    # Complementary slackness: π_e ∇q_e = β w_e |∇q_e| on every edge and class.
    gx, gy = qn[:, :, 1:] - qn[:, :, :-1], qn[:, 1:, :] - qn[:, :-1, :]
    slack = (bx * np.abs(gx) - px * gx).sum() + (by * np.abs(gy) - py * gy).sum()
    assert -1e-12 <= slack < 1e-8


def smooth_scores(batch: int, k: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Min-max normalised smooth noisy score maps in [0, 1], like SDCI's upsampled CLIP/DINO maps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, k, h // 8, w // 8, generator=g)
    maps = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    maps = maps + 0.1 * torch.randn(batch, k, h, w, generator=g)
    lo, hi = maps.amin((2, 3), keepdim=True), maps.amax((2, 3), keepdim=True)
    return (maps - lo) / (hi - lo)


def test_float32_default_on_sdci_like_maps_beats_the_released_schedule():
    h, w = 48, 56
    p_clip = as_distribution(smooth_scores(2, 5, h, w, seed=6))  # class sums > 1.5: the softmax branch
    p_dino = as_distribution(smooth_scores(2, 5, h, w, seed=7))
    wx, wy = edge_weights(np.stack([felzenszwalb_superpixels(blocky_image(h, w, seed=s)) for s in (2, 3)]))
    q, info = cscp_solve(p_clip, p_dino, wx, wy)  # gap ≤ 1e-4·E (relative), float32 iterations
    assert q.dtype == torch.float32 and info.converged.all()
    assert (info.gap <= 1e-4 * info.energy).all() and (info.relative_gap <= 1e-4).all()
    assert_on_simplex(q)
    assert torch.allclose(cscp_energy(q, p_clip, p_dino, wx, wy), info.energy, rtol=1e-5, atol=0)
    q_rel, info_rel = cscp_solve(p_clip, p_dino, wx, wy, schedule="released")
    assert (info.energy < info_rel.energy).all()
    assert (info.dual <= cscp_energy(q_rel, p_clip, p_dino, wx, wy)).all()


def test_default_stopping_rule_is_relative_to_the_energy():
    """The default stop is gap ≤ tol·|E| (tol = 1e-4: E − min E ≤ 0.01 % of E), certified per image.

    The maps are SDCI-like (the softmax branch of as_distribution: flat, E ≈ 0.008 nats per pixel), where
    the former absolute floor of 1e-5 nats per pixel allowed a relative gap of ≈ 1e-3. A tighter tol certifies a
    smaller gap with more iterations.
    """
    h, w = 32, 40
    p_clip = as_distribution(smooth_scores(2, 5, h, w, seed=21))
    p_dino = as_distribution(smooth_scores(2, 5, h, w, seed=22))
    wx, wy = edge_weights(np.stack([felzenszwalb_superpixels(blocky_image(h, w, seed=s)) for s in (5, 6)]))
    _, info = cscp_solve(p_clip, p_dino, wx, wy)
    assert info.converged.all()
    assert (info.relative_gap <= 1e-4).all(), info.relative_gap
    assert torch.equal(info.relative_gap, info.gap / info.energy.abs())
    _, loose = cscp_solve(p_clip, p_dino, wx, wy, tol=1e-2)
    _, tight = cscp_solve(p_clip, p_dino, wx, wy, tol=1e-6)
    assert loose.converged.all() and tight.converged.all()
    assert (loose.relative_gap <= 1e-2).all() and (tight.relative_gap <= 1e-6).all()
    assert (tight.relative_gap < loose.relative_gap).all()
    assert (tight.iterations > info.iterations).all() and (info.iterations >= loose.iterations).all()


@pytest.mark.parametrize("schedule", ["fista", "released"])
def test_simplex_and_batched_equals_per_image(schedule):
    p_clip, p_dino, wx, wy = random_problem(3, 4, 7, 6, seed=7)
    kwargs = {"schedule": schedule, "tol": 1e-8, "atol": 0, "beta": 0.2}
    q, info = cscp_solve(p_clip, p_dino, wx, wy, **kwargs)
    assert q.shape == p_clip.shape and q.dtype == torch.float64
    assert_on_simplex(q)
    # the released schedule iterates in float32: a batch and a single image may sum in another order (intra-op
    # threads split them differently), which moves an iterate by a float32 ulp
    atol = 1e-9 if schedule == "fista" else 1e-6
    for i in range(3):
        qi, info_i = cscp_solve(p_clip[i:i + 1], p_dino[i:i + 1], wx[i:i + 1], wy[i:i + 1], **kwargs)
        assert torch.allclose(q[i:i + 1], qi, rtol=0, atol=atol)
        assert info.iterations[i] == info_i.iterations[0]
    # Shared (unbatched) weights broadcast over the batch.
    q_shared, _ = cscp_solve(p_clip, p_dino, wx[0], wy[0], **kwargs)
    q_first, _ = cscp_solve(p_clip[:1], p_dino[:1], wx[:1], wy[:1], **kwargs)
    assert torch.allclose(q_shared[:1], q_first, rtol=0, atol=atol)


def test_released_prox_matches_the_exact_lambert_w_prox():
    g = torch.Generator().manual_seed(8)
    v = torch.rand(1, 4, 3, 3, generator=g, dtype=torch.float64)
    b = torch.log(torch.rand(1, 4, 3, 3, generator=g, dtype=torch.float64))
    tau = 0.25
    q = _released_prox(v, b, tau, A)
    assert_on_simplex(q)
    c = tau * A
    for y in range(3):
        for x in range(3):  # argmin_q τ(a Σ q log q − ⟨b, q⟩) + ½‖q − v‖² on Δ, solved to machine precision
            d0 = (v[0, :, y, x] + tau * b[0, :, y, x] - c).numpy()

            def q_of(mu, d0=d0):
                return c * lambertw(np.exp((d0 - mu) / c) / c).real

            mu = brentq(lambda m, q_of=q_of: q_of(m).sum() - 1, d0.min() - 30 * c, d0.max() + 30 * c, xtol=1e-14)
            assert np.abs(q[0, :, y, x].numpy() - q_of(mu)).max() < 5e-3  # 10 bisection steps: inexact


def test_iteration_cap_and_certificate_when_not_converged():
    p_clip = as_distribution(smooth_scores(1, 5, 32, 40, seed=14))
    p_dino = as_distribution(smooth_scores(1, 5, 32, 40, seed=15))
    wx, wy = edge_weights(felzenszwalb_superpixels(blocky_image(32, 40, seed=4)))
    q, info = cscp_solve(p_clip, p_dino, wx, wy, tol=1e-9, atol=0, max_iter=7)
    assert info.iterations.item() == 7 and not info.converged.item()
    assert_on_simplex(q)
    energy = cscp_energy(q, p_clip, p_dino, wx, wy)
    assert energy.item() == pytest.approx(info.energy.item(), rel=1e-6)
    q_long, info_long = cscp_solve(p_clip, p_dino, wx, wy, tol=1e-6, atol=0)
    assert info_long.converged.item() and info_long.iterations.item() % 10 == 0  # checked every 10 steps
    assert info.dual.item() <= info_long.energy.item() and info_long.dual.item() <= energy.item()


def test_solver_argument_errors():
    p_clip, p_dino, wx, wy = random_problem(1, 3, 4, 4, seed=9)
    with pytest.raises(ValueError):
        cscp_solve(p_clip, p_dino, wx, wy, schedule="pdhg-exact")
    with pytest.raises(ValueError):
        cscp_solve(p_clip, p_dino, wx[:, :, :2], wy)
    with pytest.raises(ValueError):
        cscp_solve(p_clip, p_dino[..., :3], wx, wy)
    with pytest.raises(ValueError):
        cscp_solve(p_clip.index_fill(1, torch.tensor([0]), 0.0), p_dino, wx, wy)  # not positive


# -------------------------------------------------------------------------------------- probability preparation


def test_as_distribution_cases():
    g = torch.Generator().manual_seed(10)
    negative = torch.rand(1, 4, 5, 5, generator=g) - 0.2
    heavy = torch.rand(1, 4, 5, 5, generator=g) * 0.2 + 0.5  # class sums ≈ 2.4 > 1.5
    light = torch.rand(1, 4, 5, 5, generator=g)
    light = light / light.sum(1, keepdim=True)
    light[0, :, 0, 0] = torch.tensor([0.0, 0.0, 0.25, 0.25])  # a pixel with zeros and sum 0.5
    for x in (negative, heavy):
        assert torch.allclose(as_distribution(x), torch.softmax(x, 1), rtol=0, atol=1e-7)
    raw = as_distribution(light, renormalize=False)
    assert torch.equal(raw, light.clamp(1e-6, 1.0))  # mean class sum ≤ 1.5, no negatives: clamp only
    assert raw[0, :, 0, 0].sum() < 0.51
    fixed = as_distribution(light)
    assert torch.allclose(fixed.sum(1), torch.ones(1, 5, 5), rtol=0, atol=1e-6)
    assert torch.allclose(fixed[0, :, 0, 0], torch.tensor([1e-6, 1e-6, 0.25, 0.25]) / (0.5 + 2e-6))
    # The decision is per image in a batch.
    batch = as_distribution(torch.cat([light, heavy, negative]), renormalize=False)
    assert torch.equal(batch[0], light[0].clamp(1e-6, 1.0))
    assert torch.allclose(batch[1:], torch.softmax(torch.cat([heavy, negative]), 1), rtol=0, atol=1e-7)
    # Exactly 1.5 is not "above 1.5"; values are clamped into [1e-6, 1].
    edge = torch.full((1, 3, 2, 2), 0.5)
    assert torch.equal(as_distribution(edge, renormalize=False), edge)
    assert as_distribution(torch.zeros(1, 2, 2, 2), renormalize=False).min() == 1e-6


def test_renormalisation_does_not_move_the_minimiser():
    p_clip, p_dino, wx, wy = random_problem(1, 3, 5, 5, seed=11)
    scale = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(12)) + 0.2
    q, _ = cscp_solve(p_clip, p_dino, wx, wy, tol=1e-10, atol=0)
    q_scaled, _ = cscp_solve(p_clip * scale, p_dino, wx, wy, tol=1e-10, atol=0)
    assert torch.allclose(q, q_scaled, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ superpixels, module


def blocky_image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (4, 4, 3))
    image = colours.repeat(h // 4, 0).repeat(w // 4, 1).astype(np.float64)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def test_felzenszwalb_superpixels_are_consecutive_and_match_skimage():
    image = blocky_image()
    labels = felzenszwalb_superpixels(image)
    ref = felzenszwalb(image, scale=40, sigma=0.8, min_size=20)
    assert labels.dtype == np.int64 and labels.shape == image.shape[:2]
    n = labels.max() + 1
    assert np.array_equal(np.unique(labels), np.arange(n))
    pairs = np.unique(np.stack([labels.ravel(), ref.ravel()]), axis=1)
    assert pairs.shape[1] == n == len(np.unique(ref))  # a bijection between the two labelings
    for bad in (image.astype(np.float32), image[..., 0], image[..., :2], torch.from_numpy(image)):
        with pytest.raises(ValueError):
            felzenszwalb_superpixels(bad)


@pytest.mark.parametrize("solver", ["fista", "released"])
def test_cscp_module_pipeline(solver):
    image = blocky_image(24, 32, seed=1)
    g = torch.Generator().manual_seed(13)
    clip_scores, dino_scores = torch.rand(2, 1, 4, 24, 32, generator=g)
    module = CSCP(solver=solver)
    assert module.beta == 0.1 and module.lambda_clip == 1.0 and module.lambda_dino == 0.2
    assert module.w_in == 1.0 and module.w_cross == 0.1 and module.scale == 40 and module.min_size == 20
    q = module(image, clip_scores, dino_scores)
    assert q.shape == (1, 4, 24, 32) and module.last_info.schedule == solver
    assert_on_simplex(q)
    # The same pipeline by hand.
    wx, wy = edge_weights(felzenszwalb_superpixels(image))
    expected, _ = cscp_solve(as_distribution(clip_scores), as_distribution(dino_scores), wx, wy, schedule=solver)
    assert torch.equal(q, expected)
    # A B×3×H×W uint8 tensor and K×H×W scores give the same result.
    tensor_image = torch.from_numpy(image).permute(2, 0, 1)[None]
    assert torch.equal(module(tensor_image, clip_scores[0], dino_scores[0]), q)
    with pytest.raises(ValueError):
        module(image[:20], clip_scores, dino_scores)
