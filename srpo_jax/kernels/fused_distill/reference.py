"""Executable specification of the fused SDPO distillation loss (SPEC sections 5 and 6).

Plain jnp, materialises the full [N, V] student and teacher logits, differentiates with
ordinary autodiff. Every other implementation in this package (token-chunked XLA, Pallas
GPU, Pallas TPU) must equal this one in values and gradients; tests also hold it against
an independent float64 numpy transcription of the SPEC.

Per routed token n, with z_s = h_s @ W_s / T and z_t = h_t @ W_t / T (teacher under
stop-gradient):
  K      = top-k ids of the *student* logits
  lp[j]  = z[K_j] - logsumexp(z over the full vocabulary)   (student and teacher alike)
  tail   : log_S = min(logsumexp(lp[0..k-1]), -1e-7); lp[k] = log(-expm1(log_S))
           (evaluated as the log-mass outside the top-k, floored; see tail_log_prob)
  D      = (1-a) KL(P_s || M) + a KL(P_t || M), log M = logaddexp(lp_s + log(1-a), lp_t + log a)
           a = 0 -> KL(P_t || P_s);  a = 1 -> KL(P_s || P_t)
  H      = teacher entropy over the full vocabulary (or over the k+1 buckets)
  u      = exp(-H / tau)                                     (stop-gradient)
  numerator = sum_n mask_n * u_n * w_n * D_n ;  z = sum_n mask_n * u_n
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Upper clamp of the top-k log-mass so the tail bucket log(1 - S) stays finite (SPEC 5).
TAIL_LOG_MASS_CAP = -1e-7
# The same clamp seen from the tail: log(1 - exp(-1e-7)).
TAIL_LOG_PROB_FLOOR = math.log(-math.expm1(TAIL_LOG_MASS_CAP))


class FusedDistillOutput(NamedTuple):
    """Result of every fused_distill implementation.

    numerator: scalar, sum_n mask_n * u_n * token_weight_n * D_n (differentiable wrt the student).
    z: scalar, sum_n mask_n * u_n (teacher-only, so no gradient reaches the student).
    divergence_N: per-token D_n for every row (masked rows included), a diagnostic.
    entropy_N: per-token teacher entropy H_n, a diagnostic.
    """

    numerator: jax.Array
    z: jax.Array
    divergence_N: jax.Array
    entropy_N: jax.Array


def tail_log_prob(log_rest_N: jax.Array) -> jax.Array:
    """Tail bucket log(1 - sum exp(lp)), evaluated as the log-mass outside the top-k.

    SPEC writes it as log(-expm1(min(logsumexp(lp), -1e-7))); that form cancels
    catastrophically in fp32 when the top-k hold nearly all the mass (the error grows like
    eps / (1 - S)). log_rest_N = logsumexp of the non-top-k logits minus the full
    logsumexp is the same quantity without the cancellation; the clamp becomes a floor at
    log(-expm1(-1e-7)).
    """
    return jnp.maximum(log_rest_N, TAIL_LOG_PROB_FLOOR)


def bucket_divergence(lps_NK: jax.Array, lpt_NK: jax.Array, alpha: float) -> jax.Array:
    """Generalised JSD over buckets given exact log-probs; alpha 0 / 1 are the two KLs."""
    ps_NK, pt_NK = jnp.exp(lps_NK), jnp.exp(lpt_NK)
    if alpha == 0.0:
        return jnp.sum(pt_NK * (lpt_NK - lps_NK), axis=-1)
    if alpha == 1.0:
        return jnp.sum(ps_NK * (lps_NK - lpt_NK), axis=-1)
    log_m_NK = jnp.logaddexp(lps_NK + math.log(1.0 - alpha), lpt_NK + math.log(alpha))
    kl_s_N = jnp.sum(ps_NK * (lps_NK - log_m_NK), axis=-1)
    kl_t_N = jnp.sum(pt_NK * (lpt_NK - log_m_NK), axis=-1)
    return (1.0 - alpha) * kl_s_N + alpha * kl_t_N


def divergence_from_logits(
    zs_NV: jax.Array,
    zt_NV: jax.Array,
    *,
    topk: int,
    alpha: float,
    add_tail: bool,
    entropy_over: str,
) -> tuple[jax.Array, jax.Array]:
    """Per-token (D_N, H_N) from temperature-scaled fp32 logits."""
    top_vals_NK, top_ids_NK = jax.lax.top_k(zs_NV, topk)
    lse_s_N = jax.nn.logsumexp(zs_NV, axis=-1)
    lse_t_N = jax.nn.logsumexp(zt_NV, axis=-1)
    lps_NK = top_vals_NK - lse_s_N[:, None]
    lpt_NK = jnp.take_along_axis(zt_NV, top_ids_NK, axis=-1) - lse_t_N[:, None]
    if add_tail:
        # Mass outside the top-k: mask the chosen ids (exact even with tied logits).
        rows_N1 = jnp.arange(zs_NV.shape[0])[:, None]
        in_top_NV = jnp.zeros(zs_NV.shape, bool).at[rows_N1, top_ids_NK].set(True)
        rest_s_N = jax.nn.logsumexp(jnp.where(in_top_NV, -jnp.inf, zs_NV), axis=-1) - lse_s_N
        rest_t_N = jax.nn.logsumexp(jnp.where(in_top_NV, -jnp.inf, zt_NV), axis=-1) - lse_t_N
        tail_s_N = tail_log_prob(rest_s_N)
        tail_t_N = tail_log_prob(rest_t_N)
        lps_NK = jnp.concatenate([lps_NK, tail_s_N[:, None]], axis=-1)
        lpt_NK = jnp.concatenate([lpt_NK, tail_t_N[:, None]], axis=-1)
    else:
        # No tail: renormalise over the k buckets, as the SDPO code does (SPEC leaves it open).
        lps_NK = jax.nn.log_softmax(lps_NK, axis=-1)
        lpt_NK = jax.nn.log_softmax(lpt_NK, axis=-1)
    div_N = bucket_divergence(lps_NK, lpt_NK, alpha)
    if entropy_over == "vocab":
        logq_NV = zt_NV - lse_t_N[:, None]
        ent_N = -jnp.sum(jnp.exp(logq_NV) * logq_NV, axis=-1)
    else:
        ent_N = -jnp.sum(jnp.exp(lpt_NK) * lpt_NK, axis=-1)
    return div_N, ent_N


def fused_distill_reference(
    student_hidden_ND: jax.Array,
    teacher_hidden_ND: jax.Array,
    student_unembed_DV: jax.Array,
    teacher_unembed_DV: jax.Array,
    mask_N: jax.Array,
    token_weight_N: jax.Array | None = None,
    *,
    topk: int = 100,
    alpha: float = 0.5,
    tau: float = 1.0,
    add_tail: bool = True,
    entropy_over: str = "vocab",
    temperature: float = 1.0,
) -> FusedDistillOutput:
    """Naive fused_distill: full logits in fp32, autodiff gradients (see module docstring)."""
    f32 = jnp.float32
    # Softmax, log-softmax, entropy and the loss reductions run in fp32: bf16 logsumexp over
    # 150k entries loses the small top-k differences the JSD is made of.
    zs_NV = (student_hidden_ND.astype(f32) @ student_unembed_DV.astype(f32)) / temperature
    teacher_hidden_ND = jax.lax.stop_gradient(teacher_hidden_ND)
    teacher_unembed_DV = jax.lax.stop_gradient(teacher_unembed_DV)
    zt_NV = (teacher_hidden_ND.astype(f32) @ teacher_unembed_DV.astype(f32)) / temperature
    div_N, ent_N = divergence_from_logits(
        zs_NV, zt_NV, topk=topk, alpha=alpha, add_tail=add_tail, entropy_over=entropy_over
    )
    ent_N = jax.lax.stop_gradient(ent_N)
    mask_N = jax.lax.stop_gradient(mask_N.astype(f32))
    if token_weight_N is None:
        token_weight_N = jnp.ones_like(mask_N)
    token_weight_N = jax.lax.stop_gradient(token_weight_N.astype(f32))
    u_N = jnp.exp(-ent_N / tau)
    # where() rather than a product so a masked row never leaks NaN/inf into the sums.
    numerator = jnp.sum(jnp.where(mask_N > 0, mask_N * u_N * token_weight_N * div_N, 0.0))
    z = jnp.sum(jnp.where(mask_N > 0, mask_N * u_N, 0.0))
    # The per-token outputs are diagnostics: only the numerator carries gradient (API contract).
    return FusedDistillOutput(numerator, z, jax.lax.stop_gradient(div_N), ent_N)
