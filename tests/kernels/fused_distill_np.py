"""Float64 numpy transcription of SPEC sections 5-6, written independently of the package.

Shared by the fused-distillation tests as their ground truth; gradients are checked against
central finite differences of `np_fused_distill` along random directions.
"""

from __future__ import annotations

import numpy as np


def _lse(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _with_tail(lp: np.ndarray) -> np.ndarray:
    log_s = np.minimum(_lse(lp), -1e-7)
    return np.concatenate([lp, np.log(-np.expm1(log_s))[:, None]], axis=1)


def np_fused_distill(
    hs, ht, ws, wt, mask, tw, *, topk, alpha, tau, add_tail, entropy_over, temperature
):
    """(numerator, z, divergence per token, teacher entropy per token), all float64."""
    hs, ht, ws, wt = (np.asarray(a, np.float64) for a in (hs, ht, ws, wt))
    mask, tw = np.asarray(mask, np.float64), np.asarray(tw, np.float64)
    zs, zt = hs @ ws / temperature, ht @ wt / temperature
    # Top-k of the student: stable argsort of the negated logits.
    ids = np.argsort(-zs, axis=1, kind="stable")[:, :topk]
    lps = np.take_along_axis(zs, ids, 1) - _lse(zs)[:, None]
    lpt = np.take_along_axis(zt, ids, 1) - _lse(zt)[:, None]
    if add_tail:
        lps, lpt = _with_tail(lps), _with_tail(lpt)
    else:  # renormalised over the k buckets (the SDPO code's choice without a tail)
        lps, lpt = lps - _lse(lps)[:, None], lpt - _lse(lpt)[:, None]
    ps, pt = np.exp(lps), np.exp(lpt)
    if alpha == 0.0:
        div = np.sum(pt * (lpt - lps), 1)
    elif alpha == 1.0:
        div = np.sum(ps * (lps - lpt), 1)
    else:
        m = (1 - alpha) * ps + alpha * pt
        div = (1 - alpha) * np.sum(ps * (lps - np.log(m)), 1) + alpha * np.sum(
            pt * (lpt - np.log(m)), 1
        )
    if entropy_over == "vocab":
        logq = zt - _lse(zt)[:, None]
        ent = -np.sum(np.exp(logq) * logq, 1)
    else:
        ent = -np.sum(pt * lpt, 1)
    u = np.exp(-ent / tau)
    live = mask > 0
    numerator = np.sum(np.where(live, mask * u * tw * div, 0.0))
    z = np.sum(np.where(live, mask * u, 0.0))
    return numerator, z, div, ent


def fd_directional(fn, x: np.ndarray, direction: np.ndarray, eps: float = 1e-6) -> float:
    """Central difference of scalar fn at x along direction, float64."""
    x = np.asarray(x, np.float64)
    return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)
