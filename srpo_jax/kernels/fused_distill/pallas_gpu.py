"""Fused distillation on GPU: the streaming vocabulary pass as a Pallas (Triton) kernel.

Division of labour (same as pallas_tpu.py): the chunk loop, the logits matmuls (cuBLAS is
already at the roofline there), lax.top_k, the bucket JSD and the gradient contraction stay
in XLA (xla.py); this kernel replaces `xla_vocab_stats`. It reads the chunk's fp32 student
and teacher logits exactly once and returns per row the student and teacher log-sum-exps,
the teacher entropy, and the student and teacher log-mass outside the top-k (logits below
the k-th student logit thr, plus the count tied with thr) from an online (running max)
reduction. Not fused
with the matmul: top-k needs the student row materialised anyway.

One program per block of rows; inside, a loop over V tiles. Triton tiles are powers of two,
and V usually is not (151936 = 128 * 1187): the loop covers the whole tiles, then one last
tile is read at offset V - tile (always in bounds, so no out-of-bounds pointer is ever
formed and interpret mode sees the same data) with the columns already counted masked out.

Online entropy: running max m, s = sum e^(z-m), t = sum e^(z-m) (z-m); lse = m + log s,
H = log s - t / s; a new max m' rescales s <- s e^(m-m'), t <- e^(m-m') (t + (m-m') s).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from srpo_jax.kernels.fused_distill import xla

f32 = jnp.float32
# Finite start for the running max: with -inf, (m - m') * s would be -inf * 0 = NaN.
_NEG = -1e30


def _update(carry, zs, zt, keep, thr):
    """Fold one [rows, tile] tile into the running statistics."""
    ms, ss, mt, st, tt, rs, rt, nt = carry
    # fp32 statistics: bf16 sums over 150k terms would lose the log-prob differences.
    zs = jnp.where(keep, zs.astype(f32), -jnp.inf)
    zt = jnp.where(keep, zt.astype(f32), -jnp.inf)
    rest = keep & (zs < thr[:, None])
    ms_new = jnp.maximum(ms, jnp.max(zs, axis=1))
    scale_s = jnp.exp(ms - ms_new)
    es = jnp.exp(zs - ms_new[:, None])
    ss = ss * scale_s + jnp.sum(es, axis=1)
    rs = rs * scale_s + jnp.sum(jnp.where(rest, es, 0.0), axis=1)
    nt = nt + jnp.sum(jnp.where(keep & (zs == thr[:, None]), 1.0, 0.0), axis=1)
    mt_new = jnp.maximum(mt, jnp.max(zt, axis=1))
    scale_t = jnp.exp(mt - mt_new)
    e = jnp.exp(zt - mt_new[:, None])
    d = jnp.where(keep, zt - mt_new[:, None], 0.0)
    tt = scale_t * (tt + (mt - mt_new) * st) + jnp.sum(e * d, axis=1)
    st = scale_t * st + jnp.sum(e, axis=1)
    rt = scale_t * rt + jnp.sum(jnp.where(rest, e, 0.0), axis=1)
    return ms_new, ss, mt_new, st, tt, rs, rt, nt


def _stats_kernel(zs_ref, zt_ref, thr_ref, *out_refs, v_size, block_v):
    rows = zs_ref.shape[0]
    n_full = v_size // block_v
    thr = thr_ref[...]
    zero = jnp.zeros((rows,), f32)
    neg = jnp.full((rows,), _NEG, f32)
    init = (neg, zero, neg, zero, zero, zero, zero, zero)
    keep_all = jnp.ones((rows, block_v), jnp.bool_)

    def body(j, carry):
        start = pl.multiple_of(j * block_v, block_v)
        cols = pl.ds(start, block_v)
        return _update(carry, zs_ref[:, cols], zt_ref[:, cols], keep_all, thr)

    carry = jax.lax.fori_loop(0, n_full, body, init)
    if v_size % block_v:
        # Last tile re-read in bounds at V - tile; columns below n_full * tile already counted.
        start = v_size - block_v
        col = start + jax.lax.broadcasted_iota(jnp.int32, (rows, block_v), 1)
        cols = pl.ds(start, block_v)
        keep = col >= n_full * block_v
        carry = _update(carry, zs_ref[:, cols], zt_ref[:, cols], keep, thr)
    ms, ss, mt, st, tt, rs, rt, nt = carry
    results = (ms + jnp.log(ss), mt + jnp.log(st), jnp.log(st) - tt / st)
    results += (ms + jnp.log(rs), mt + jnp.log(rt), nt)
    for ref, value in zip(out_refs, results, strict=True):
        ref[...] = value


@dataclasses.dataclass(frozen=True)
class GpuVocabStats:
    """Callable (zs_CV, zt_CV, thr_C) -> xla.VocabStats backed by the Triton kernel."""

    block_rows: int = 8
    block_v: int = 1024
    num_warps: int = 8
    num_stages: int = 2
    interpret: bool = False

    def __post_init__(self):
        for name in ("block_rows", "block_v"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"Triton tiles are powers of two; got {name}={value}")

    def __call__(self, zs_CV: jax.Array, zt_CV: jax.Array, thr_C: jax.Array) -> xla.VocabStats:
        n_rows, v_size = zs_CV.shape
        br = self.block_rows
        # Largest power-of-two tile not above V, so the shifted last tile stays in bounds.
        bv = min(self.block_v, 1 << (v_size.bit_length() - 1))
        rows_pad = -(-n_rows // br) * br
        if rows_pad != n_rows:
            pad = ((0, rows_pad - n_rows), (0, 0))
            zs_CV, zt_CV = jnp.pad(zs_CV, pad), jnp.pad(zt_CV, pad)
            thr_C = jnp.pad(thr_C, pad[0])
        rows_in = pl.BlockSpec((br, v_size), lambda i: (i, 0))
        row_out = pl.BlockSpec((br,), lambda i: (i,))
        outs = pl.pallas_call(
            functools.partial(_stats_kernel, v_size=v_size, block_v=bv),
            out_shape=[jax.ShapeDtypeStruct((rows_pad,), f32)] * 6,
            grid=(rows_pad // br,),
            in_specs=[rows_in, rows_in, row_out],
            out_specs=[row_out] * 6,
            compiler_params=plgpu.CompilerParams(
                num_warps=self.num_warps, num_stages=self.num_stages
            ),
            interpret=self.interpret,
        )(zs_CV, zt_CV, thr_C.astype(f32))
        return xla.VocabStats(*(o[:n_rows] for o in outs))


def fused_distill_pallas_gpu(
    *args, stats: GpuVocabStats = GpuVocabStats(), **cfg_kwargs
) -> xla.FusedDistillOutput:
    """Chunked fused distillation whose vocabulary pass runs in the Triton kernel."""
    cfg = xla.ChunkedConfig(stats=stats, **cfg_kwargs)
    return xla.chunked_fused_distill(cfg, *args)
