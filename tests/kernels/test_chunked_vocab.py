"""Chunked per-token log-probs and entropy against float64 NumPy (values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srpo_jax.kernels import chunked_vocab

N, D, V, CHUNK = 203, 16, 97, 16  # N not a multiple of the chunk: a padded last chunk


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(N, D)).astype(np.float32)
    w = (rng.normal(size=(D, V)) * 0.5).astype(np.float32)
    return h, w, rng.integers(0, V, N), rng.uniform(0.5, 2.0, N)


def np_softmax(z):
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_value_and_grad_match_float64(temperature):
    h, w, t, c = inputs()
    z = h.astype(np.float64) @ w / temperature
    p = np_softmax(z)
    want = np.log(p[np.arange(N), t])
    # d sum(c * logp) / dz = c (onehot - p); then through z = h W / T.
    dz = -p * c[:, None]
    dz[np.arange(N), t] += c
    dz /= temperature

    def f(h, w):
        logp = chunked_vocab.token_logprobs(
            h, w, jnp.asarray(t), temperature=temperature, chunk_size=CHUNK
        )
        return jnp.sum(logp * jnp.asarray(c, jnp.float32)), logp

    (_, logp), (gh, gw) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(h, w)
    assert logp.shape == (N,) and logp.dtype == jnp.float32
    assert rel(logp, want) < 1e-5
    assert rel(gh, dz @ w.T.astype(np.float64)) < 1e-5
    assert rel(gw, h.T.astype(np.float64) @ dz) < 1e-5


def test_entropy_matches_float64():
    h, w, _, _ = inputs(1)
    p = np_softmax(h.astype(np.float64) @ w / 0.7)
    want = -np.sum(p * np.log(p), axis=-1)
    got = chunked_vocab.token_entropy(h, w, temperature=0.7, chunk_size=CHUNK)
    assert got.shape == (N,) and rel(got, want) < 1e-5


def test_bf16_compute_sums_the_unembedding_gradient_in_fp32():
    # fp32 master W with compute_dtype=bf16: bf16 GEMMs, but W's gradient is summed over
    # the 51 chunks of 4 tokens in fp32 (a bf16 W would sum them in bf16: ~1e-2 off here).
    h, w, t, _ = inputs(2)
    h_bf = jnp.asarray(h).astype(jnp.bfloat16)
    hb = np.asarray(h_bf.astype(jnp.float32), np.float64)
    wb = np.asarray(jnp.asarray(w).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    p = np_softmax(hb @ wb)
    dz = -p
    dz[np.arange(N), t] += 1.0

    def f(w):
        logp = chunked_vocab.token_logprobs(
            h_bf, w, jnp.asarray(t), chunk_size=4, compute_dtype=jnp.bfloat16
        )
        return jnp.sum(logp), logp

    (_, logp), gw = jax.value_and_grad(f, has_aux=True)(jnp.asarray(w))
    assert rel(logp, np.log(p[np.arange(N), t])) < 1e-5  # the products of bf16-rounded W
    assert gw.dtype == jnp.float32
    assert rel(gw, hb.T @ dz) < 4e-3


def test_mismatched_shapes_name_the_tensors():
    h, w, t, _ = inputs()
    with pytest.raises(ValueError, match=r"unembed_DV has shape \(15, 97\)"):
        chunked_vocab.token_logprobs(h, w[:15], jnp.asarray(t))
    with pytest.raises(ValueError, match=r"targets_N has shape \(202,\)"):
        chunked_vocab.token_logprobs(h, w, jnp.asarray(t[:-1]))
