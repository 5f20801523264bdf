"""Sampling maths against independent float64 numpy references.

Covers the kept set of top-k / top-p filtering, greedy = argmax, the returned log-probs,
empirical frequencies on a 3-token distribution, and the key-folding properties.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srpo_jax.rollout import sampling
from srpo_jax.rollout.sampling import SamplerSpec


def _np_kept_set(logits, temperature, top_k, top_p):
    """Reference kept set for one row, written as the plain definition (loops, float64)."""
    z = np.asarray(logits, np.float64) / temperature
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if top_k is not None:
        order = order[:top_k]
    weights = np.exp(np.array([z[i] for i in order]) - max(z[i] for i in order))
    probs = weights / weights.sum()
    kept, mass = set(), 0.0
    for i, p in zip(order, probs, strict=True):
        if mass >= top_p:
            break
        kept.add(i)
        mass += p
    return kept


@pytest.mark.parametrize(
    "top_k,top_p,temperature",
    [
        (None, 0.9, 1.0),
        (None, 0.5, 0.6),
        (7, 1.0, 1.0),
        (5, 0.8, 1.3),
        (1, 0.3, 1.0),
        (None, 1e-6, 1.0),
    ],
)
def test_filtered_logits_keep_exactly_the_reference_set(top_k, top_p, temperature):
    rng = np.random.default_rng(0)
    logits_BV = rng.normal(size=(6, 37)).astype(np.float32) * 2.0
    spec = SamplerSpec(top_k=top_k, use_top_p=top_p < 1.0)
    out = np.asarray(sampling.filtered_logits(jnp.asarray(logits_BV), temperature, top_p, spec))
    for b in range(logits_BV.shape[0]):
        kept = set(np.flatnonzero(np.isfinite(out[b])).tolist())
        assert kept == _np_kept_set(logits_BV[b], temperature, top_k, top_p), b
        finite = np.isfinite(out[b])
        np.testing.assert_allclose(out[b][finite], logits_BV[b][finite] / temperature, rtol=1e-6)


def test_top_p_one_and_top_k_vocab_keep_everything():
    logits_BV = jnp.asarray(np.random.default_rng(1).normal(size=(3, 11)), jnp.float32)
    out = sampling.filtered_logits(logits_BV, 1.0, 1.0, SamplerSpec(top_k=11, use_top_p=True))
    assert bool(jnp.all(jnp.isfinite(out)))


def test_greedy_is_argmax_with_temperature_one_logprobs():
    rng = np.random.default_rng(2)
    logits_BV = rng.normal(size=(5, 23)).astype(np.float32)
    keys_B = sampling.row_keys(0, 0, jnp.arange(5))
    tokens_B, logp_B = sampling.sample(
        jnp.asarray(logits_BV), keys_B, 0.0, 1.0, SamplerSpec(greedy=True)
    )
    np.testing.assert_array_equal(np.asarray(tokens_B), logits_BV.argmax(-1))
    z = logits_BV.astype(np.float64)
    ref = z - z.max(-1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        np.asarray(logp_B), ref[np.arange(5), logits_BV.argmax(-1)], atol=1e-6
    )


def _draw(probs, n, temperature, top_k=None, top_p=1.0, logprobs="scaled"):
    logits_BV = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32))[None], (n, 1))
    keys_B = sampling.position_keys(sampling.row_keys(3, 1, jnp.arange(n)), 0)
    spec = SamplerSpec(top_k=top_k, use_top_p=top_p < 1.0, logprobs=logprobs)
    tokens_B, logp_B = jax.jit(sampling.sample, static_argnums=4)(
        logits_BV, keys_B, temperature, top_p, spec
    )
    return np.asarray(tokens_B), np.asarray(logp_B)


def _np_scaled(probs, temperature):
    w = np.asarray(probs, np.float64) ** (1.0 / temperature)
    return w / w.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_empirical_frequencies_match_the_scaled_distribution(temperature):
    probs, n = [0.5, 0.3, 0.2], 20000
    tokens, logp = _draw(probs, n, temperature)
    expected = _np_scaled(probs, temperature)
    freq = np.bincount(tokens, minlength=3) / n
    # Binomial std <= 0.0036 at n = 20000, so 0.015 is > 4 sigma yet catches any real bias.
    np.testing.assert_allclose(freq, expected, atol=0.015)
    np.testing.assert_allclose(logp, np.log(expected)[tokens], atol=1e-5)


def test_top_p_and_top_k_sample_only_the_kept_tokens_renormalised():
    probs, n = [0.5, 0.3, 0.2], 20000
    tokens, logp = _draw(probs, n, 1.0, top_p=0.75, logprobs="processed")
    freq = np.bincount(tokens, minlength=3) / n
    np.testing.assert_allclose(freq, [0.625, 0.375, 0.0], atol=0.015)
    np.testing.assert_allclose(logp, np.log(np.array([0.625, 0.375, 1.0]))[tokens], atol=1e-5)
    tokens, logp = _draw(probs, n, 1.0, top_k=1)
    assert set(tokens.tolist()) == {0}
    # "scaled" log-probs ignore the filter: log 0.5, not log 1.
    np.testing.assert_allclose(logp, np.log(0.5), atol=1e-6)


def test_keys_differ_across_steps_rows_positions_and_ignore_batch_size():
    def bits(seed, step, rows, t):
        keys = sampling.position_keys(sampling.row_keys(seed, step, jnp.asarray(rows)), t)
        return np.asarray(jax.random.key_data(keys))

    base = bits(0, 5, [0, 1, 2, 3], 0)
    assert len({row.tobytes() for row in base}) == 4
    assert not np.any(np.all(base == bits(0, 6, [0, 1, 2, 3], 0), axis=-1))
    assert not np.any(np.all(base == bits(0, 5, [0, 1, 2, 3], 1), axis=-1))
    assert not np.any(np.all(base == bits(1, 5, [0, 1, 2, 3], 0), axis=-1))
    np.testing.assert_array_equal(base, bits(0, 5, [0, 1, 2, 3], 0))
    # Row 2 gets the same key in a batch of 1 as in a batch of 4.
    np.testing.assert_array_equal(base[2], bits(0, 5, [2], 0)[0])


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="top_k"):
        SamplerSpec(top_k=0)
    with pytest.raises(ValueError, match="logprobs"):
        SamplerSpec(logprobs="raw")
