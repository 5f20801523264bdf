"""Chunked per-token vocabulary statistics from hidden states and an unembedding.

The GRPO branch needs log pi(y_t) of the sampled token only, but a naive
`log_softmax(h @ W)` materialises [N, V] logits (V = 151,936 for Qwen3). Here the N
tokens are processed C at a time inside a scan whose body is rematerialised, so at most
one [C, V] logits chunk is live in the forward and in the backward pass. The same
scheme gives the full-vocabulary entropy (the teacher-entropy pre-pass of the learner).

`compute_dtype` (e.g. bf16 with fp32 master weights) casts W inside the chunk body: the
GEMMs run in that dtype with fp32 accumulation, while W's gradient is summed over chunks
in W's own dtype (a bf16 W passed in would sum the per-chunk gradients in bf16).

Under a mesh with the vocabulary whole on each device the loop runs on each device's own
tokens (kernels/token_shards.py); otherwise the SPMD partitioner places it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from srpo_jax.kernels.token_shards import token_shard_axes


def _pad_rows(x: jax.Array, n_pad: int) -> jax.Array:
    if n_pad == 0:
        return x
    return jnp.pad(x, [(0, n_pad)] + [(0, 0)] * (x.ndim - 1))


def _in_dtype(w_DV: jax.Array, compute_dtype) -> jax.Array:
    return w_DV if compute_dtype is None else w_DV.astype(compute_dtype)


def _chunked(fn, hidden_ND, extra_N, unembed_DV, chunk_size):
    """fn(h_CD, extra_C, unembed_DV) -> [C] per chunk of tokens, under a mesh on each
    device's own tokens (kernels/token_shards.py)."""
    mesh, axes = token_shard_axes(hidden_ND.shape[0])
    if axes:
        tok = P(axes)
        local = functools.partial(_chunked_local, fn, chunk_size=chunk_size)
        sharded = jax.shard_map(local, mesh=mesh, in_specs=(tok, tok, P()), out_specs=tok)
        return sharded(hidden_ND, extra_N, unembed_DV)
    return _chunked_local(fn, hidden_ND, extra_N, unembed_DV, chunk_size=chunk_size)


def _chunked_local(fn, hidden_ND, extra_N, unembed_DV, *, chunk_size):
    n, d = hidden_ND.shape
    c = min(chunk_size, n)
    n_chunks = -(-n // c)
    n_pad = n_chunks * c - n
    h_KCD = _pad_rows(hidden_ND, n_pad).reshape(n_chunks, c, d)
    e_KC = _pad_rows(extra_N, n_pad).reshape(n_chunks, c)
    body = jax.checkpoint(lambda h_CD, e_C: fn(h_CD, e_C, unembed_DV))
    _, out_KC = jax.lax.scan(lambda carry, xs: (carry, body(*xs)), None, (h_KCD, e_KC))
    return out_KC.reshape(-1)[:n]


def token_logprobs(
    hidden_ND: Float[Array, "N D"],
    unembed_DV: Float[Array, "D V"],
    targets_N: Int[Array, " N"],
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    compute_dtype=None,
) -> Float[Array, " N"]:
    """log softmax(h @ W / temperature)[target] per token, fp32, differentiable in h and W."""
    n, d = hidden_ND.shape
    if unembed_DV.shape[0] != d:
        raise ValueError(
            f"hidden_ND has D={d} but unembed_DV has shape {unembed_DV.shape} (expected [D, V])"
        )
    if targets_N.shape != (n,):
        raise ValueError(f"targets_N has shape {targets_N.shape}, expected ({n},)")
    if n == 0:
        return jnp.zeros((0,), jnp.float32)

    def chunk(h_CD, t_C, unembed_DV):
        w_DV = _in_dtype(unembed_DV, compute_dtype)
        # fp32 logits and log-sum-exp: bf16 would lose the small log-prob differences.
        logits_CV = jnp.dot(h_CD, w_DV, preferred_element_type=jnp.float32) / temperature
        lse_C = jax.nn.logsumexp(logits_CV, axis=-1)
        picked_C = jnp.take_along_axis(logits_CV, t_C[:, None], axis=-1)[:, 0]
        return picked_C - lse_C

    return _chunked(chunk, hidden_ND, targets_N, unembed_DV, chunk_size)


def token_entropy(
    hidden_ND: Float[Array, "N D"],
    unembed_DV: Float[Array, "D V"],
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    compute_dtype=None,
) -> Float[Array, " N"]:
    """Full-vocabulary entropy of softmax(h @ W / temperature) per token, fp32."""
    n = hidden_ND.shape[0]
    if n == 0:
        return jnp.zeros((0,), jnp.float32)

    def chunk(h_CD, _, unembed_DV):
        w_DV = _in_dtype(unembed_DV, compute_dtype)
        # fp32: entropy sums V terms; bf16 accumulation would be off by percents.
        logits_CV = jnp.dot(h_CD, w_DV, preferred_element_type=jnp.float32) / temperature
        logp_CV = jax.nn.log_softmax(logits_CV, axis=-1)
        return -jnp.sum(jnp.exp(logp_CV) * logp_CV, axis=-1)

    return _chunked(chunk, hidden_ND, jnp.zeros((n,), jnp.int32), unembed_DV, chunk_size)
