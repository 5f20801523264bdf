"""Loops over vocabulary tiles, so per-chunk temporaries are [C, T], not [C, V].

XLA:CPU materialises the operand of most reductions (a where() before a logsumexp, the
compare before a tie count) and lowers lax.top_k to a full sort of values and an iota of
indices: over a whole [C, V] chunk that is several more [C, V] buffers beside the logits.
Sliced into T-column tiles the same work needs a few [C, T] buffers.

V need not divide by T: the last tile is shifted left to end at V (no padded copy of the
[C, V] logits or the [D, V] unembedding), and `fresh_T` marks the columns that no earlier
tile covered; callers drop the others.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

f32 = jnp.float32


def to_bits(x: jax.Array) -> jax.Array:
    """x viewed as unsigned integers of the same width (a bitcast, no arithmetic)."""
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))


def from_bits(bits: jax.Array, dtype) -> jax.Array:
    """Inverse of to_bits."""
    return jax.lax.bitcast_convert_type(bits, dtype)


def scan_tiles(body: Callable, init, vocab: int, tile: int):
    """lax.scan of body(carry, col0, fresh_T) -> (carry, y) over ceil(V / T) tiles."""
    n_tiles = -(-vocab // tile)

    def step(carry, t):
        col0 = jnp.minimum(t * tile, vocab - tile)
        fresh_T = col0 + jnp.arange(tile) >= t * tile
        return body(carry, col0, fresh_T)

    return jax.lax.scan(step, init, jnp.arange(n_tiles))


def tiled_top_k(z_CV: jax.Array, k: int, tile: int) -> tuple[jax.Array, jax.Array]:
    """lax.top_k(z_CV, k), computed as top-k per tile, then top-k of the candidates.

    Same values, ids and order as lax.top_k (equal values: lower id first): candidates
    come tile by tile in id order and top_k is stable. Columns a shifted last tile shares
    with the previous one enter as -inf, so they can never displace a finite logit.
    """
    vocab = z_CV.shape[1]
    tile = max(min(tile, vocab), k)
    if tile >= vocab:
        return jax.lax.top_k(z_CV, k)

    def body(carry, col0, fresh_T):
        z_CT = jax.lax.dynamic_slice_in_dim(z_CV, col0, tile, axis=1)
        top_CK, ids_CK = jax.lax.top_k(jnp.where(fresh_T, z_CT, -jnp.inf), k)
        return carry, (top_CK, ids_CK + col0)

    _, (top_LCK, ids_LCK) = scan_tiles(body, None, vocab, tile)
    rows = z_CV.shape[0]
    top_CM = top_LCK.transpose(1, 0, 2).reshape(rows, -1)
    ids_CM = ids_LCK.transpose(1, 0, 2).reshape(rows, -1)
    top_CK, pos_CK = jax.lax.top_k(top_CM, k)
    return top_CK, jnp.take_along_axis(ids_CM, pos_CK, axis=-1)


def tiled_vocab_sums(zs_CV: jax.Array, zt_CV: jax.Array, thr_C: jax.Array, tile: int):
    """Row statistics of the vocabulary pass, summed tile by tile (all fp32 [C]).

    Returns (lse_s, lse_t, ent_t, rest_s, rest_t, ties): both log-sum-exps, the teacher
    entropy H = log s - t / s with s = sum e^(z-m), t = sum e^(z-m) (z-m), the log-sum-exps
    over {z_s < thr} and the count of z_s == thr. Every sum is shifted by its row's full
    maximum (known before the loop, so no online rescaling); a rest sum that underflows
    that way is over 80 nats below the row's mass, far under the tail floor (-16.1) where
    its exact value no longer matters.
    """
    vocab = zs_CV.shape[1]
    tile = min(tile, vocab)
    m_s_C = jnp.max(zs_CV, axis=-1)
    m_t_C = jnp.max(zt_CV, axis=-1)

    def body(acc, col0, fresh_T):
        zs_CT = jax.lax.dynamic_slice_in_dim(zs_CV, col0, tile, axis=1)
        zt_CT = jax.lax.dynamic_slice_in_dim(zt_CV, col0, tile, axis=1)
        es_CT = jnp.where(fresh_T, jnp.exp(zs_CT - m_s_C[:, None]), 0.0)
        dt_CT = zt_CT - m_t_C[:, None]
        et_CT = jnp.where(fresh_T, jnp.exp(dt_CT), 0.0)
        rest_CT = zs_CT < thr_C[:, None]
        sums = (
            jnp.sum(es_CT, axis=-1),
            jnp.sum(et_CT, axis=-1),
            jnp.sum(et_CT * dt_CT, axis=-1),
            jnp.sum(jnp.where(rest_CT, es_CT, 0.0), axis=-1),
            jnp.sum(jnp.where(rest_CT, et_CT, 0.0), axis=-1),
            jnp.sum((zs_CT == thr_C[:, None]) & fresh_T, axis=-1).astype(f32),
        )
        return tuple(a + b for a, b in zip(acc, sums, strict=True)), None

    zero_C = jnp.zeros_like(m_s_C)
    (s_s, s_t, t_t, r_s, r_t, ties), _ = scan_tiles(body, (zero_C,) * 6, vocab, tile)
    log_s_t = jnp.log(s_t)
    return (
        m_s_C + jnp.log(s_s),
        m_t_C + log_s_t,
        log_s_t - t_t / s_t,
        m_s_C + jnp.log(r_s),
        m_t_C + jnp.log(r_t),
        ties,
    )
