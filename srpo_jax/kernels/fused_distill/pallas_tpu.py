"""Fused distillation on TPU: the streaming vocabulary pass as a Mosaic TPU Pallas kernel.

Division of labour (same as pallas_gpu.py): the chunk loop, the logits matmuls, lax.top_k,
the bucket JSD and the gradient contraction stay in XLA (xla.py); this kernel replaces
`xla_vocab_stats`, reading the chunk's fp32 student and teacher logits once and producing
per row the student and teacher log-sum-exps, the teacher entropy, and the student and
teacher log-mass outside the top-k (logits below the k-th student logit thr, plus the count
of logits tied with thr) with an online (running max) reduction. It is not fused with the
matmul: top-k needs the whole student row materialised anyway, so the logits exist in HBM
once per chunk regardless.

Grid (row blocks "parallel", V tiles "arbitrary"); running statistics live in VMEM scratch
as lane-replicated [rows, 128] tiles and are written out at the last V tile. V need not be
a multiple of the tile (151936 = 128 * 1187): the last, partial tile is masked by column
index, so whatever lies beyond V in that block is never used.

Online entropy: with running max m, s = sum e^(z-m) and t = sum e^(z-m) (z-m),
lse = m + log s and H = lse - E[z] = log s - t / s; a new max m' rescales
s <- s e^(m-m'), t <- e^(m-m') (t + (m-m') s).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from srpo_jax.kernels.fused_distill import xla

f32 = jnp.float32
LANES = 128
# Finite start for the running max: with -inf, (m - m') * s would be -inf * 0 = NaN.
_NEG = -1e30


def _rowmax(x):
    return jnp.max(x, axis=1, keepdims=True)


def _rowsum(x):
    return jnp.sum(x, axis=1, keepdims=True)


def _stats_kernel(zs_ref, zt_ref, thr_ref, *refs, v_size, block_v):
    lse_s_ref, lse_t_ref, ent_ref, rest_s_ref, rest_t_ref, ties_ref = refs[:6]
    ms, ss, mt, st, tt, rs, rt, nt = refs[6:]
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        ms[...] = jnp.full(ms.shape, _NEG, f32)
        mt[...] = jnp.full(mt.shape, _NEG, f32)
        for acc in (ss, st, tt, rs, rt, nt):
            acc[...] = jnp.zeros(acc.shape, f32)

    col = j * block_v + jax.lax.broadcasted_iota(jnp.int32, zs_ref.shape, 1)
    valid = col < v_size
    # fp32 statistics: bf16 sums over 150k terms would lose the log-prob differences.
    zs = jnp.where(valid, zs_ref[...].astype(f32), -jnp.inf)
    zt = jnp.where(valid, zt_ref[...].astype(f32), -jnp.inf)
    thr = _rowmax(thr_ref[...])
    rest = valid & (zs < thr)

    ms_old = ms[...]
    ms_new = jnp.maximum(ms_old, _rowmax(zs))
    scale_s = jnp.exp(ms_old - ms_new)
    es = jnp.exp(zs - _rowmax(ms_new))
    ss[...] = ss[...] * scale_s + _rowsum(es)
    rs[...] = rs[...] * scale_s + _rowsum(jnp.where(rest, es, 0.0))
    nt[...] = nt[...] + _rowsum(jnp.where(valid & (zs == thr), 1.0, 0.0))
    ms[...] = ms_new

    mt_old = mt[...]
    mt_new = jnp.maximum(mt_old, _rowmax(zt))
    scale_t = jnp.exp(mt_old - mt_new)
    e = jnp.exp(zt - _rowmax(mt_new))
    d = jnp.where(valid, zt - _rowmax(mt_new), 0.0)
    tt[...] = scale_t * (tt[...] + (mt_old - mt_new) * st[...]) + _rowsum(e * d)
    st[...] = scale_t * st[...] + _rowsum(e)
    rt[...] = scale_t * rt[...] + _rowsum(jnp.where(rest, e, 0.0))
    mt[...] = mt_new

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        lse_s_ref[...] = ms[...] + jnp.log(ss[...])
        lse_t_ref[...] = mt[...] + jnp.log(st[...])
        ent_ref[...] = jnp.log(st[...]) - tt[...] / st[...]
        rest_s_ref[...] = ms[...] + jnp.log(rs[...])
        rest_t_ref[...] = mt[...] + jnp.log(rt[...])
        ties_ref[...] = nt[...]


@dataclasses.dataclass(frozen=True)
class TpuVocabStats:
    """Callable (zs_CV, zt_CV, thr_C) -> xla.VocabStats backed by the Mosaic kernel."""

    block_rows: int = 256
    block_v: int = 2048
    interpret: bool = False

    def __post_init__(self):
        if self.block_rows % 8 or self.block_v % LANES:
            raise ValueError(
                f"TPU tiles must be (8k, 128k); got block_rows={self.block_rows}, "
                f"block_v={self.block_v}"
            )

    def __call__(self, zs_CV: jax.Array, zt_CV: jax.Array, thr_C: jax.Array) -> xla.VocabStats:
        n_rows, v_size = zs_CV.shape
        br = min(self.block_rows, -(-n_rows // 8) * 8)
        bv = min(self.block_v, -(-v_size // LANES) * LANES)
        rows_pad = -(-n_rows // br) * br
        if rows_pad != n_rows:
            pad = ((0, rows_pad - n_rows), (0, 0))
            zs_CV, zt_CV = jnp.pad(zs_CV, pad), jnp.pad(zt_CV, pad)
            thr_C = jnp.pad(thr_C, pad[0])
        # Lane-replicated so every operand is a (8k, 128k) TPU tile.
        thr_CL = jnp.broadcast_to(thr_C.astype(f32)[:, None], (rows_pad, LANES))
        grid = (rows_pad // br, pl.cdiv(v_size, bv))
        tile = pl.BlockSpec((br, bv), lambda i, j: (i, j))
        row_out = pl.BlockSpec((br, LANES), lambda i, j: (i, 0))
        outs = pl.pallas_call(
            functools.partial(_stats_kernel, v_size=v_size, block_v=bv),
            out_shape=[jax.ShapeDtypeStruct((rows_pad, LANES), f32)] * 6,
            grid_spec=pltpu.PrefetchScalarGridSpec(
                num_scalar_prefetch=0,
                grid=grid,
                in_specs=[tile, tile, row_out],
                out_specs=[row_out] * 6,
                scratch_shapes=[pltpu.VMEM((br, LANES), f32)] * 8,
            ),
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
            interpret=self.interpret,
        )(zs_CV, zt_CV, thr_CL)
        return xla.VocabStats(*(o[:n_rows, 0] for o in outs))


def fused_distill_pallas_tpu(
    *args, stats: TpuVocabStats = TpuVocabStats(), **cfg_kwargs
) -> xla.FusedDistillOutput:
    """Chunked fused distillation whose vocabulary pass runs in the Mosaic TPU kernel."""
    cfg = xla.ChunkedConfig(stats=stats, **cfg_kwargs)
    return xla.chunked_fused_distill(cfg, *args)
