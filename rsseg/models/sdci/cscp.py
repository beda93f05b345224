"""CSCP, SDCI's last stage (paper 002, §3.4, Eq. 16–18): fuse the CLIP and DINO probability maps under a
superpixel-weighted total-variation prior by convex optimisation.

* :func:`felzenszwalb_superpixels` — the superpixels S of the tile (scikit-image, scale 40, σ 0.8, min size 20).
* :func:`edge_weights` — Eq. 16, w_pq = w_cross + (w_in − w_cross)·1[s(p) = s(q)] on 4-neighbour pairs.
* :func:`as_distribution` — how the released code turns the score maps into distributions (the paper is silent).
* :func:`cscp_energy` — Eq. 17, E(Q) = Σ_p [λ_C KL(Q_p‖P_C,p) + λ_D KL(Q_p‖P_D,p)] + β Σ_(p,q)∈ε w_pq ‖Q_p − Q_q‖₁,
  each 4-neighbour pair counted once (the paper's bracket puts the edge sum inside Σ_p; read literally that
  would multiply the TV term by the pixel count, which is not what the released code minimises).
* :func:`cscp_solve` — min of Eq. 17 over the per-pixel simplex Δ (Eq. 18), with two schedules:

  - ``"fista"`` (default): accelerated projected gradient ascent (FISTA, Beck & Teboulle 2009) on the dual
    of Eq. 17, stopped on the primal–dual gap. With F(Q) = a Σ Q log Q − ⟨b, Q⟩ + ι_Δ(Q), a = λ_C + λ_D,
    b = λ_C log P_C + λ_D log P_D (so that F is Eq. 17's data term exactly) and ∇ the forward differences,
    β Σ w|∇Q| = max_{|π_e| ≤ βw_e} ⟨∇Q, π⟩, hence Eq. 17 = min_Q max_π F(Q) + ⟨∇Q, π⟩ and its dual is

        D(π) = min_Q F(Q) + ⟨Q, ∇ᵀπ⟩ = −Σ_pixels a·logsumexp_k((b − ∇ᵀπ)/a),   |π_e| ≤ β w_e,

    attained at Q(π) = softmax_k((b − ∇ᵀπ)/a). D is concave and smooth, ∇D(π) = ∇Q(π), with Lipschitz
    constant L = ‖∇‖²·max‖diag(s) − ssᵀ‖/a ≤ 8·(1/2)/a = 4/a; FISTA with step 1/L = a/4 converges as
    O(1/k²) in D. F is a-strongly convex (Pinsker, per pixel w.r.t. ℓ1), so ‖Q(π) − Q*‖² ≤ (2/a)(D* − D(π)):
    the primal candidates converge to the unique minimiser Q*. For any Q ∈ Δ and feasible π,

        gap(Q, π) = E(Q) − D(π) = a Σ_pixels KL(Q_p ‖ Q(π)_p) + Σ_edges (β w_e |(∇Q)_e| − π_e (∇Q)_e) ≥ 0,

    which bounds E(Q) − min E; it is evaluated in float64 from this form (every edge term is ≥ 0; no two
    large energies are subtracted). Two primal candidates are certified: Q(π) and a running average of the
    Q(y_k) with weights ∝ k² (a heuristic that cuts the TV error of the last iterate several-fold; the
    certificate makes any candidate safe). An image stops when its certified relative gap
    gap/|E| ≤ tol (default 1e-4: E(Q) − min E ≤ 0.01 % of E(Q)) and leaves the batch; ``max_iter`` caps the
    loop. (An optional absolute floor ``atol``, in nats per pixel, loosens this to gap ≤ tol·|E| + atol·H·W;
    it is 0 by default. Until 2026-12 the default was atol = 1e-5, which dominated on SDCI-like maps: on a
    512² tile it certified only a relative gap of ≈ 0.55 %, not 1e-4.) The iterations run in float32 (the gap is
    screened in float32 every ``check_every`` steps and confirmed in float64). A Chambolle–Pock PDHG with an
    entropic (KL) primal step, whose prox is a closed-form softmax, plain or accelerated with the strong
    convexity of F, needed 1.3–2× more steps than this for the same certified gap on SDCI-like maps.
  - ``"released"``: the released code's Chambolle–Pock PDHG with a Euclidean primal step whose prox is
    solved inexactly (Lambert-W Newton steps inside a 10-step bisection), a fixed 100 iterations. Its final
    (Q, π) pair is certified by the same gap for comparison.

* :class:`CSCP` — the stage as a module with the paper's defaults: image + two score maps → Q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from rsseg.extras import require

__all__ = ["CSCP", "CSCPInfo", "as_distribution", "cscp_energy", "cscp_solve", "edge_weights",
           "felzenszwalb_superpixels"]

Schedule = Literal["fista", "released"]
SCHEDULES = ("fista", "released")

# The released ConvexFusionPrimalDual call (ovs/label_utils.py), summarised in docs/methods.md §4.5.6.
RELEASED = {"n_iters": 100, "tau": 0.25, "sigma": 0.25, "theta": 1.0, "n_bisect": 10, "newton_steps": 5,
            "exp_clamp": 50.0, "bracket": 20.0}


def felzenszwalb_superpixels(image: np.ndarray, scale: float = 40.0, sigma: float = 0.8,
                             min_size: int = 20) -> np.ndarray:
    """Felzenszwalb–Huttenlocher superpixels S of an H×W×3 uint8 RGB tile (§3.4), as int64 labels 0..M−1."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an H×W×3 numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    felzenszwalb = require("skimage.segmentation", "sdci", "SDCI's superpixels").felzenszwalb
    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int64)


def edge_weights(labels: Tensor | np.ndarray, w_in: float = 1.0, w_cross: float = 0.1,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Eq. 16 on the 4-neighbour pairs of H×W or B×H×W superpixel labels.

    Returns (w_x, w_y): horizontal pairs (p, p + x̂) as B×H×(W−1) and vertical pairs (p, p + ŷ) as B×(H−1)×W
    (B = 1 for an H×W input), w = w_cross + (w_in − w_cross)·1[s(p) = s(q)].
    """
    labels = torch.as_tensor(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"expected integer H×W or B×H×W labels, got {labels.dtype} {tuple(labels.shape)}")
    same_x = labels[:, :, 1:] == labels[:, :, :-1]
    same_y = labels[:, 1:, :] == labels[:, :-1, :]
    w_x = w_cross + (w_in - w_cross) * same_x.to(dtype)
    w_y = w_cross + (w_in - w_cross) * same_y.to(dtype)
    return w_x, w_y


def as_distribution(scores: Tensor, eps: float = 1e-6, renormalize: bool = True) -> Tensor:
    """The released code's probability preparation of a …×K×H×W score map (decided per leading index).

    A map with a negative value or a mean per-pixel class sum above 1.5 is softmaxed over the classes
    (temperature 1); then every map is clamped to [eps, 1]. The clamp can leave a pixel's values not summing
    to 1 (the released code keeps them so); with ``renormalize`` (default) each pixel is divided by its sum so
    that Eq. 17's KL terms are true divergences (≥ 0, the energy ≥ 0, its relative gap meaningful). This does
    not change the minimiser: scaling P_p by s_p shifts E by −λ log s_p for every Q_p ∈ Δ, a constant.
    """
    if scores.ndim < 3:
        raise ValueError(f"expected …×K×H×W scores, got shape {tuple(scores.shape)}")
    x = scores if scores.is_floating_point() else scores.float()
    negative = (x < 0).flatten(-3).any(-1)
    heavy = x.sum(-3).mean((-2, -1)) > 1.5
    soft = (negative | heavy)[..., None, None, None]
    x = torch.where(soft, torch.softmax(x, dim=-3), x).clamp(eps, 1.0)
    if renormalize:
        x = x / x.sum(-3, keepdim=True)
    return x


def _grad(q: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences ∇Q on the horizontal and vertical 4-neighbour pairs (Neumann boundary)."""
    return q[..., :, 1:] - q[..., :, :-1], q[..., 1:, :] - q[..., :-1, :]


def _grad_t(px: Tensor, py: Tensor) -> Tensor:
    """The adjoint ∇ᵀπ (= −div π) of :func:`_grad`."""
    out = px.new_zeros(*px.shape[:-1], px.shape[-1] + 1)
    out[..., :, :-1] -= px
    out[..., :, 1:] += px
    out[..., :-1, :] -= py
    out[..., 1:, :] += py
    return out


def _edge_bounds(w_x: Tensor, w_y: Tensor, batch: int, h: int, w: int, beta: float, dtype: torch.dtype,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """β·w as B×1×H×(W−1) and B×1×(H−1)×W (accepts H×(W−1) or B'×H×(W−1) weights, B' ∈ {1, B})."""
    out = []
    for weights, shape in ((w_x, (h, w - 1)), (w_y, (h - 1, w))):
        weights = torch.as_tensor(weights)
        if weights.ndim == 2:
            weights = weights[None]
        if weights.ndim != 3 or tuple(weights.shape[1:]) != shape or weights.shape[0] not in (1, batch):
            raise ValueError(f"edge weights of shape {tuple(weights.shape)} do not fit B×K×H×W = {batch}×K×{h}×{w}")
        out.append((beta * weights.to(device=device, dtype=dtype))[:, None].expand(batch, 1, *shape))
    return out[0], out[1]


def _check_maps(q: Tensor, *maps: Tensor) -> None:
    if q.ndim != 4 or q.shape[1] < 1 or q.shape[2] < 1 or q.shape[3] < 1:
        raise ValueError(f"expected B×K×H×W maps, got shape {tuple(q.shape)}")
    for m in maps:
        if m.shape != q.shape:
            raise ValueError(f"map shapes differ: {tuple(q.shape)} vs {tuple(m.shape)}")


def cscp_energy(q: Tensor, p_clip: Tensor, p_dino: Tensor, wx: Tensor, wy: Tensor, lambda_clip: float = 1.0,
                lambda_dino: float = 0.2, beta: float = 0.1) -> Tensor:
    """Eq. 17 per image (B, float64): Σ_p [λ_C KL(q_p‖p_clip,p) + λ_D KL(q_p‖p_dino,p)] + β Σ_edges w‖q_p − q_q‖₁.

    ``q``, ``p_clip``, ``p_dino`` are B×K×H×W (KL uses 0·log 0 = 0; it is +inf where q > 0 = p); ``wx``, ``wy``
    are Eq. 16's weights (H×(W−1) / (H−1)×W, optionally with a batch dimension); each pair counts once.
    """
    _check_maps(q, p_clip, p_dino)
    q, p_clip, p_dino = q.double(), p_clip.double(), p_dino.double()
    bx, by = _edge_bounds(wx, wy, q.shape[0], q.shape[2], q.shape[3], beta, torch.float64, q.device)
    neg_entropy = torch.xlogy(q, q)
    data = lambda_clip * (neg_entropy - torch.xlogy(q, p_clip)) + lambda_dino * (neg_entropy - torch.xlogy(q, p_dino))
    gx, gy = _grad(q)
    tv = (bx * gx.abs()).sum((1, 2, 3)) + (by * gy.abs()).sum((1, 2, 3))
    return data.sum((1, 2, 3)) + tv


@dataclass
class CSCPInfo:
    """What a :func:`cscp_solve` run did, per image (tensors of length B).

    ``gap`` is the certified primal–dual gap E(q) − D(π) ≥ E(q) − min E of the returned q, ``energy`` its
    Eq. 17 value (float64), ``dual`` = D(π) a lower bound on min E, ``converged`` whether
    gap ≤ tol·|energy| + atol·H·W held (atol = 0 by default: the relative rule; for ``"released"``: whether
    it happens to hold after its 100 steps). ``relative_gap`` = gap/|energy|, the certified relative
    suboptimality (E(q) − min E)/E(q) ≤ relative_gap; ``tol`` and ``atol`` the rule the run used.
    ``dual_point`` (with ``return_dual=True``): the certifying π = (π_x B×K×H×(W−1), π_y B×K×(H−1)×W).
    """

    schedule: str
    iterations: Tensor
    gap: Tensor
    energy: Tensor
    dual: Tensor
    converged: Tensor
    dual_point: tuple[Tensor, Tensor] | None = None
    tol: float | None = None
    atol: float | None = None

    @property
    def relative_gap(self) -> Tensor:
        """The certified relative gap gap/|energy| per image (what ``tol`` bounds when ``atol`` = 0)."""
        return self.gap / self.energy.abs().clamp_min(torch.finfo(torch.float64).tiny)


def _certify(candidates: list[Tensor], px: Tensor, py: Tensor, b: Tensor, a: float, bx: Tensor, by: Tensor,
             with_q_pi: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The candidate (each B×K×H×W on Δ; Q(π) too if ``with_q_pi``) with the smallest gap against the dual
    point π = (px, py), per image, in ``b``'s dtype; returns (q, gap, energy = D(π) + gap, D(π)).

    gap(Q, π) = a Σ_p KL(Q_p‖Q(π)_p) + Σ_e (β w_e |∇Q|_e − π_e ∇Q_e): both sums have non-negative terms.
    """
    dtype = b.dtype
    px, py = px.to(dtype), py.to(dtype)
    z = (b - _grad_t(px, py)) / a
    lse = torch.logsumexp(z, 1, keepdim=True)
    log_q_pi = z.sub_(lse)
    dual = -a * lse.sum((1, 2, 3))
    best_q, best_gap = None, None
    for q in [log_q_pi.exp()] * with_q_pi + [c.to(dtype) for c in candidates]:
        q = q / q.sum(1, keepdim=True)
        gx, gy = _grad(q)
        gap = (bx * gx.abs() - px * gx).sum((1, 2, 3)) + (by * gy.abs() - py * gy).sum((1, 2, 3))
        if best_q is not None or not with_q_pi:  # the KL term vanishes for Q(π) itself
            gap = gap + a * (torch.xlogy(q, q) - q * log_q_pi).sum((1, 2, 3))
        gap = gap.double().clamp_min(0.0)  # each term is ≥ 0 up to rounding
        if best_q is None:
            best_q, best_gap = q, gap
        else:
            better = gap < best_gap
            best_q = torch.where(better[:, None, None, None], q, best_q)
            best_gap = torch.where(better, gap, best_gap)
    return best_q, best_gap, dual.double() + best_gap, dual.double()


def _solve_fista(b: Tensor, a: float, bx: Tensor, by: Tensor, tol: float, atol: float, max_iter: int,
                 check_every: int, dtype: torch.dtype, return_dual: bool) -> tuple[Tensor, CSCPInfo]:
    """FISTA on the dual (π, extrapolated point y); Q(y) averaged with weights ∝ k² as a second candidate.

    Every ``check_every`` steps the gap is screened in the iterations' dtype; images that pass are certified
    in float64 (the decision and the reported numbers use only the float64 gap) and leave the batch. The
    loop works in preallocated buffers (fresh multi-MB tensors each step cost page faults on a CPU).
    """
    batch, k, h, w = b.shape
    step = a / 4.0  # 1/L, L = ‖∇‖²·(1/2)/a ≤ 8·(1/2)/a
    z0 = b / a
    z0 = (z0 - z0.amax(1, keepdim=True)).to(dtype)  # a per-pixel shift leaves the softmax unchanged
    hi_x = bx.to(dtype).expand(batch, k, h, w - 1).contiguous()
    hi_y = by.to(dtype).expand(batch, k, h - 1, w).contiguous()
    # |∇ᵀπ| ≤ 4 max βw per pixel and class: exp() of the shifted logits cannot overflow or all underflow.
    plain_exp = 8.0 * max(float(bx.max()) if bx.numel() else 0.0, float(by.max()) if by.numel() else 0.0) / a < 30
    state = {"hi_x": hi_x, "hi_y": hi_y, "lo_x": -hi_x, "lo_y": -hi_y, "z0": z0,
             "px": z0.new_zeros(batch, k, h, w - 1), "py": z0.new_zeros(batch, k, h - 1, w)}
    state |= {"yx": state["px"].clone(), "yy": state["py"].clone(), "nx": torch.empty_like(state["px"]),
              "ny": torch.empty_like(state["py"]), "gx": torch.empty_like(state["px"]),
              "gy": torch.empty_like(state["py"]), "gt": torch.empty_like(z0), "q": torch.empty_like(z0),
              "q_avg": torch.zeros_like(z0), "sum": z0.new_empty(batch, 1, h, w)}
    shift = b.amax(1).sum((1, 2))  # a·Σ_pixels max_k(b/a): what the shift of z0 adds to D(π)
    weight_sum, t = 0.0, 1.0
    active = torch.arange(batch, device=b.device)
    out_q = torch.empty_like(b)
    out = {name: torch.zeros(batch, dtype=torch.float64, device=b.device) for name in ("gap", "energy", "dual")}
    iterations = torch.zeros(batch, dtype=torch.long, device=b.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=b.device)
    dual_point = None
    if return_dual:
        dual_point = (b.new_zeros(batch, k, h, w - 1), b.new_zeros(batch, k, h - 1, w))
    for it in range(1, max_iter + 1):
        st = state
        gt, q = st["gt"], st["q"]
        gt.zero_()  # ∇ᵀy
        gt[..., :, :-1].sub_(st["yx"])
        gt[..., :, 1:].add_(st["yx"])
        gt[..., :-1, :].sub_(st["yy"])
        gt[..., 1:, :].add_(st["yy"])
        torch.sub(st["z0"], gt, alpha=1.0 / a, out=q)  # Q(y) = softmax((b − ∇ᵀy)/a), the Lagrangian's minimiser
        if plain_exp:
            q.exp_()
            q.div_(torch.sum(q, 1, keepdim=True, out=st["sum"]))
        else:
            q.copy_(torch.softmax(q, 1))
        weight = float(it * it)
        weight_sum += weight
        st["q_avg"].lerp_(q, weight / weight_sum)  # weight 1 at it = 1
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        extrapolate = 1.0 + (t - 1.0) / t_next
        t = t_next
        for ax, (hi_i, lo_i, p_i, n_i, y_i, g_i) in enumerate((("hi_x", "lo_x", "px", "nx", "yx", "gx"),
                                                                ("hi_y", "lo_y", "py", "ny", "yy", "gy"))):
            g = st[g_i]
            if ax == 0:
                torch.sub(q[..., :, 1:], q[..., :, :-1], out=g)  # ∇D(y) = ∇Q(y)
            else:
                torch.sub(q[..., 1:, :], q[..., :-1, :], out=g)
            torch.add(st[y_i], g, alpha=step, out=st[n_i]).clamp_(st[lo_i], st[hi_i])  # ascent + box projection
            torch.lerp(st[p_i], st[n_i], extrapolate, out=st[y_i])  # y = π⁺ + (t−1)/t⁺ (π⁺ − π)
            st[p_i], st[n_i] = st[n_i], st[p_i]
        last = it == max_iter
        if it % check_every and not last:
            continue
        px, py, q_avg = st["px"], st["py"], st["q_avg"]
        if dtype != torch.float64 and not last:  # cheap screen before the float64 certificate
            _, gap, energy, _ = _certify([q_avg], px, py, st["z0"] * a, a, st["hi_x"][:, :1], st["hi_y"][:, :1])
            energy = energy - shift[active]
            if not (gap <= tol * energy.abs() + atol * h * w).any():
                continue
        q_best, gap, energy, dual = _certify([q_avg], px, py, b[active], a, bx[active], by[active])
        ok = gap <= tol * energy.abs() + atol * h * w
        done = torch.ones_like(ok) if last else ok
        if not done.any():
            continue
        idx = active[done]
        out_q[idx] = q_best[done]
        for name, value in (("gap", gap), ("energy", energy), ("dual", dual)):
            out[name][idx] = value[done]
        iterations[idx] = it
        converged[idx] = ok[done]
        if return_dual:
            dual_point[0][idx], dual_point[1][idx] = px[done].double(), py[done].double()
        keep = ~done
        if not keep.any():
            break
        active = active[keep]
        state = {name: value[keep] for name, value in state.items()}
    return out_q, CSCPInfo("fista", iterations, out["gap"], out["energy"], out["dual"], converged,
                           dual_point, tol, atol)


def _released_div(px: Tensor, py: Tensor) -> Tensor:
    """∇ᵀπ summed in the released code's order (x part boundary/interior/boundary, then the y part): the same
    value as :func:`_grad_t`, but the 100-step bisection schedule amplifies last-bit rounding differences."""
    out = px.new_zeros(*px.shape[:-1], px.shape[-1] + 1)
    if px.shape[-1]:  # a one-pixel-wide (or -tall) image has no pairs on that axis
        out[..., :, 0] += -px[..., :, 0]
        out[..., :, 1:-1] += px[..., :, :-1] - px[..., :, 1:]
        out[..., :, -1] += px[..., :, -1]
    if py.shape[-2]:
        out[..., 0, :] += -py[..., 0, :]
        out[..., 1:-1, :] += py[..., :-1, :] - py[..., 1:, :]
        out[..., -1, :] += py[..., -1, :]
    return out


def _released_prox(v: Tensor, b: Tensor, tau: float, a: float) -> Tensor:
    """prox_{τF}(v) on Δ as the released code solves it: q_k = c·W(exp((v_k + τb_k − c − μ)/c)/c), c = τa, W the
    Lambert W by Newton steps from log(1 + z) (its 1e-12 guard in the Newton denominator kept), μ by bisection
    on Σ_k max(q_k, 0) = 1, then renormalised (same operations, same order: float32 rounding as the code)."""
    r = RELEASED
    c = tau * a
    d0 = v + tau * b - c

    def q_of(mu: Tensor) -> Tensor:
        z = torch.exp(((d0 - mu) / c).clamp(-r["exp_clamp"], r["exp_clamp"])) / c
        lw = torch.log(z + 1.0)
        for _ in range(r["newton_steps"]):
            e = torch.exp(lw)
            lw = lw - (lw * e - z) / (e * (lw + 1.0) + 1e-12)
        return (c * lw).clamp_min(0.0)

    lo = d0.amin(1, keepdim=True) - r["bracket"] * c
    hi = d0.amax(1, keepdim=True) + r["bracket"] * c
    for _ in range(r["n_bisect"]):
        mid = 0.5 * (lo + hi)
        above = q_of(mid).sum(1, keepdim=True) > 1.0  # Σq decreases in μ: the root lies above mid
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    q = q_of(0.5 * (lo + hi))
    return q / q.sum(1, keepdim=True).clamp_min(1e-12)


def _solve_released(p_clip: Tensor, p_dino: Tensor, lambda_clip: float, lambda_dino: float, wx: Tensor,
                    wy: Tensor, beta: float, b: Tensor, a: float, bx: Tensor, by: Tensor, tol: float, atol: float,
                    dtype: torch.dtype, return_dual: bool) -> tuple[Tensor, CSCPInfo]:
    """The released PDHG: q⁰ = softmax(b/a), π⁰ = 0, τ = σ = 0.25, θ = 1, 100 steps, no stopping test.

    Its inputs are prepared in ``dtype`` as the code does (P clamped at 1e-12 and renormalised per pixel,
    b = λ_C log P_C + λ_D log P_D, bounds β·w); ``b``, ``bx``, ``by`` (float64) serve the certificate."""
    r = RELEASED
    tau, sigma, theta = r["tau"], r["sigma"], r["theta"]
    batch, _, h, w = b.shape
    p_clip, p_dino = (p.to(dtype).clamp_min(1e-12) for p in (p_clip, p_dino))
    p_clip, p_dino = p_clip / p_clip.sum(1, keepdim=True), p_dino / p_dino.sum(1, keepdim=True)
    bw = lambda_clip * torch.log(p_clip) + lambda_dino * torch.log(p_dino)
    bx_w, by_w = _edge_bounds(wx, wy, batch, h, w, beta, dtype, b.device)
    q = torch.softmax(bw / a, dim=1)
    q_bar = q
    px = torch.zeros_like(q[..., :, :-1])
    py = torch.zeros_like(q[..., :-1, :])
    for _ in range(r["n_iters"]):
        gx, gy = _grad(q_bar)
        px = torch.minimum(torch.maximum(px + sigma * gx, -bx_w), bx_w)
        py = torch.minimum(torch.maximum(py + sigma * gy, -by_w), by_w)
        q_prev = q
        q = _released_prox(q - tau * _released_div(px, py), bw, tau, a)
        q_bar = q + theta * (q - q_prev)
    q64, gap, energy, dual = _certify([q], px, py, b, a, bx, by, with_q_pi=False)  # its own q, its final π
    iterations = torch.full((batch,), r["n_iters"], dtype=torch.long, device=b.device)
    return q64, CSCPInfo("released", iterations, gap, energy, dual, gap <= tol * energy.abs() + atol * h * w,
                         (px.double(), py.double()) if return_dual else None, tol, atol)


def cscp_solve(p_clip: Tensor, p_dino: Tensor, wx: Tensor, wy: Tensor, lambda_clip: float = 1.0,
               lambda_dino: float = 0.2, beta: float = 0.1, schedule: Schedule = "fista", tol: float = 1e-4,
               atol: float = 0.0, max_iter: int = 2000, check_every: int = 10,
               dtype: torch.dtype | None = None, return_dual: bool = False) -> tuple[Tensor, CSCPInfo]:
    """Minimise Eq. 17 over Δ (Eq. 18) for B×K×H×W distributions ``p_clip``, ``p_dino`` (positive).

    ``schedule="fista"`` iterates until the certified gap ≤ ``tol``·|E| per image, i.e. the certified
    relative gap ``info.relative_gap`` ≤ tol (default 1e-4: E(q) − min E ≤ 0.01 % of E(q); E ≥ 0 for
    normalised inputs), or ``max_iter``, checking every ``check_every`` steps. ``atol`` (nats per pixel,
    default 0) optionally adds an absolute allowance: gap ≤ tol·|E| + atol·H·W. ``"released"`` runs the
    released code's 100 PDHG steps (``tol``/``atol`` then only set ``info.converged``). ``dtype`` is the
    iterations' precision: by default float32 (as the released code), or float64 for ``"fista"`` when
    tol < 1e-5 and atol < 1e-6 ask for more than float32 iterations can certify (float32 iterates stall near
    a relative gap of ~1e-6); gaps and energies are always float64. Returns (q, info): q on the simplex
    at every pixel, in ``p_clip``'s dtype (float32 if not floating), and a :class:`CSCPInfo` (with the
    certifying dual point if ``return_dual``).
    """
    _check_maps(p_clip, p_dino)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    a = float(lambda_clip + lambda_dino)
    if a <= 0 or lambda_clip < 0 or lambda_dino < 0 or beta < 0:
        raise ValueError("expected λ_C, λ_D ≥ 0 with λ_C + λ_D > 0 and β ≥ 0")
    if max_iter < 1 or check_every < 1:
        raise ValueError("max_iter and check_every must be ≥ 1")
    batch, _, h, w = p_clip.shape
    out_dtype = p_clip.dtype if p_clip.is_floating_point() else torch.float32
    if dtype is None:
        dtype = torch.float64 if (schedule == "fista" and tol < 1e-5 and atol < 1e-6) else torch.float32
    p64 = [p.double() for p in (p_clip, p_dino)]
    if schedule == "released":  # the code renormalises each pixel itself (clamped maps need not sum to 1)
        p64 = [p / p.sum(1, keepdim=True) for p in p64]
    b = lambda_clip * p64[0].log() + lambda_dino * p64[1].log()
    if not torch.isfinite(b).all():
        raise ValueError("p_clip and p_dino must be positive and finite (see as_distribution)")
    bx, by = _edge_bounds(wx, wy, batch, h, w, beta, torch.float64, p_clip.device)
    if schedule == "released":
        q, info = _solve_released(p_clip, p_dino, lambda_clip, lambda_dino, wx, wy, beta, b, a, bx, by, tol, atol,
                                  dtype, return_dual)
    else:
        q, info = _solve_fista(b, a, bx, by, tol, atol, max_iter, check_every, dtype, return_dual)
    return q.to(out_dtype), info


class CSCP(nn.Module):
    """SDCI's CSCP stage with the paper's defaults (§3.4 and appendix: w_in 1.0, w_cross 0.10, λ_C 1.0,
    λ_D 0.2, β 0.10; the released code's Felzenszwalb scale 40, σ 0.8, min size 20).

    ``forward(image, clip_scores, dino_scores)``: ``image`` an H×W×3 uint8 numpy tile or a B×3×H×W uint8
    tensor (superpixels are computed on the CPU), the scores B×K×H×W (K×H×W for one image) at the image's
    size; the scores go through :func:`as_distribution` and the solver runs on their device. Returns
    q (B×K×H×W on the simplex); the run's :class:`CSCPInfo` is kept in ``last_info`` (its ``relative_gap``
    is the certified relative gap, ≤ ``tol`` when converged). The label map is ``q.argmax(1)``. ``tol`` is
    relative to the energy (default 1e-4, 0.01 %); ``atol`` (nats per pixel, default 0) as in :func:`cscp_solve`.
    """

    def __init__(self, w_in: float = 1.0, w_cross: float = 0.1, lambda_clip: float = 1.0, lambda_dino: float = 0.2,
                 beta: float = 0.1, scale: float = 40.0, sigma: float = 0.8, min_size: int = 20,
                 solver: Schedule = "fista", tol: float = 1e-4, atol: float = 0.0, max_iter: int = 2000,
                 renormalize: bool = True) -> None:
        super().__init__()
        if solver not in SCHEDULES:
            raise ValueError(f"solver must be one of {SCHEDULES}, got {solver!r}")
        self.w_in, self.w_cross = w_in, w_cross
        self.lambda_clip, self.lambda_dino, self.beta = lambda_clip, lambda_dino, beta
        self.scale, self.sigma, self.min_size = scale, sigma, min_size
        self.solver, self.tol, self.atol, self.max_iter = solver, tol, atol, max_iter
        self.renormalize = renormalize
        self.last_info: CSCPInfo | None = None

    def superpixels(self, image: np.ndarray | Tensor) -> Tensor:
        """B×H×W int64 superpixel labels of an H×W×3 numpy tile or a B×3×H×W (or 3×H×W) uint8 tensor."""
        if isinstance(image, np.ndarray):
            tiles = [image]
        elif isinstance(image, Tensor):
            if image.dtype != torch.uint8 or image.ndim not in (3, 4) or image.shape[-3] != 3:
                raise ValueError(f"expected a B×3×H×W uint8 tensor, got {image.dtype} {tuple(image.shape)}")
            batch = image[None] if image.ndim == 3 else image
            tiles = list(batch.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy())
        else:
            raise ValueError(f"expected a numpy array or a tensor, got {type(image).__name__}")
        labels = [felzenszwalb_superpixels(t, self.scale, self.sigma, self.min_size) for t in tiles]
        return torch.from_numpy(np.stack(labels))

    def forward(self, image: np.ndarray | Tensor, clip_scores: Tensor, dino_scores: Tensor) -> Tensor:
        if clip_scores.ndim == 3:
            clip_scores, dino_scores = clip_scores[None], dino_scores[None]
        _check_maps(clip_scores, dino_scores)
        labels = self.superpixels(image)
        if labels.shape[0] != clip_scores.shape[0] or labels.shape[1:] != clip_scores.shape[2:]:
            raise ValueError(f"image {tuple(labels.shape)} and scores {tuple(clip_scores.shape)} do not match")
        wx, wy = edge_weights(labels.to(clip_scores.device), self.w_in, self.w_cross)
        p_clip = as_distribution(clip_scores, renormalize=self.renormalize)
        p_dino = as_distribution(dino_scores, renormalize=self.renormalize)
        q, self.last_info = cscp_solve(p_clip, p_dino, wx, wy, self.lambda_clip, self.lambda_dino, self.beta,
                                       schedule=self.solver, tol=self.tol, atol=self.atol, max_iter=self.max_iter)
        return q

    def extra_repr(self) -> str:
        return (f"w_in={self.w_in}, w_cross={self.w_cross}, lambda_clip={self.lambda_clip}, "
                f"lambda_dino={self.lambda_dino}, beta={self.beta}, scale={self.scale}, sigma={self.sigma}, "
                f"min_size={self.min_size}, solver={self.solver!r}, tol={self.tol}, atol={self.atol}, "
                f"max_iter={self.max_iter}")
