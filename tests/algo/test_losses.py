"""Per-token losses against float64 NumPy references (tests/algo/reference.py).

float64 (jax.enable_x64) must agree to 1e-10, float32 to 1e-5, on random odd shapes
(V = 157 and other non-round sizes), with padded positions masked out.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srpo_jax.algo import losses

from . import reference as ref

SETTINGS = settings(max_examples=25, deadline=None)


ALPHAS = (0.0, 0.25, 0.5, 0.9, 1.0)
VARIANTS = tuple((a, tail) for tail in (True, False) for a in ALPHAS)
# (B, T, V, k): odd sizes, V not a multiple of anything convenient. A short menu, because
# every new shape is a fresh XLA compile; the data, masks and temperature vary freely.
SHAPES = ((2, 5, 157, 40), (3, 2, 61, 17), (1, 4, 203, 1))


@functools.partial(jax.jit, static_argnames=("k",))
def _all_divergences(zs, zt, mask, cot, temperature, *, k):
    """D and gradients of sum(mask * cot * D) for every (alpha, add_tail) variant at once."""
    out = []
    for alpha, add_tail in VARIANTS:

        def loss(s, t, alpha=alpha, add_tail=add_tail):
            d = losses.sdpo_token_divergence(
                s, t, topk=k, alpha=alpha, add_tail=add_tail, temperature=temperature
            )
            return jnp.sum(jnp.where(mask > 0, cot * d, 0.0)), d

        (_, d), (gs, gt) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(zs, zt)
        out.append((d, gs, gt))
    return out


def _check_divergences(seed, shape, temperature, scale, dtype, tol):
    b, t, vocab, k = SHAPES[shape]
    rng = np.random.default_rng(seed)
    zs = rng.normal(size=(b, t, vocab)) * scale
    zt = rng.normal(size=(b, t, vocab)) * scale + 0.5 * zs  # correlated, like a real teacher
    mask = rng.random((b, t)) < 0.7
    mask[0, 0] = True
    cot = rng.normal(size=(b, t))
    with jax.enable_x64(True):
        got = _all_divergences(
            jnp.asarray(zs, dtype),
            jnp.asarray(zt, dtype),
            jnp.asarray(mask),
            jnp.asarray(cot, dtype),
            jnp.asarray(temperature, dtype),
            k=k,
        )
        got = jax.tree.map(np.asarray, got)
    for (alpha, add_tail), (d, gs, gt) in zip(VARIANTS, got, strict=True):
        d_ref, g_ref = ref.divergence_and_grad(
            zs.reshape(-1, vocab), zt.reshape(-1, vocab), k, alpha, add_tail, temperature
        )
        g_ref = g_ref.reshape(b, t, vocab) * (mask * cot)[..., None]
        msg = f"alpha={alpha} add_tail={add_tail}"
        assert d.dtype == dtype and gs.dtype == dtype, msg
        np.testing.assert_allclose(d, d_ref.reshape(b, t), rtol=tol, atol=tol, err_msg=msg)
        np.testing.assert_allclose(gs, g_ref, rtol=tol, atol=tol, err_msg=msg)
        assert np.all(gs[~mask] == 0.0), f"padded positions got gradient ({msg})"
        assert np.all(gt == 0.0), f"gradient reached the teacher ({msg})"


divergence_args = dict(
    seed=st.integers(0, 2**31 - 1),
    shape=st.integers(0, len(SHAPES) - 1),
    temperature=st.sampled_from([1.0, 0.6]),
    scale=st.floats(0.3, 2.0),
)


@pytest.mark.slow  # ~3 compiles of 10 value-and-grad variants: ~60 s on a loaded 2-core box
@SETTINGS
@given(**divergence_args)
def test_divergence_float64_values_and_grads(**case):
    _check_divergences(**case, dtype=np.float64, tol=1e-10)


@pytest.mark.slow
@SETTINGS
@given(**dict(divergence_args, scale=st.floats(0.3, 1.0)))
def test_divergence_float32_values_and_grads(**case):
    # The SPEC tail log(-expm1(log S)) carries an fp32 error of ~eps / (1 - S) relative, so
    # a very peaked student (1 - S ~ 1e-3) is outside 1e-5 in fp32 (seen: alpha=0, logits of
    # std 3.3 -> 1.5e-5 relative). float64 covers that regime; fp32 keeps 1 - S moderate.
    _check_divergences(**case, dtype=np.float32, tol=1e-5)


@functools.partial(jax.jit, static_argnames=("k", "alpha"))
def _divergence_and_grads(zs, zt, mask, cot, *, k, alpha):
    def loss(s, t):
        d = losses.sdpo_token_divergence(s, t, topk=k, alpha=alpha)
        return jnp.sum(jnp.where(mask > 0, cot * d, 0.0)), d

    (_, d), (gs, gt) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(zs, zt)
    return d, gs, gt


def test_tail_clamp_regime_float64():
    """Peaked student: top-k holds all but < 1e-7 of the mass, so log S is clamped."""
    rng = np.random.default_rng(3)
    vocab, k = 157, 20
    zs = rng.normal(size=(4, vocab))
    zs[:, :k] += 30.0
    zt = rng.normal(size=(4, vocab))
    mask, cot = np.ones(4), rng.normal(size=4)
    d_ref, g_ref = ref.divergence_and_grad(zs, zt, k, 0.5, True, 1.0)
    assert all(ref.buckets(z, w, k, True)[2] for z, w in zip(zs, zt, strict=True))
    with jax.enable_x64(True):
        d, gs, _ = _divergence_and_grads(
            jnp.asarray(zs), jnp.asarray(zt), jnp.asarray(mask), jnp.asarray(cot), k=k, alpha=0.5
        )
        d, gs = np.asarray(d), np.asarray(gs)
    np.testing.assert_allclose(d, d_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gs, g_ref * cot[:, None], rtol=1e-10, atol=1e-10)


def _random_buckets(seed, vocab=157, k=30):
    rng = np.random.default_rng(seed)
    zs, zt = rng.normal(size=(6, vocab)) * 1.5, rng.normal(size=(6, vocab)) * 1.5
    with jax.enable_x64(True):
        ls, lt = losses.topk_bucket_log_probs(jnp.asarray(zs), jnp.asarray(zt), topk=k)
        return np.asarray(ls), np.asarray(lt), zs, zt


def test_alpha_endpoints_are_the_two_kl_directions():
    ls, lt, zs, zt = _random_buckets(0)
    kl_ts = np.sum(np.exp(lt) * (lt - ls), -1)
    kl_st = np.sum(np.exp(ls) * (ls - lt), -1)
    with jax.enable_x64(True):
        d0 = losses.sdpo_token_divergence(jnp.asarray(zs), jnp.asarray(zt), topk=30, alpha=0.0)
        d1 = losses.sdpo_token_divergence(jnp.asarray(zs), jnp.asarray(zt), topk=30, alpha=1.0)
        # The endpoints are the SDPO convention, the limits of D/a and D/(1-a): near a = 0
        # the mixture formula is a * KL(P_t||P_s) to first order.
        de = losses.generalized_jsd(jnp.asarray(ls), jnp.asarray(lt), 1e-9) / 1e-9
    np.testing.assert_allclose(np.asarray(d0), kl_ts, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(d1), kl_st, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(de), kl_ts, rtol=1e-6)


def test_jsd_half_is_symmetric_and_bounded():
    ls, lt, _, _ = _random_buckets(1)
    with jax.enable_x64(True):
        a = np.asarray(losses.generalized_jsd(jnp.asarray(ls), jnp.asarray(lt), 0.5))
        b = np.asarray(losses.generalized_jsd(jnp.asarray(lt), jnp.asarray(ls), 0.5))
        far = np.asarray(
            losses.generalized_jsd(
                jnp.log(jnp.array([1.0, 1e-300])), jnp.log(jnp.array([1e-300, 1.0])), 0.5
            )
        )
    np.testing.assert_allclose(a, b, rtol=1e-13)
    assert np.all(a >= 0) and np.all(a <= np.log(2))
    np.testing.assert_allclose(far, np.log(2), rtol=1e-12)  # disjoint supports hit log 2


def test_each_bucket_distribution_sums_to_one():
    ls, lt, _, _ = _random_buckets(2)
    np.testing.assert_allclose(np.exp(ls).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(lt).sum(-1), 1.0, rtol=1e-12)
    assert ls.shape == (6, 31)


def test_topk_bigger_than_vocab_is_rejected():
    with pytest.raises(ValueError, match="topk=200"):
        losses.sdpo_token_divergence(jnp.zeros((2, 157)), jnp.zeros((2, 157)), topk=200)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), vocab=st.sampled_from([157, 61]))
def test_teacher_entropy_full_vocab(seed, vocab):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(2, 3, vocab)) * 2.0
    with jax.enable_x64(True):
        h = jax.jit(losses.teacher_entropy)(jnp.asarray(z))
        gh = jax.jit(jax.grad(lambda x: jnp.sum(losses.teacher_entropy(x))))(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(h), ref.entropy(z), rtol=1e-10, atol=1e-10)
    assert np.all(np.asarray(gh) == 0.0)
    h32 = losses.teacher_entropy(jnp.asarray(z, jnp.bfloat16))
    assert h32.dtype == jnp.float32  # bf16 logits still reduce in fp32
    assert np.all((np.asarray(h) >= 0) & (np.asarray(h) <= np.log(vocab) + 1e-12))


def test_bucket_entropy_matches_reference():
    ls, _, _, _ = _random_buckets(4)
    with jax.enable_x64(True):
        h = np.asarray(losses.bucket_entropy(jnp.asarray(ls)))
    np.testing.assert_allclose(h, -np.sum(np.exp(ls) * ls, -1), rtol=1e-12)


GRPO_SHAPES = ((3, 7), (1, 2))
grpo_args = dict(
    seed=st.integers(0, 2**31 - 1),
    shape=st.integers(0, len(GRPO_SHAPES) - 1),
    per_token_adv=st.booleans(),
)


def _grpo_case(seed, shape, per_token_adv):
    b, t = GRPO_SHAPES[shape]
    rng = np.random.default_rng(seed)
    old = rng.normal(size=(b, t)) - 2.0
    logp = old + rng.normal(size=(b, t)) * 0.4
    logp[0, 0] = old[0, 0] + 25.0  # beyond the +-20 log-ratio clamp
    roll = old + rng.normal(size=(b, t)) * 0.8
    adv = rng.normal(size=(b, t) if per_token_adv else (b,))
    mask = (rng.random((b, t)) < 0.75).astype(np.float64)
    adv_bt = adv if per_token_adv else np.broadcast_to(adv[:, None], (b, t))
    lr, gr = np.zeros((b, t)), np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            if mask[i, j]:
                lr[i, j], gr[i, j] = ref.grpo_token(logp[i, j], old[i, j], roll[i, j], adv_bt[i, j])
    return logp, old, roll, adv, mask, lr, gr


@jax.jit
def _grpo_value_and_grads(logp, old, roll, adv, mask):
    def f(lp, o, r):
        loss = losses.grpo_token_loss(lp, o, r, adv, mask)
        return jnp.sum(loss), loss

    (_, loss), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(logp, old, roll)
    return loss, grads


def _jax_grpo(logp, old, roll, adv, mask, dtype):
    args = [jnp.asarray(x, dtype) for x in (logp, old, roll, adv)]
    loss, grads = _grpo_value_and_grads(*args, jnp.asarray(mask))
    return np.asarray(loss), [np.asarray(g) for g in grads]


@SETTINGS
@given(**grpo_args)
def test_grpo_token_loss_float64(**case):
    logp, old, roll, adv, mask, lr, gr = _grpo_case(**case)
    with jax.enable_x64(True):
        loss, (g, g_old, g_roll) = _jax_grpo(logp, old, roll, adv, mask, jnp.float64)
    np.testing.assert_allclose(loss, lr, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g, gr, rtol=1e-10, atol=1e-12)
    assert np.all(g_old == 0) and np.all(g_roll == 0), "old/rollout log-probs are constants"


@SETTINGS
@given(**grpo_args)
def test_grpo_token_loss_float32(**case):
    logp, old, roll, adv, mask, lr, gr = _grpo_case(**case)
    loss, (g, _, _) = _jax_grpo(logp, old, roll, adv, mask, jnp.float32)
    np.testing.assert_allclose(loss, lr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, gr, rtol=1e-5, atol=1e-5)


def test_grpo_on_policy_is_plain_policy_gradient():
    """ratio = 1 and w_IS = 1: loss -A, gradient -A (what one mini-batch per step sees)."""
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    adv = jnp.array([0.75])
    g = jax.grad(lambda x: jnp.sum(losses.grpo_token_loss(x, x, x, adv, jnp.ones((1, 3)))))(logp)
    np.testing.assert_allclose(np.asarray(g), -0.75 * np.ones((1, 3)), rtol=1e-7)


def test_tis_weight_caps_and_stops_gradient():
    old = jnp.array([0.0, 0.0, 0.0, 0.0])
    roll = jnp.array([0.0, 1.0, -0.5, -30.0])
    w = losses.tis_weight(old, roll)
    np.testing.assert_allclose(np.asarray(w), [1.0, np.exp(-1.0), np.exp(0.5), 2.0], rtol=1e-6)
    assert np.all(np.asarray(jax.grad(lambda o: jnp.sum(losses.tis_weight(o, roll)))(old)) == 0)


def test_sdpo_token_loss_detached_capped_ratio():
    logp = jnp.array([0.0, 0.3, 2.0])
    old = jnp.zeros(3)
    roll = jnp.array([0.0, 0.0, 0.5])
    d = jnp.array([0.1, 0.2, 0.3])
    mask = jnp.array([1.0, 1.0, 0.0])
    loss = losses.sdpo_token_loss(d, logp, old, roll, mask)
    np.testing.assert_allclose(np.asarray(loss), [0.1, 0.2 * np.exp(0.3), 0.0], rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(losses.sdpo_token_loss(d, x, old, roll, mask)))(logp)
    assert np.all(np.asarray(g) == 0), "SDPO's is_clip ratio is detached"


def test_entropy_weights_properties():
    rng = np.random.default_rng(5)
    h = rng.uniform(0, np.log(157), size=(3, 6))
    mask = rng.random((3, 6)) < 0.6
    mask[0, 0] = True
    with jax.enable_x64(True):
        w = np.asarray(losses.entropy_weights(jnp.asarray(h), jnp.asarray(mask), tau=1.0))
        gw = jax.grad(lambda x: jnp.sum(losses.entropy_weights(x, mask) * x))(jnp.asarray(h))
        u = np.exp(-h)
        expected = np.where(mask, mask.sum() * u / u[mask].sum(), 0.0)
        np.testing.assert_allclose(w, expected, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(gw), np.where(mask, w, 0.0), rtol=1e-12)
        flat = np.asarray(losses.entropy_weights(jnp.full((3, 6), 2.7), jnp.asarray(mask)))
        empty = np.asarray(losses.entropy_weights(jnp.asarray(h), jnp.zeros((3, 6), bool)))
    assert np.all(w[mask] > 0) and np.all(w[~mask] == 0)
    np.testing.assert_allclose(w[mask].mean(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(flat[mask], 1.0, rtol=1e-12)  # equal entropies -> uniform
    assert np.all(empty == 0)
    # Lower entropy (a confident teacher) gets the larger weight.
    i, j = np.unravel_index(np.argmin(np.where(mask, h, np.inf)), h.shape)
    assert w[i, j] == w[mask].max()
