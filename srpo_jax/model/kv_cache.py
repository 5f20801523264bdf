"""Static-shape KV cache for batched, left-padded prefill followed by token-by-token decode.

The cache has a fixed slot count S (max_len) so prefill and decode_step compile once. Each
row keeps its own write index (the next free slot) and its own next RoPE position (the
number of real tokens seen), so rows with different amounts of left padding decode
together; slots holding padding are marked invalid and never attended to.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from srpo_jax.sharding import fit_spec, logical_to_spec

# Logical axis names of each cache field (for shardings from the rules table).
CACHE_LOGICAL_AXES = {
    "k_LBSKH": ("layers", "batch", "cache_seq", "kv_heads", "head_dim"),
    "v_LBSKH": ("layers", "batch", "cache_seq", "kv_heads", "head_dim"),
    "valid_BS": ("batch", "cache_seq"),
    "index_B": ("batch",),
    "positions_B": ("batch",),
}


class KVCache(NamedTuple):
    """k/v per layer and slot; valid_BS marks slots holding a real token; index_B is the next
    slot each row writes; positions_B is the RoPE position of each row's next token."""

    k_LBSKH: jax.Array
    v_LBSKH: jax.Array
    valid_BS: jax.Array
    index_B: jax.Array
    positions_B: jax.Array

    @property
    def max_len(self) -> int:
        return int(self.valid_BS.shape[1])


def init_cache(config, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache (every slot invalid, write index 0); k/v in the compute dtype."""
    if batch < 1 or max_len < 1:
        raise ValueError(f"init_cache needs batch >= 1 and max_len >= 1, got {batch}, {max_len}")
    dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(
        k_LBSKH=jnp.zeros(shape, dtype),
        v_LBSKH=jnp.zeros(shape, dtype),
        valid_BS=jnp.zeros((batch, max_len), jnp.bool_),
        index_B=jnp.zeros((batch,), jnp.int32),
        positions_B=jnp.zeros((batch,), jnp.int32),
    )


def cache_shardings(mesh, cache: KVCache) -> KVCache:
    """NamedSharding per field from the rules table (dims the mesh does not divide replicate)."""
    from jax.sharding import NamedSharding

    out = {}
    for name, names in CACHE_LOGICAL_AXES.items():
        shape = getattr(cache, name).shape
        spec = fit_spec(logical_to_spec(names), shape, dict(mesh.shape))
        out[name] = NamedSharding(mesh, spec)
    return KVCache(**out)


def slot_ids(cache: KVCache, num_new: int) -> jax.Array:
    """[B, T] cache slots the next `num_new` tokens of each row are written to."""
    return cache.index_B[:, None] + jnp.arange(num_new, dtype=jnp.int32)[None, :]


def write_layer(cache_LBSKH: jax.Array, layer, new_BTKH: jax.Array, slots_BT: jax.Array):
    """Scatters one layer's new k or v into the stacked cache (in place under donation).

    Writes past max_len are dropped (scatter mode "drop"): callers size max_len to
    prompt length + max new tokens."""
    rows_B1 = jnp.arange(new_BTKH.shape[0], dtype=jnp.int32)[:, None]
    return cache_LBSKH.at[layer, rows_B1, slots_BT].set(
        new_BTKH.astype(cache_LBSKH.dtype), mode="drop"
    )


def mark_valid(cache: KVCache, mask_BT: jax.Array) -> jax.Array:
    """valid_BS after writing T new tokens per row (mask_BT: 1 = real token)."""
    rows_B1 = jnp.arange(mask_BT.shape[0], dtype=jnp.int32)[:, None]
    slots_BT = slot_ids(cache, mask_BT.shape[1])
    return cache.valid_BS.at[rows_B1, slots_BT].set(mask_BT.astype(jnp.bool_), mode="drop")


def advance(cache: KVCache, k_LBSKH, v_LBSKH, valid_BS, mask_BT: jax.Array) -> KVCache:
    """The cache after writing T new tokens per row: write index +T, positions +real tokens."""
    return KVCache(
        k_LBSKH=k_LBSKH,
        v_LBSKH=v_LBSKH,
        valid_BS=valid_BS,
        index_B=cache.index_B + mask_BT.shape[1],
        positions_B=cache.positions_B + mask_BT.astype(jnp.int32).sum(axis=1),
    )
