"""The combined objective (SPEC 7-8) against a float64 loop reference written from SPEC.

Values for every method and both aggregation modes; gradients with respect to the student
logits end to end (log-probs and divergence both computed from the logits); micro-batching
with (numerator, denominator) carried; the fused-kernel form (numerator, Z) agreeing with the
per-token form; metrics.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srpo_jax.algo import losses, objective

from . import reference as ref

METHODS = ("grpo", "srpo", "srpo_no_dw", "sdpo", "advantage_mix")
AGGS = objective.LOSS_AGGS
B, T, V, K = 6, 5, 157, 12  # two groups of three rollouts
SETTINGS = settings(max_examples=25, deadline=None)


def _batch(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
    old = rng.normal(size=(B, T)) - 2.0
    return dict(
        logp=old + rng.normal(size=(B, T)) * 0.3,
        old=old,
        roll=old + rng.normal(size=(B, T)) * 0.5,
        adv=rng.normal(size=B),
        mask=mask,
        sdpo_mask=rng.random(B) < 0.5,
        div=rng.random((B, T)),
        ent=rng.uniform(0, np.log(V), size=(B, T)),
        teacher_logp=old + rng.normal(size=(B, T)),
        has_teacher=rng.random(B) < 0.6,
        correct=rng.random(B) < 0.4,
    )


def _ref_objective(x, method, agg, lam=0.1):
    """(L, dL/dlogp) from SPEC 7-8 with loops; D and H are inputs here."""
    use_grpo = method != "sdpo"
    use_sdpo = method in ("srpo", "srpo_no_dw", "sdpo")
    mask, lengths = x["mask"], x["mask"].sum(1)
    factor = mask / np.maximum(lengths, 1)[:, None] if agg != "token-mean" else mask
    denom = mask.sum() if agg == "token-mean" else float((lengths > 0).sum())
    routed = np.array([use_sdpo and bool(m) for m in x["sdpo_mask"]])
    in_s = mask.astype(bool) & routed[:, None]
    u = np.exp(-x["ent"]) if method == "srpo" else np.ones((B, T))
    w = in_s.sum() * u / u[in_s].sum() if in_s.any() else u
    num, grad = 0.0, np.zeros((B, T))
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            lp, old, roll = x["logp"][i, t], x["old"][i, t], x["roll"][i, t]
            if routed[i]:
                ratio = min(np.exp(np.clip(lp - old, -20, 20)), 2.0)
                wis = min(np.exp(np.clip(old - roll, -20, 20)), 2.0)
                num += factor[i, t] * w[i, t] * x["div"][i, t] * ratio * wis
            elif use_grpo:
                a = x["adv"][i]
                if method == "advantage_mix" and x["has_teacher"][i]:
                    a = a + lam * (x["teacher_logp"][i, t] - lp)
                loss, g = ref.grpo_token(lp, old, roll, a)
                num += factor[i, t] * loss
                grad[i, t] = factor[i, t] * g
    return num / denom, grad / denom


def _kwargs(x, dtype):
    return dict(
        teacher_logp_BT=jnp.asarray(x["teacher_logp"], dtype),
        has_teacher_B=jnp.asarray(x["has_teacher"]),
        correct_B=jnp.asarray(x["correct"]),
    )


@jax.jit
def _all_objectives(logp, old, roll, adv, mask, sdpo_mask, div, ent, extra):
    out = {}
    for method in METHODS:
        for agg in AGGS:

            def f(lp, method=method, agg=agg):
                num, den, metrics = objective.srpo_objective(
                    objective.ObjectiveInputs(
                        lp, old, roll, adv, mask, sdpo_mask, div, ent, **extra
                    ),
                    objective.ObjectiveOptions(method=method, loss_agg=agg),
                )
                return num / den, metrics

            out[method, agg] = jax.value_and_grad(f, has_aux=True)(logp)
    return out


def _check_objectives(seed, dtype, tol):
    x = _batch(seed)
    with jax.enable_x64(True):
        args = [jnp.asarray(x[n], dtype) for n in ("logp", "old", "roll", "adv")]
        args += [jnp.asarray(x["mask"]), jnp.asarray(x["sdpo_mask"])]
        args += [jnp.asarray(x["div"], dtype), jnp.asarray(x["ent"], dtype)]
        out = jax.tree.map(np.asarray, _all_objectives(*args, _kwargs(x, dtype)))
    for (method, agg), ((value, _), grad) in out.items():
        v_ref, g_ref = _ref_objective(x, method, agg)
        msg = f"{method} {agg}"
        assert value.dtype == dtype, msg
        np.testing.assert_allclose(value, v_ref, rtol=tol, atol=tol, err_msg=msg)
        np.testing.assert_allclose(grad, g_ref, rtol=tol, atol=tol, err_msg=msg)
    metrics = out["srpo", "token-mean"][0][1]
    has_tokens = x["mask"].sum(1) > 0
    routed = x["sdpo_mask"] & has_tokens
    np.testing.assert_allclose(metrics["routed_fraction"], routed.sum() / has_tokens.sum())
    fail = ~x["correct"] & has_tokens
    lone = (fail & ~x["has_teacher"]).sum() / max(fail.sum(), 1)
    np.testing.assert_allclose(metrics["failures_without_teacher_frac"], lone, rtol=1e-6)
    if (x["mask"] * routed[:, None]).sum() > 0:
        np.testing.assert_allclose(metrics["sdpo_weight_mean"], 1.0, rtol=1e-5)
        assert metrics["sdpo_weight_min"] > 0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_objective_values_and_grads_float64(seed):
    _check_objectives(seed, np.float64, 1e-10)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_objective_values_and_grads_float32(seed):
    _check_objectives(seed, np.float32, 1e-5)


def _logit_batch(seed):
    rng = np.random.default_rng(seed)
    x = _batch(seed)
    zs = rng.normal(size=(B, T, V))
    zt = rng.normal(size=(B, T, V)) + 0.5 * zs
    y = rng.integers(0, V, size=(B, T))
    return x, zs, zt, y


def _pieces(zs, zt, y):
    logp = jnp.take_along_axis(jax.nn.log_softmax(zs, -1), y[..., None], -1)[..., 0]
    div = losses.sdpo_token_divergence(zs, zt, topk=K, alpha=0.5)
    return logp, div, losses.teacher_entropy(zt)


@functools.partial(jax.jit, static_argnames=("agg",))
def _end_to_end(zs, zt, y, old, roll, adv, mask, sdpo_mask, scale, *, agg):
    def f(z):
        logp, div, ent = _pieces(z, zt, y)
        num, den, _ = objective.srpo_objective(
            objective.ObjectiveInputs(logp, old, roll, adv, mask, sdpo_mask, div, ent),
            objective.ObjectiveOptions(method="srpo", loss_agg=agg),
            sdpo_scale=scale,
        )
        return num, den

    (num, den), g = jax.value_and_grad(f, has_aux=True)(zs)
    return num, den, g


def _ref_end_to_end(x, zs, zt, y, agg):
    """dL/dlogits = sum_t [grpo'(logp) (onehot - p) + c w ratio wis dD/dz] / denominator."""
    lp_full = ref.log_softmax(zs)
    x = dict(x, logp=np.take_along_axis(lp_full, y[..., None], -1)[..., 0])
    d, gd = ref.divergence_and_grad(zs.reshape(-1, V), zt.reshape(-1, V), K, 0.5, True, 1.0)
    x["div"], x["ent"] = d.reshape(B, T), ref.entropy(zt)
    value, g_logp = _ref_objective(x, "srpo", agg)
    onehot = np.eye(V)[y]
    grad = g_logp[..., None] * (onehot - np.exp(lp_full))
    # SDPO part: derivative of value in D_t is the token's full multiplier / denominator.
    eps = 1e-3
    x_up = dict(x)
    coef = np.zeros((B, T))
    for i in range(B):
        for t in range(T):
            x_up["div"] = x["div"].copy()
            x_up["div"][i, t] += eps
            coef[i, t] = (_ref_objective(x_up, "srpo", agg)[0] - value) / eps  # linear in D
    grad += coef[..., None] * gd.reshape(B, T, V)
    return value, grad


def _e2e_args(x, zs, zt, y, dtype):
    return (
        [jnp.asarray(zs, dtype), jnp.asarray(zt, dtype), jnp.asarray(y)]
        + [jnp.asarray(x[n], dtype) for n in ("old", "roll", "adv")]
        + [jnp.asarray(x["mask"]), jnp.asarray(x["sdpo_mask"])]
    )


@pytest.mark.slow  # ~40 s on a loaded 2-core box (4 compiles of a [6, 5, 157] gradient)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), agg=st.sampled_from(AGGS))
def test_end_to_end_gradient_wrt_student_logits(seed, agg):
    x, zs, zt, y = _logit_batch(seed)
    v_ref, g_ref = _ref_end_to_end(x, zs, zt, y, agg)
    with jax.enable_x64(True):
        num, den, g = _end_to_end(*_e2e_args(x, zs, zt, y, jnp.float64), None, agg=agg)
    # den is a constant, so the gradient of num / den is grad(num) / den.
    np.testing.assert_allclose(float(num / den), v_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(g) / float(den), g_ref, rtol=1e-10, atol=1e-10)
    num32, den32, g32 = _end_to_end(*_e2e_args(x, zs, zt, y, jnp.float32), None, agg=agg)
    np.testing.assert_allclose(float(num32 / den32), v_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g32) / float(den32), g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # four compiles of the end-to-end gradient: ~35 s on a loaded 2-core box
def test_micro_batches_sum_to_the_full_batch():
    x, zs, zt, y = _logit_batch(11)
    x["sdpo_mask"][:2] = True  # routed tokens in both micro-batches
    x["sdpo_mask"][3:5] = True
    with jax.enable_x64(True):
        args = _e2e_args(x, zs, zt, y, jnp.float64)
        _, _, ent = _pieces(args[0], args[1], args[2])
        routed = objective.routed_token_mask(args[6], args[7])
        scale = objective.sdpo_scale(ent, routed)
        for agg in AGGS:
            num, den, g = _end_to_end(*args, None, agg=agg)
            parts = []
            for sl in (slice(0, 3), slice(3, 6)):
                parts.append(_end_to_end(*[a[sl] for a in args], scale, agg=agg))
            num_mb = parts[0][0] + parts[1][0]
            den_mb = parts[0][1] + parts[1][1]
            g_mb = jnp.concatenate([parts[0][2], parts[1][2]])
            assert float(den_mb) == float(den)
            # Same terms, different summation order: equal up to float64 rounding.
            np.testing.assert_allclose(float(num_mb / den_mb), float(num / den), rtol=1e-14)
            np.testing.assert_allclose(np.asarray(g_mb), np.asarray(g), rtol=1e-13, atol=1e-17)


def test_fused_form_matches_per_token_form():
    """(numerator, Z) as the fused kernel defines them give the same objective."""
    x = _batch(4)
    x["sdpo_mask"][:3] = True
    with jax.enable_x64(True):
        a = [jnp.asarray(x[n]) for n in ("logp", "old", "roll", "adv", "mask", "sdpo_mask")]
        div, ent = jnp.asarray(x["div"]), jnp.asarray(x["ent"])
        for agg in AGGS:
            opts = objective.ObjectiveOptions(loss_agg=agg)
            num, den, _ = objective.srpo_objective(objective.ObjectiveInputs(*a, div, ent), opts)
            routed = objective.routed_token_mask(a[4], a[5])
            tw = objective.sdpo_token_multiplier(a[0], a[1], a[2], a[4], loss_agg=agg)
            u = jnp.exp(-ent) * routed
            fused = (jnp.sum(u * tw * div), jnp.sum(u))
            num_f, den_f, _ = objective.srpo_objective(
                objective.ObjectiveInputs(*a, None, ent, fused_sdpo=fused), opts
            )
            np.testing.assert_allclose(float(num_f), float(num), rtol=1e-14)
            assert float(den_f) == float(den)


def test_grpo_method_ignores_routing_and_sdpo_counts_everything():
    x = _batch(7)
    with jax.enable_x64(True):
        a = [jnp.asarray(x[n]) for n in ("logp", "old", "roll", "adv", "mask")]
        none = jnp.zeros(B, bool)
        grpo = objective.ObjectiveOptions(method="grpo")
        sdpo = objective.ObjectiveOptions(method="sdpo")
        routed = jnp.asarray(x["sdpo_mask"])
        g1 = objective.srpo_objective(objective.ObjectiveInputs(*a, routed), grpo)[0]
        g2 = objective.srpo_objective(objective.ObjectiveInputs(*a, none), grpo)[0]
        div = jnp.asarray(x["div"])
        _, den, _ = objective.srpo_objective(objective.ObjectiveInputs(*a, none, div), sdpo)
    assert float(g1) == float(g2)
    assert float(den) == x["mask"].sum()  # rollouts without a teacher still count
