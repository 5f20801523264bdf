"""The combined SRPO objective and its ablations (SPEC sections 3, 7 and 8).

    L = ( sum_{i: m_i=0} sum_t l^GRPO_{i,t} + sum_{i: m_i=1} sum_t w_{i,t} l^SDPO_{i,t} )
        / sum_i |y_i|

returned as (numerator, denominator): divide once, after summing over micro-batches.

Entropy weights w_t = |S| u_t / Z (u_t = exp(-H_t/tau), Z = sum_S u) are normalised over the
routed tokens S of the whole OPTIMISATION batch, so the SDPO term is kept factored:

    ObjectiveParts(grpo_sum, sdpo_sum = sum_S c_t u_t l_t, sdpo_z = Z, sdpo_count = |S|,
                   denominator)
    numerator = grpo_sum + (|S| / Z) * sdpo_sum                              (`combine`)

with c_t the aggregation factor (1, or 1/|y_i| for "seq-mean-token-mean"). Every field is a
plain sum, so parts add across micro-batches and devices. Two exact ways for a learner:

1. Per-token path (naive logits): compute the batch-wide scale |S|/Z first (`sdpo_scale`,
   from the teacher entropies of every micro-batch; the teacher is stop-gradient) and pass it
   as `sdpo_scale=` to `srpo_objective` on each micro-batch; sum the numerators, gradients and
   denominators; divide once.
2. Fused path (kernels/fused_distill): call fused_distill on the routed tokens with
   mask_N = routed valid tokens and token_weight_N = `sdpo_token_multiplier(...)`; its
   (numerator, z) are exactly (sdpo_sum, sdpo_z) here (pass them as
   ObjectiveInputs.fused_sdpo). Accumulate the gradients of grpo_sum and of sdpo_sum
   separately (or fix the scale first as in 1) and form g_grpo + (|S|/Z) g_sdpo at the end.
Both paths agree because the kernel's u, Z and token weight are the definitions used here
(tested in tests/algo/test_objective.py::test_fused_form_matches_per_token_form). Methods
without entropy weighting (srpo_no_dw, sdpo) need the kernel's u = 1, i.e. tau = inf, so
that its z equals |S|; otherwise the fused numerator would silently be entropy-weighted.
Micro-batched sums equal the full batch up to float rounding (1 ulp observed in float64),
not bit for bit: the two sum the same terms in a different order.

Methods (SPEC 3, 8) are records of switches (algo/methods.py), read here: `grpo` (the GRPO
term on the non-routed rollouts; without it, e.g. sdpo, those rollouts give zero loss but
count in the denominator), `sdpo` (the distillation term on sdpo_mask), `entropy_weights`
(srpo; w = 1 otherwise) and `teacher_advantage` (advantage_mix: per-token advantage A_i +
lambda * sg(log pi_phi - log pi_theta), 0 for rollouts without a teacher).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from srpo_jax.algo import losses
from srpo_jax.algo import methods as methods_lib

LOSS_AGGS = ("token-mean", "seq-mean-token-mean")


class ObjectiveParts(NamedTuple):
    """Additive pieces of the objective (all scalars); see the module docstring."""

    grpo_sum: jnp.ndarray
    sdpo_sum: jnp.ndarray
    sdpo_z: jnp.ndarray
    sdpo_count: jnp.ndarray
    denominator: jnp.ndarray


def combine(parts: ObjectiveParts) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(numerator, denominator) with the scale |S|/Z taken from `parts` itself."""
    return parts.grpo_sum + sdpo_scale_from(parts) * parts.sdpo_sum, parts.denominator


def sdpo_scale_from(parts: ObjectiveParts) -> jnp.ndarray:
    """|S| / Z, stop-gradient; 0 when there are no routed tokens."""
    z = lax.stop_gradient(parts.sdpo_z)
    return jnp.where(z > 0, parts.sdpo_count / jnp.where(z > 0, z, 1.0), 0.0)


def sdpo_scale(entropy_BT, routed_mask_BT, tau: float = 1.0) -> jnp.ndarray:
    """|S| / sum_S exp(-H/tau) over a whole optimisation batch (pass to every micro-batch)."""
    _, z, count = losses.entropy_weight_terms(entropy_BT, routed_mask_BT, tau)
    return jnp.where(z > 0, count / jnp.where(z > 0, z, 1.0), 0.0)


# Packed layout: the per-token arrays are [K, L] streams of rows laid end to end and
# row_ids_BT gives each token's row (an index into the [B] arrays; masked tokens may carry any
# row). Without row_ids_BT, axis 0 is the row and axis -1 the token, as everywhere else.


def rows_to_tokens(x_B, row_ids_BT=None):
    """A per-row array at every token: [B, 1] (rows layout) or [K, L] (packed)."""
    x_B = jnp.asarray(x_B)
    return x_B[:, None] if row_ids_BT is None else jnp.take(x_B, row_ids_BT, axis=0)


def row_sums(x_BT, row_ids_BT=None, num_rows: int | None = None):
    """Per-row sums [B] of a per-token array (segment sums over the packed rows)."""
    if row_ids_BT is None:
        return jnp.sum(x_BT, axis=-1)
    return jax.ops.segment_sum(x_BT.reshape(-1), row_ids_BT.reshape(-1), num_rows)


def aggregation(
    response_mask_BT, loss_agg: str = "token-mean", dtype=jnp.float32, row_ids_BT=None, rows=None
):
    """(factor_BT, denominator): token-mean -> (mask, #tokens); seq-mean-token-mean ->
    (mask / |y_i|, #non-empty sequences). Padding rows (|y_i| = 0) count in neither.
    Packed (row_ids_BT, `rows` rows): the same per row, with |y_i| a segment sum."""
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGS}")
    mask = (jnp.asarray(response_mask_BT) > 0).astype(dtype)
    if loss_agg == "token-mean":
        return mask, jnp.sum(mask)
    if row_ids_BT is not None:
        length_B = row_sums(mask, row_ids_BT, rows)
        factor = mask / jnp.maximum(rows_to_tokens(length_B, row_ids_BT), 1.0)
        return factor, jnp.sum((length_B > 0).astype(dtype))
    length_B1 = jnp.sum(mask, axis=-1, keepdims=True)
    factor = mask / jnp.maximum(length_B1, 1.0)
    return factor, jnp.sum((length_B1 > 0).astype(dtype))


def routed_token_mask(response_mask_BT, sdpo_mask_B, row_ids_BT=None) -> jnp.ndarray:
    """S as a [B, T] 0/1 float mask: valid response tokens of routed rollouts."""
    routed = rows_to_tokens(jnp.asarray(sdpo_mask_B) > 0, row_ids_BT)
    mask = (jnp.asarray(response_mask_BT) > 0) & routed
    return mask.astype(jnp.float32)


def sdpo_token_multiplier(
    logp_BT,
    old_logp_BT,
    rollout_logp_BT,
    response_mask_BT,
    *,
    loss_agg="token-mean",
    is_clip=2.0,
    tis_cap=2.0,
    row_ids_BT=None,
    rows=None,
) -> jnp.ndarray:
    """Stop-gradient per-token factor c_t * min(sg ratio, is_clip) * w_IS (fused token_weight_N)."""
    dtype = losses.as_wide(logp_BT).dtype
    factor, _ = aggregation(response_mask_BT, loss_agg, dtype, row_ids_BT, rows)
    w = losses.sdpo_token_weight(
        logp_BT, old_logp_BT, rollout_logp_BT, is_clip=is_clip, tis_cap=tis_cap
    )
    return lax.stop_gradient(factor * w)


def _masked_stats(x, mask, prefix: str) -> dict[str, jnp.ndarray]:
    n = jnp.sum(mask)
    safe_n = jnp.maximum(n, 1.0)
    mean = jnp.sum(jnp.where(mask > 0, x, 0.0)) / safe_n
    var = jnp.sum(jnp.where(mask > 0, (x - mean) ** 2, 0.0)) / safe_n
    any_ = n > 0
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_std": jnp.sqrt(var),
        f"{prefix}_min": jnp.where(any_, jnp.min(jnp.where(mask > 0, x, jnp.inf)), 0.0),
        f"{prefix}_max": jnp.where(any_, jnp.max(jnp.where(mask > 0, x, -jnp.inf)), 0.0),
    }


class ObjectiveInputs(NamedTuple):
    """The per-token arrays of one (micro-)batch, [B, T] or [B] (a pytree: jit-friendly).

    logp_BT: log pi_theta(y_t) (differentiable); old_logp_BT: trainer log-probs before the
    update; rollout_logp_BT: rollout-engine log-probs (None: no TIS); adv_B: group advantages;
    response_mask_BT: 1 on valid response tokens; sdpo_mask_B: routing from routing.route;
    sdpo_divergence_BT: D_t from losses.sdpo_token_divergence (only routed tokens are read);
    entropy_BT: teacher entropy H_t (srpo; metrics otherwise); teacher_logp_BT and
    has_teacher_B: advantage_mix; correct_B: metrics only; fused_sdpo: (numerator, z) from
    the fused kernel, in place of sdpo_divergence_BT.
    """

    logp_BT: Any
    old_logp_BT: Any
    rollout_logp_BT: Any
    adv_B: Any
    response_mask_BT: Any
    sdpo_mask_B: Any
    sdpo_divergence_BT: Any = None
    entropy_BT: Any = None
    teacher_logp_BT: Any = None
    has_teacher_B: Any = None
    correct_B: Any = None
    fused_sdpo: Any = None
    row_ids_BT: Any = None  # packed layout: each token's row (see rows_to_tokens)


@dataclasses.dataclass(frozen=True)
class ObjectiveOptions:
    """The method and its hyper-parameters (SPEC 4, 7, 8)."""

    method: str | methods_lib.Method = "srpo"
    loss_agg: str = "token-mean"
    tau: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0
    tis_cap: float | None = 2.0
    is_clip: float | None = 2.0
    mix_lambda: float = 0.1


def _grpo_sum(x: ObjectiveInputs, o: ObjectiveOptions, adv, factor, grpo_tokens, metrics):
    """The GRPO term's sum and its clip-fraction metrics (into `metrics`)."""
    kw = dict(clip_low=o.clip_low, clip_high=o.clip_high, dual_clip=o.dual_clip)
    l_grpo = losses.grpo_token_loss(
        x.logp_BT, x.old_logp_BT, x.rollout_logp_BT, adv, grpo_tokens, tis_cap=o.tis_cap, **kw
    )
    clips = losses.grpo_clip_indicators(x.logp_BT, x.old_logp_BT, adv, **kw)
    n_grpo = jnp.maximum(jnp.sum(grpo_tokens), 1.0)
    for name, ind in clips.items():
        metrics[f"grpo_{name}_frac"] = jnp.sum(ind * grpo_tokens) / n_grpo
    return jnp.sum(factor * l_grpo)


def _sdpo_sum(x: ObjectiveInputs, o: ObjectiveOptions, m, routed, u, z, dtype):
    """(sum_S c_t u_t l_t, Z): the SDPO term from the divergences or the fused kernel."""
    if not m.sdpo:
        return jnp.zeros((), dtype), z
    if x.fused_sdpo is not None:
        return x.fused_sdpo
    if x.sdpo_divergence_BT is None:
        raise ValueError(f"method {m.name!r} distils: pass sdpo_divergence_BT or fused_sdpo")
    mult = sdpo_token_multiplier(
        x.logp_BT,
        x.old_logp_BT,
        x.rollout_logp_BT,
        x.response_mask_BT,
        loss_agg=o.loss_agg,
        is_clip=o.is_clip,
        tis_cap=o.tis_cap,
        row_ids_BT=x.row_ids_BT,
        rows=jnp.shape(x.adv_B)[0],
    )
    d = jnp.where(routed > 0, losses.as_wide(x.sdpo_divergence_BT), 0.0)
    return jnp.sum(u * mult * d), z


def objective_parts(
    x: ObjectiveInputs, options: ObjectiveOptions = ObjectiveOptions()
) -> tuple[ObjectiveParts, dict[str, jnp.ndarray]]:
    """The additive parts and metrics of one (micro-)batch (see `srpo_objective`)."""
    o, m = options, methods_lib.get(options.method)
    dtype = losses.as_wide(x.logp_BT).dtype
    valid = (jnp.asarray(x.response_mask_BT) > 0).astype(dtype)
    rows, row_ids = jnp.shape(x.adv_B)[0], x.row_ids_BT
    factor, denominator = aggregation(x.response_mask_BT, o.loss_agg, dtype, row_ids, rows)
    sdpo_B = jnp.asarray(x.sdpo_mask_B) > 0 if m.sdpo else jnp.zeros(rows, bool)
    routed = routed_token_mask(x.response_mask_BT, sdpo_B, row_ids)
    grpo_tokens = valid * (1.0 - routed) if m.grpo else jnp.zeros_like(valid)
    metrics: dict[str, jnp.ndarray] = {}

    adv = rows_to_tokens(losses.as_wide(x.adv_B), row_ids)
    if m.teacher_advantage:
        if x.teacher_logp_BT is None or x.has_teacher_B is None:
            raise ValueError(
                f"{m.name} mixes teacher advantages: pass teacher_logp_BT and has_teacher_B"
            )
        has_t = rows_to_tokens(jnp.asarray(x.has_teacher_B) > 0, row_ids)
        adv, metrics["sdpo_advantage_mean"] = _mixed_advantage(
            adv, x.logp_BT, x.teacher_logp_BT, has_t, valid, o.mix_lambda
        )
    grpo_sum = _grpo_sum(x, o, adv, factor, grpo_tokens, metrics)

    if m.entropy_weights:
        if x.entropy_BT is None:
            raise ValueError(f"method {m.name!r} weights by teacher entropy: pass entropy_BT")
        u, z, count = losses.entropy_weight_terms(x.entropy_BT, routed, o.tau)
    else:
        u, z, count = routed, jnp.sum(routed), jnp.sum(routed)
    sdpo_sum, z = _sdpo_sum(x, o, m, routed, u, z, dtype)
    parts = ObjectiveParts(grpo_sum, sdpo_sum, z, count, denominator)

    has_tokens_B = row_sums(valid, row_ids, rows) > 0
    metrics.update(
        _routing_metrics(has_tokens_B, valid, sdpo_B, routed, x.correct_B, x.has_teacher_B)
    )
    if x.entropy_BT is not None:
        stats = _masked_stats(lax.stop_gradient(losses.as_wide(x.entropy_BT)), routed, "t")
        metrics["teacher_entropy_mean"] = stats["t_mean"]
        metrics["teacher_entropy_std"] = stats["t_std"]
    if m.sdpo:
        metrics.update(_masked_stats(sdpo_scale_from(parts) * u, routed, "sdpo_weight"))
    return parts, metrics


def _mixed_advantage(adv_B1, logp_BT, teacher_logp_BT, has_t, valid_BT, mix_lambda):
    """SPEC 8: A_i + lambda * sg(log pi_phi - log pi_theta) per token (0 without a teacher);
    has_t: whether the token's row has a teacher ([B, 1], or [K, L] packed). Returns
    (advantage [B, T], mean teacher advantage over the tokens that have one)."""
    a_sdpo = lax.stop_gradient(losses.as_wide(teacher_logp_BT) - losses.as_wide(logp_BT))
    a_sdpo = jnp.where(has_t & (valid_BT > 0), a_sdpo, 0.0)
    mean = jnp.sum(a_sdpo) / jnp.maximum(jnp.sum(valid_BT * has_t), 1.0)
    return adv_B1 + mix_lambda * a_sdpo, mean


def _routing_metrics(has_tokens_B, valid, sdpo_B, routed, correct_B, has_teacher_B) -> dict:
    metrics = {}
    n_seq = jnp.maximum(jnp.sum(has_tokens_B), 1)
    metrics["routed_fraction"] = jnp.sum(sdpo_B & has_tokens_B) / n_seq
    metrics["routed_token_fraction"] = jnp.sum(routed) / jnp.maximum(jnp.sum(valid), 1.0)
    if correct_B is not None and has_teacher_B is not None:
        fail = (jnp.asarray(correct_B) <= 0) & has_tokens_B
        lone = fail & (jnp.asarray(has_teacher_B) <= 0)
        metrics["failures_without_teacher_frac"] = jnp.sum(lone) / jnp.maximum(jnp.sum(fail), 1)
    return metrics


def srpo_objective(
    x: ObjectiveInputs, options: ObjectiveOptions = ObjectiveOptions(), *, sdpo_scale=None
) -> tuple[jnp.ndarray, jnp.ndarray, dict[str, jnp.ndarray]]:
    """(numerator, denominator, metrics) of SPEC 7 for the per-token arrays `x` (see
    ObjectiveInputs) under `options`. sdpo_scale: |S|/Z of the whole optimisation batch when
    this call sees only a micro-batch (`sdpo_scale`); None computes it from this call's
    tokens.
    """
    parts, metrics = objective_parts(x, options)
    if sdpo_scale is None:
        numerator, denominator = combine(parts)
    else:
        scale = lax.stop_gradient(losses.as_wide(sdpo_scale))
        numerator, denominator = parts.grpo_sum + scale * parts.sdpo_sum, parts.denominator
    return numerator, denominator, metrics
