"""Recompute backward of the chunked fused distillation loss (grad_mode="recompute").

The forward scan (xla.py) keeps only O(N k) per-token coefficients (`DzCoeffs`) from which
the gradient wrt the student logits of any token and vocabulary column can be re-formed:

  dz[n, v] = top_dz[n, j]                                       if v = ids[n, j],
  dz[n, v] = -s[n] softmax(z_n)[v] + rest_g[n] exp(z[n, v] - shift[n])   otherwise.

(The rest term is the tail bucket's [z < thr] softmax_rest(z): for rows in the rest form
{z < thr} is exactly the complement of the top-k ids, so no threshold test is needed and a
recomputed logit that rounds differently cannot flip a column; other rows have rest_g = 0.)

The backward then loops over vocabulary tiles of T columns (outer scan) and token chunks
of C rows (inner scan): recompute the chunk's student logits on the tile, form dz [C, T]
already scaled by the cotangent, add dz @ W_tile^T into d(hidden) [N, D] (fp32) and
accumulate h^T dz into the tile's d(unembedding) [D, T] in fp32, then write that tile, cast
once, into the [D, V] result. The result is the outer scan's carry in the unembedding's
dtype and is returned as is, so XLA builds it in the output buffer: no [D, V] fp32
accumulator. The price is one more [C, D] x [D, T] matmul per chunk and tile than
grad-in-forward (5 instead of 4 N D V matmuls in all). For bf16 on XLA:CPU see the note
in `recompute_grads` (one [D, V] bf16 copy of W remains).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from srpo_jax.kernels.fused_distill.vocab_tiles import from_bits, scan_tiles, to_bits

f32 = jnp.float32


class DzCoeffs(NamedTuple):
    """Per-token coefficients of d numerator / d (student logits / T) (fp32 unless noted).

    All are already multiplied by the token's weight mask * u * token_weight (zero on
    masked and padding rows), but not by the cotangent or 1/T.
    """

    ids: jax.Array  # [C, k] int32 top-k ids of the student row
    top_dz: jax.Array  # [C, k] gradient at those ids
    s: jax.Array  # [C] coefficient of -softmax(z)
    lse: jax.Array  # [C] student logsumexp
    rest_g: jax.Array  # [C] coefficient of the tail's rest softmax (0 unless rest form)
    shift: jax.Array  # [C] log normaliser of that rest term (lse where rest_g is 0)


def dz_from_coeffs(zs_CT: jax.Array, c: DzCoeffs, col0, width: int) -> jax.Array:
    """d numerator / d z for logits zs_CT of vocabulary columns [col0, col0 + width)."""
    # One exp per logit: off the top-k, exp(z - shift) = softmax(z) * exp(lse - shift), and
    # lse - shift <= 16.2 (rest rows have log rest mass above the tail floor; other rows
    # have shift = lse), so the factor is finite; at the top-k ids the value is overwritten.
    coef_C = c.rest_g * jnp.exp(c.lse - c.shift) - c.s
    dense_CT = coef_C[:, None] * jnp.exp(zs_CT - c.lse[:, None])
    rel_CK = c.ids - col0
    # Ids outside this tile point one past its end and are dropped by the scatter.
    rel_CK = jnp.where((rel_CK >= 0) & (rel_CK < width), rel_CK, width)
    rows_C1 = jnp.arange(zs_CT.shape[0])[:, None]
    # top_k ids are distinct: set, not add.
    return dense_CT.at[rows_C1, rel_CK].set(c.top_dz, mode="drop")


def dividing_tile(vocab: int, tile: int) -> int:
    """The largest divisor of V in [tile / 2, 5 tile / 4] (V = 151936 = 2^7 * 1187 and
    tile 8192 give 9496), else tile itself."""
    for size in range(min(vocab, tile * 5 // 4), max(tile // 2, 1) - 1, -1):
        if vocab % size == 0:
            return size
    return tile


def _varying_like(x, ref):
    """Under shard_map (check_vma), give a fresh zeros carry the token axes of `ref`."""
    vma = tuple(jax.typeof(ref).manual_axis_type.varying)
    return jax.lax.pcast(x, vma, to="varying") if vma else x


def _write_dw_tile(dw_DV, dw_DT, col0, fresh_T, *, narrow: bool, tile: int):
    """dW tile [D, tile] written into the [D, V] carry at column col0.

    XLA:CPU widens narrow-float (bf16) dynamic-slice and dynamic-update-slice to fp32:
    slicing the loop-invariant W would hoist a [D, V] fp32 copy of W out of the loop, and
    a dynamic-update-slice into the dW carry would copy the carry whole. So narrow W is
    read through an unsigned view (one [D, V] copy: bitcast-convert copies on CPU, half
    the fp32 copy), and dW tiles are written with a select over the carry, which XLA
    updates in place (one streaming [D, V] pass per tile, so tiles that divide V are
    preferred: no gather). fp32 uses plain slices and in-place dynamic-update-slice.
    """
    d_model, vocab = dw_DV.shape
    if not narrow:
        old_DT = jax.lax.dynamic_slice_in_dim(dw_DV, col0, tile, 1)
        dw_DT = jnp.where(fresh_T, dw_DT.astype(dw_DV.dtype), old_DT)
        return jax.lax.dynamic_update_slice_in_dim(dw_DV, dw_DT, col0, 1)
    if vocab % tile == 0:
        # Whole tiles: a select against the tile broadcast along V, a streaming pass.
        # The carry must enter only through elementwise ops (no reshape of it), else
        # XLA does not update it in place and copies [D, V] per tile.
        shape_DLT = (d_model, vocab // tile, tile)
        new_DV = jnp.broadcast_to(dw_DT[:, None, :], shape_DLT).reshape(dw_DV.shape)
        at_V = jnp.arange(vocab) // tile == col0 // tile
        return jnp.where(at_V, new_DV, dw_DV.astype(f32)).astype(dw_DV.dtype)
    # Shifted last tile: gather each column's source (slower than the above).
    rel_V = jnp.clip(jnp.arange(vocab) - col0, 0, tile - 1)
    take_V = (jnp.arange(vocab) >= col0) & jnp.take(fresh_T, rel_V)
    new_DV = jnp.take(dw_DT, rel_V, axis=1)
    return jnp.where(take_V, new_DV, dw_DV.astype(f32)).astype(dw_DV.dtype)


def _chunk_sources(hs_ND, ws_DV, coeffs: DzCoeffs, chunk: int, narrow: bool):
    """(W as the tile loop reads it, h as [n_chunks, chunk, D]), through unsigned views for
    narrow floats.

    Narrow W is read through an unsigned view and dW written by a select: see _write_dw_tile
    for why (XLA:CPU widens narrow-float dynamic slices to fp32). h goes through the same
    view, else XLA:CPU keeps an fp32 copy of all of h for the per-chunk slices.
    """
    n_tokens = hs_ND.shape[0]
    n_chunks = coeffs.s.shape[0]
    ws_src_DV = ws_DV
    if narrow:
        # A where() on a forward output (top-k ids are never negative) ties the copy to the
        # end of the forward scan; else XLA schedules it first, beside the forward's
        # [C, V] logits.
        bits_DV = to_bits(ws_DV)
        ws_src_DV = jnp.where(coeffs.ids[0, 0, 0] >= 0, bits_DV, jnp.zeros((), bits_DV.dtype))
    hs_src_ND = to_bits(hs_ND) if narrow else hs_ND
    pad = [(0, n_chunks * chunk - n_tokens), (0, 0)]
    return ws_src_DV, jnp.pad(hs_src_ND, pad).reshape(n_chunks, chunk, -1)


def recompute_grads(
    hs_ND: jax.Array,
    ws_DV: jax.Array,
    coeffs: DzCoeffs,
    scale: jax.Array,
    *,
    chunk: int,
    vocab_tile: int,
    inv_t: float,
    narrow_views: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(d hidden [N, D] in hs dtype, d unembedding [D, V] in ws dtype) of scale * numerator.

    coeffs hold one row per padded token, chunked as [n_chunks, chunk, ...].
    narrow_views: the XLA:CPU workaround below for bf16 / f16 W (other back-ends slice
    narrow floats natively and need not copy W).
    """
    n_tokens, d_model = hs_ND.shape
    n_chunks = coeffs.s.shape[0]
    vocab = ws_DV.shape[1]
    tile = min(vocab_tile, vocab)
    # Cotangent and temperature folded into the logit gradient once.
    dz_scale = scale.astype(f32) * inv_t

    narrow = jnp.dtype(ws_DV.dtype).itemsize < 4 and narrow_views
    tile = dividing_tile(vocab, tile) if narrow else tile
    ws_src_DV, hs_KCD = _chunk_sources(hs_ND, ws_DV, coeffs, chunk, narrow)

    def tile_step(carry, col0, fresh_T):
        dw_DV, dh_ND = carry
        w_DT = jax.lax.dynamic_slice_in_dim(ws_src_DV, col0, tile, 1)
        w_DT = from_bits(w_DT, ws_DV.dtype) if narrow else w_DT

        def chunk_step(acc, x):
            dw_acc_DT, dh_ND = acc
            hs_CD, c, row0 = x
            hs_CD = from_bits(hs_CD, hs_ND.dtype) if narrow else hs_CD
            zs_CT = jnp.einsum("cd,dt->ct", hs_CD, w_DT, preferred_element_type=f32) * inv_t
            # Columns an earlier tile covered get no gradient here (shifted last tile).
            dz_CT = jnp.where(fresh_T, dz_from_coeffs(zs_CT, c, col0, tile) * dz_scale, 0.0)
            dz_CT = dz_CT.astype(ws_DV.dtype)
            dh_CD = jnp.einsum("ct,dt->cd", dz_CT, w_DT, preferred_element_type=f32)
            dw_acc_DT += jnp.einsum("cd,ct->dt", hs_CD, dz_CT, preferred_element_type=f32)
            # d(hidden) added into its [N, D] fp32 carry in place (no [N, D] per tile).
            dh_CD += jax.lax.dynamic_slice_in_dim(dh_ND, row0, chunk)
            dh_ND = jax.lax.dynamic_update_slice_in_dim(dh_ND, dh_CD, row0, 0)
            return (dw_acc_DT, dh_ND), None

        dw0_DT = _varying_like(jnp.zeros((d_model, tile), f32), hs_ND)
        rows_K = jnp.arange(n_chunks) * chunk
        (dw_DT, dh_ND), _ = jax.lax.scan(chunk_step, (dw0_DT, dh_ND), (hs_KCD, coeffs, rows_K))
        dw_DV = _write_dw_tile(dw_DV, dw_DT, col0, fresh_T, narrow=narrow, tile=tile)
        return (dw_DV, dh_ND), None

    # The dW carry is the result itself, in W's dtype: no [D, V] fp32 accumulator.
    dw0_DV = _varying_like(jnp.zeros(ws_DV.shape, ws_DV.dtype), hs_ND)
    dh0_ND = _varying_like(jnp.zeros((n_chunks * chunk, d_model), f32), hs_ND)
    (dw_DV, dh_ND), _ = scan_tiles(tile_step, (dw0_DV, dh0_ND), vocab, tile)
    return dh_ND[:n_tokens].astype(hs_ND.dtype), dw_DV
