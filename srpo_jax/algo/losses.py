"""Per-token losses of SRPO's two branches (SPEC sections 4-6).

Every function here is pure jnp on arrays [..., T] (or [..., T, V] logits) and jittable; the
combined objective that mixes them is in objective.py.

GRPO branch (SPEC 4), as the verl `vanilla` policy loss that SDPO/SRPO reuse:
    ratio = exp(clip(logp - old_logp, -20, 20))
    l = max(-A ratio, -A clip(ratio, 1 - 0.2, 1 + 0.28));  A < 0: l = min(l, -3 A)
    l <- l * w_IS,  w_IS = sg(min(exp(clip(old_logp - rollout_logp, -20, 20)), 2))

SDPO branch (SPEC 5): generalised Jensen-Shannon divergence between student and teacher over
the k student top-k buckets plus one tail bucket, with exact full-vocabulary log-probs. The
per-token loss is D_t * min(sg(ratio_t), 2) * w_IS_t. The ratio is DETACHED, as in the SDPO
code (lasgroup/SDPO, verl/trainer/ppo/core_algos.py, compute_self_distillation_loss:
`negative_approx_kl = (student_log_probs - old_log_probs).detach()`, clamped to [-20, 20],
exp, clamp(max=is_clip)); the whole gradient therefore comes from D_t, and the multiplier is a
stop-gradient token weight, which is what lets the fused kernel take it as `token_weight_N`.

Entropy weighting (SPEC 6): w_t = |S| u_t / Z with u_t = exp(-H_t / tau), Z = sum_S u. It is
exposed in factored form (`entropy_weight_terms`) because a micro-batched or fused learner
must accumulate sum(u * l) and Z separately and divide once.

Softmax, log-softmax, logsumexp, entropy and all reductions run in fp32 (or the input's
dtype when wider, for float64 tests): bf16 loses the small probabilities the tail bucket and
the JSD depend on.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

# Log-sum of the top-k probabilities is clamped below 0 so the tail log(1 - S) stays finite.
_LOG_S_MAX = -1e-7
# Clamp of log-ratios before exp (verl): keeps exp finite for any log-prob difference.
_LOG_RATIO_CLAMP = 20.0


def as_wide(x: jnp.ndarray) -> jnp.ndarray:
    """Promote to at least fp32 (precision for softmax/entropy/loss reductions)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def clamped_ratio(logp, ref_logp) -> jnp.ndarray:
    """exp(clip(logp - ref_logp, -20, 20)); differentiable in logp (zero outside the clamp)."""
    return jnp.exp(jnp.clip(as_wide(logp) - as_wide(ref_logp), -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))


def tis_weight(old_logp, rollout_logp, tis_cap: float | None = 2.0) -> jnp.ndarray:
    """Truncated IS weight between trainer and rollout engine, stop-gradient (SPEC 4).

    rollout_logp None or tis_cap None disables the correction (weight 1).
    """
    old = as_wide(old_logp)
    if rollout_logp is None or tis_cap is None:
        return jnp.ones_like(old)
    w = jnp.minimum(clamped_ratio(old, rollout_logp), tis_cap)
    return lax.stop_gradient(w)


def _broadcast_adv(adv, like: jnp.ndarray) -> jnp.ndarray:
    adv = as_wide(adv)
    if adv.ndim == like.ndim - 1:
        adv = adv[..., None]  # per-sequence advantage [B] -> [B, 1]
    return jnp.broadcast_to(adv, like.shape)


def grpo_token_loss(
    logp,
    old_logp,
    rollout_logp,
    adv,
    mask,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
    tis_cap: float | None = 2.0,
) -> jnp.ndarray:
    """Per-token GRPO loss l_t * w_IS_t, zero where mask is 0; [..., T].

    adv is per sequence [...] or per token [..., T] (the advantage_mix ablation).
    Gradient flows through logp only.
    """
    logp = as_wide(logp)
    adv = _broadcast_adv(adv, logp)
    ratio = clamped_ratio(logp, lax.stop_gradient(as_wide(old_logp)))
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = jnp.where(adv < 0, jnp.minimum(loss, -dual_clip * adv), loss)
    loss = loss * tis_weight(old_logp, rollout_logp, tis_cap)
    return jnp.where(jnp.asarray(mask) > 0, loss, 0.0)


def grpo_clip_indicators(
    logp,
    old_logp,
    adv,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
) -> dict[str, jnp.ndarray]:
    """Per-token 0/1 indicators of which GRPO clip is active (for metrics; no gradient).

    high: A > 0 and ratio > 1 + clip_high; low: A < 0 and ratio < 1 - clip_low (the two halves
    of verl's pg_clipfrac); dual: A < 0 and the dual clip -c A binds (verl's pg_clipfrac_lower).
    """
    logp = lax.stop_gradient(as_wide(logp))
    adv = _broadcast_adv(lax.stop_gradient(adv), logp)
    ratio = clamped_ratio(logp, old_logp)
    high = (adv > 0) & (ratio > 1.0 + clip_high)
    low = (adv < 0) & (ratio < 1.0 - clip_low)
    if dual_clip is None:
        dual = jnp.zeros_like(high)
    else:
        loss = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high))
        dual = (adv < 0) & (loss > -dual_clip * adv)
    f = logp.dtype
    return {"clip_low": low.astype(f), "clip_high": high.astype(f), "clip_dual": dual.astype(f)}


def _add_tail(lp_K: jnp.ndarray) -> jnp.ndarray:
    """Append log(1 - sum exp(lp)) as bucket k; log S clamped <= -1e-7 to stay finite."""
    log_s = jnp.minimum(jax.nn.logsumexp(lp_K, axis=-1, keepdims=True), _LOG_S_MAX)
    return jnp.concatenate([lp_K, jnp.log(-jnp.expm1(log_s))], axis=-1)


def topk_bucket_log_probs(
    student_logits,
    teacher_logits,
    *,
    topk: int = 100,
    add_tail: bool = True,
    temperature: float = 1.0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Student and teacher log-probs over the student's top-k buckets (+ tail); [..., T, k+1].

    Indices come from the STUDENT logits; log-probs are exact (full-vocabulary normaliser).
    add_tail=False renormalises over the k buckets instead, as the SDPO code does. The teacher
    is under stop-gradient.
    """
    z_s = as_wide(student_logits) / temperature
    z_t = lax.stop_gradient(as_wide(teacher_logits)) / temperature
    if z_s.shape != z_t.shape:
        raise ValueError(f"student logits {z_s.shape} and teacher logits {z_t.shape} differ")
    vocab = z_s.shape[-1]
    if not 1 <= topk <= vocab:
        raise ValueError(f"topk={topk} must be in [1, vocab size {vocab}]")
    _, idx_K = lax.top_k(lax.stop_gradient(z_s), topk)
    lp_s = jnp.take_along_axis(z_s, idx_K, axis=-1) - jax.nn.logsumexp(z_s, -1, keepdims=True)
    lp_t = jnp.take_along_axis(z_t, idx_K, axis=-1) - jax.nn.logsumexp(z_t, -1, keepdims=True)
    if add_tail:
        return _add_tail(lp_s), _add_tail(lp_t)
    return jax.nn.log_softmax(lp_s, axis=-1), jax.nn.log_softmax(lp_t, axis=-1)


def _kl(lp_p: jnp.ndarray, lp_q: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(jnp.exp(lp_p) * (lp_p - lp_q), axis=-1)


def generalized_jsd(lp_s, lp_t, alpha: float) -> jnp.ndarray:
    """(1-a) KL(P_s||M) + a KL(P_t||M), M = (1-a) P_s + a P_t, summed over the last axis.

    a = 0 is KL(P_t||P_s), a = 1 is KL(P_s||P_t) (computed directly, as log 0 would appear).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    if alpha == 0.0:
        return _kl(lp_t, lp_s)
    if alpha == 1.0:
        return _kl(lp_s, lp_t)
    log_m = jnp.logaddexp(lp_s + math.log(1.0 - alpha), lp_t + math.log(alpha))
    return (1.0 - alpha) * _kl(lp_s, log_m) + alpha * _kl(lp_t, log_m)


def sdpo_token_divergence(
    student_logits,
    teacher_logits,
    *,
    topk: int = 100,
    alpha: float = 0.5,
    add_tail: bool = True,
    temperature: float = 1.0,
) -> jnp.ndarray:
    """D_t of SPEC 5 from [..., T, V] logits; [..., T]. Gradient reaches the student only."""
    lp_s, lp_t = topk_bucket_log_probs(
        student_logits, teacher_logits, topk=topk, add_tail=add_tail, temperature=temperature
    )
    return generalized_jsd(lp_s, lp_t, alpha)


def sdpo_token_weight(
    logp, old_logp, rollout_logp, *, is_clip: float | None = 2.0, tis_cap: float | None = 2.0
) -> jnp.ndarray:
    """Stop-gradient multiplier min(sg ratio, is_clip) * w_IS of the SDPO token loss."""
    w = tis_weight(old_logp, rollout_logp, tis_cap)
    if is_clip is not None:
        ratio = clamped_ratio(lax.stop_gradient(as_wide(logp)), old_logp)
        w = w * jnp.minimum(ratio, is_clip)
    return lax.stop_gradient(w)


def sdpo_token_loss(
    divergence,
    logp,
    old_logp,
    rollout_logp,
    mask,
    *,
    is_clip: float | None = 2.0,
    tis_cap: float | None = 2.0,
) -> jnp.ndarray:
    """l_t = D_t * min(sg(ratio_t), is_clip) * w_IS_t, zero where mask is 0; [..., T]."""
    w = sdpo_token_weight(logp, old_logp, rollout_logp, is_clip=is_clip, tis_cap=tis_cap)
    return jnp.where(jnp.asarray(mask) > 0, as_wide(divergence) * w, 0.0)


def teacher_entropy(teacher_logits, *, temperature: float = 1.0) -> jnp.ndarray:
    """H_t = -sum_v p log p over the full vocabulary, stop-gradient; [..., T, V] -> [..., T]."""
    z = lax.stop_gradient(as_wide(teacher_logits)) / temperature
    lp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.exp(lp) * lp, axis=-1)


def bucket_entropy(lp_buckets) -> jnp.ndarray:
    """Entropy over the k+1 buckets (option entropy_over="buckets"), stop-gradient."""
    lp = lax.stop_gradient(as_wide(lp_buckets))
    return -jnp.sum(jnp.exp(lp) * lp, axis=-1)


def entropy_weight_terms(
    entropy, mask, tau: float = 1.0
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(u [..., T], Z, |S|): u = exp(-H/tau) on S (0 elsewhere), Z = sum u, |S| = sum mask.

    All stop-gradient. These add up across micro-batches and devices; w = |S| u / Z.
    """
    m = jnp.asarray(mask) > 0
    u = jnp.where(m, jnp.exp(-lax.stop_gradient(as_wide(entropy)) / tau), 0.0)
    return u, jnp.sum(u), jnp.sum(m.astype(u.dtype))


def entropy_weights(entropy, mask, tau: float = 1.0) -> jnp.ndarray:
    """w_t = |S| exp(-H_t/tau) / sum_S exp(-H_s/tau) on S, 0 elsewhere; mean 1 over S."""
    u, z, count = entropy_weight_terms(entropy, mask, tau)
    return lax.stop_gradient(jnp.where(z > 0, count * u / jnp.where(z > 0, z, 1.0), 0.0))
