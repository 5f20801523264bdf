"""Group advantages and correctness (SPEC 1, 4) and the EMA teacher update (SPEC 9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srpo_jax.algo import advantages, ema


@settings(max_examples=25, deadline=None)
@given(g=st.sampled_from([1, 3, 8]), groups=st.sampled_from([1, 4]), data=st.data())
def test_group_advantages_match_reference(g, groups, data):
    # Few distinct shapes: each new shape is a fresh compile of the eager ops.
    rewards = data.draw(
        st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.1]), min_size=g * groups, max_size=g * groups)
    )
    adv = np.asarray(advantages.group_advantages(rewards, g))
    for k in range(groups):
        r = np.asarray(rewards[k * g : (k + 1) * g], np.float64)
        expected = np.zeros(g) if np.all(r == r[0]) else r - r.mean()  # no std division
        np.testing.assert_allclose(adv[k * g : (k + 1) * g], expected, rtol=1e-6, atol=1e-7)


def test_equal_rewards_give_exactly_zero_advantage():
    adv = advantages.group_advantages([0.1, 0.1, 0.1, 1, 1, 1, 0, 0, 0], 3)
    assert np.all(np.asarray(adv) == 0.0)
    adv = advantages.group_advantages([1.0, 0.0, 0.0, 0.0], 4)
    np.testing.assert_allclose(np.asarray(adv), [0.75, -0.25, -0.25, -0.25])


def test_advantages_jit_and_errors():
    adv = jax.jit(advantages.group_advantages, static_argnums=1)(jnp.array([1.0, 0.0]), 2)
    np.testing.assert_allclose(np.asarray(adv), [0.5, -0.5])
    with pytest.raises(ValueError, match="group_size=3"):
        advantages.group_advantages([1.0, 0.0], 3)


def test_correctness_threshold():
    c = advantages.correctness(np.array([0.0, 0.49, 0.5, 1.0]), 0.5)
    np.testing.assert_array_equal(np.asarray(c), [False, False, True, True])


def _trees(rng, dtype):
    def leaf(*s):
        return jnp.asarray(rng.normal(size=s), dtype)

    return {"a": leaf(3, 5), "b": [leaf(7), leaf(2, 2)]}, {
        "a": leaf(3, 5),
        "b": [leaf(7), leaf(2, 2)],
    }


def test_ema_moves_exactly_five_percent():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        phi, theta = _trees(rng, jnp.float64)
        new = jax.jit(ema.ema_update)(phi, theta, finite=jnp.array(True))
        for p, t, n in zip(
            jax.tree.leaves(phi), jax.tree.leaves(theta), jax.tree.leaves(new), strict=True
        ):
            p, t, n = np.asarray(p), np.asarray(t), np.asarray(n)
            np.testing.assert_allclose(n - p, 0.05 * (t - p), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(n, 0.95 * p + 0.05 * t, rtol=1e-15, atol=0)


def test_ema_skips_non_finite_steps_and_keeps_dtype():
    rng = np.random.default_rng(1)
    phi, theta = _trees(rng, jnp.float32)
    theta = jax.tree.map(lambda x: x.astype(jnp.bfloat16), theta)
    kept = ema.ema_update(phi, theta, finite=jnp.array(False))
    moved = ema.ema_update(phi, theta)
    for p, k, m in zip(
        jax.tree.leaves(phi), jax.tree.leaves(kept), jax.tree.leaves(moved), strict=True
    ):
        assert k.dtype == jnp.float32 and m.dtype == jnp.float32
        assert np.array_equal(np.asarray(k), np.asarray(p))
        assert not np.array_equal(np.asarray(m), np.asarray(p))
    with pytest.raises(ValueError, match="different structures"):
        ema.ema_update({"a": jnp.ones(2)}, {"b": jnp.ones(2)})
