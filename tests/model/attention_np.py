"""float64 NumPy causal grouped-query attention over each row's valid keys (test oracle,
written from the attention definition: softmax(q k^T / sqrt(H)) v, unchunked)."""

from __future__ import annotations

import numpy as np


def reference_attention_np(q_BTNH, k_BTKH, v_BTKH, valid_BT) -> np.ndarray:
    """float64 NumPy causal GQA over valid keys (the tests' oracle; pad rows are zero)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q_BTNH, k_BTKH, v_BTKH))
    b, t, n, h = q.shape
    g = n // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    valid = np.asarray(valid_BT, bool)
    allowed = np.tril(np.ones((t, t), bool))[None] & valid[:, None, :]
    scores = np.where(allowed[:, None], scores, -np.inf)
    m = scores.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(scores - m)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
    out = np.einsum("bnts,bsnh->btnh", p, v)
    return out * valid[:, :, None, None]
