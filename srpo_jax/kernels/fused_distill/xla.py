"""Token-chunked fused distillation loss in plain XLA with closed-form gradients.

Per chunk of C tokens (lax.scan over chunks, so only one chunk's [C, V] logits is live):
  1. student and teacher logits with ordinary matmuls (bf16 in, fp32 accumulate),
  2. top-k on the student chunk (lax.top_k per vocabulary tile, then over the candidates;
     top-k does not lower inside Pallas kernels),
  3. one streaming pass over V for both log-sum-exps, the teacher entropy and the mass
     outside the top-k (`stats`, which the Pallas back-ends replace with their kernels),
  4. gather at the top-k ids, tail bucket, JSD and the closed-form gradient wrt the student
     logits, kept as O(k) per-token coefficients (`DzCoeffs`, xla_bwd.py),
  5. by `grad_mode` (api.py's "auto" takes "forward" for fp32 W, "recompute" for bf16):
     "recompute" saves those coefficients and the backward (xla_bwd.py) re-forms the
     logit gradient per vocabulary tile, writing d(unembedding) tile by tile into its
     result: no [D, V] fp32 temporary. "forward" forms the [C, V] gradient here and
     contracts it at once into d(hidden) [C, D] and d(unembedding) [D, V], added in fp32
     `dw_tile` columns at a time into the scan carry in place (one matmul fewer; the carry
     is the output buffer for fp32 W, an extra fp32 [D, V] for narrower W).

Closed-form gradient. With buckets A (student) and B (teacher) of exact log-probs:
  dD/dA_j = (1-a) p_j (A_j - log M_j)    for 0 < a < 1 (the log M terms cancel),
  dD/dA_j = -q_j                          for a = 0 (KL(P_t||P_s)),
  dD/dA_j = p_j (A_j - B_j + 1)           for a = 1 (KL(P_s||P_t)).
Tail bucket. SPEC's A_k = log(-expm1(min(log S, -1e-7))), S = sum_{i<k} p_i, cancels in
fp32 when S is near 1 (error ~ eps / (1 - S), amplified by the teacher's tail mass when
alpha < 1). We evaluate the same number as the log-mass outside the top-k,
A_k = max(lse(z over {z < thr}) - lse(z), log(-expm1(-1e-7))), thr = k-th largest student
logit, with the sums taken in the streaming pass; its gradient is
dA_k/dz = [z < thr] softmax_rest(z) - softmax(z) (zero when floored). Rows where a logit tied
with thr was left out of the top-k use SPEC's form, whose gradient is
dA_k/dA_i = -exp(A_i - A_k) (unclamped case). With G the top-k gradient and g_k the tail's,
  dD/dz = scatter(K, G) + g_k [z < thr] softmax_rest(z) - (sum_i G_i + g_k) softmax(z)
(rest form; SPEC form: G_i - g_k exp(A_i - A_k) in the scatter and no rest term), and the
temperature adds a factor 1/T on the way back to the raw logits h @ W.

Only the numerator is differentiable; z, divergence_N and entropy_N carry no gradient, and
the teacher inputs, mask and token weights get zero cotangents.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from srpo_jax.kernels.fused_distill.reference import (
    TAIL_LOG_MASS_CAP,
    TAIL_LOG_PROB_FLOOR,
    FusedDistillOutput,
)
from srpo_jax.kernels.fused_distill.vocab_tiles import (
    scan_tiles,
    tiled_top_k,
    tiled_vocab_sums,
)
from srpo_jax.kernels.fused_distill.xla_bwd import DzCoeffs, dz_from_coeffs, recompute_grads

f32 = jnp.float32
GRAD_MODES = ("recompute", "forward")


class VocabStats(NamedTuple):
    """Per-row results of the streaming vocabulary pass (all fp32 [C])."""

    lse_s: jax.Array  # logsumexp of the student row
    lse_t: jax.Array  # logsumexp of the teacher row
    ent_t: jax.Array  # teacher entropy over the full row
    rest_s: jax.Array  # logsumexp of the student over {z_s < thr}
    rest_t: jax.Array  # logsumexp of the teacher over {z_s < thr}
    ties: jax.Array  # count of z_s == thr (float)


@dataclasses.dataclass(frozen=True)
class XlaVocabStats:
    """The vocabulary pass in XLA, (zs_CV, zt_CV, thr_C) -> VocabStats; thr_C is the k-th
    largest student logit of each row. Summed over block_v-column tiles (vocab_tiles.py)
    so that its temporaries are [C, block_v], not more [C, V] buffers."""

    block_v: int = 8192

    def __call__(self, zs_CV: jax.Array, zt_CV: jax.Array, thr_C: jax.Array) -> VocabStats:
        return VocabStats(*tiled_vocab_sums(zs_CV, zt_CV, thr_C, self.block_v))


xla_vocab_stats = XlaVocabStats()


@dataclasses.dataclass(frozen=True)
class ChunkedConfig:
    """Static settings of one chunked run (hashable: it is a custom_vjp nondiff argument)."""

    topk: int
    alpha: float
    tau: float
    add_tail: bool
    entropy_over: str
    temperature: float
    chunk_size: int
    stats: Callable = xla_vocab_stats
    # "recompute": the forward keeps O(N k) coefficients and the backward re-forms the logit
    # gradient per vocabulary tile (xla_bwd.py): no [D, V] fp32 temporaries. "forward": the
    # gradient is contracted inside the forward scan, dW [D, V] in fp32 as the scan carry
    # (one matmul fewer, D V fp32 more temporary memory).
    grad_mode: str = "recompute"
    vocab_tile: int = 8192  # vocabulary columns per tile of the recompute backward
    # Vocabulary columns per tile of top-k (XLA:CPU sorts each tile; wider is faster,
    # 0.20 s vs 0.33 s per [256, 151936] chunk at 32768 vs 8192, for 22 MB more temporary).
    topk_tile: int = 32768
    # grad_mode="forward": vocabulary columns per in-place update of the dW accumulator
    # (4096 was fastest on XLA:CPU at D = 2560 among 1024..8192).
    dw_tile: int = 4096
    # Recompute backward: read bf16 W through an integer view (XLA:CPU workaround, see
    # xla_bwd.py). None: only when the default back-end is the CPU.
    narrow_views: bool | None = None


def _spec_tail(lp_CK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """SPEC's tail log(-expm1(min(lse, -1e-7))) and whether its clamp is inactive."""
    lse_C = jax.nn.logsumexp(lp_CK, axis=-1)
    tail_C = jnp.log(-jnp.expm1(jnp.minimum(lse_C, TAIL_LOG_MASS_CAP)))
    return tail_C, lse_C < TAIL_LOG_MASS_CAP


def bucket_jsd_and_grad(A_CB: jax.Array, B_CB: jax.Array, alpha: float):
    """D per row and dD/dA over the buckets, treating every bucket as a free variable."""
    p, q = jnp.exp(A_CB), jnp.exp(B_CB)
    if alpha == 0.0:
        return jnp.sum(q * (B_CB - A_CB), axis=-1), -q
    if alpha == 1.0:
        return jnp.sum(p * (A_CB - B_CB), axis=-1), p * (A_CB - B_CB + 1.0)
    log_m = jnp.logaddexp(A_CB + math.log(1.0 - alpha), B_CB + math.log(alpha))
    kl_s_C = jnp.sum(p * (A_CB - log_m), axis=-1)
    kl_t_C = jnp.sum(q * (B_CB - log_m), axis=-1)
    return (1.0 - alpha) * kl_s_C + alpha * kl_t_C, (1.0 - alpha) * p * (A_CB - log_m)


def _tail_buckets(cfg, a_CK, b_CK, top_CK, st: VocabStats):
    """Append the tail bucket to student (A) and teacher (B) log-probs; see module docstring.

    Returns A, B and the pieces the gradient needs: which form each row used and whether
    its clamp is inactive.
    """
    thr_C = top_CK[:, -1]
    # Logits tied with the k-th that top_k left out belong to neither the top-k nor
    # {z < thr}; such (rare) rows fall back to SPEC's literal form.
    chosen_ties_C = jnp.sum(top_CK == thr_C[:, None], axis=-1).astype(f32)
    exact_C = st.ties <= chosen_ties_C
    rest_a_C, rest_b_C = st.rest_s - st.lse_s, st.rest_t - st.lse_t
    spec_a_C, spec_free_C = _spec_tail(a_CK)
    spec_b_C, _ = _spec_tail(b_CK)
    tail_a_C = jnp.where(exact_C, jnp.maximum(rest_a_C, TAIL_LOG_PROB_FLOOR), spec_a_C)
    tail_b_C = jnp.where(exact_C, jnp.maximum(rest_b_C, TAIL_LOG_PROB_FLOOR), spec_b_C)
    rest_free_C = exact_C & (rest_a_C > TAIL_LOG_PROB_FLOOR)
    spec_free_C = ~exact_C & spec_free_C
    A = jnp.concatenate([a_CK, tail_a_C[:, None]], axis=-1)
    B = jnp.concatenate([b_CK, tail_b_C[:, None]], axis=-1)
    return A, B, rest_free_C, spec_free_C


def _chunk(cfg: ChunkedConfig, hs_CD, ht_CD, ws_DV, wt_DV, mask_C, tw_C, with_grad: bool):
    """Loss pieces for one chunk of C tokens, and (with_grad) the zs_CV logits and the
    DzCoeffs of their gradient."""
    inv_t = 1.0 / cfg.temperature
    # fp32 logits from bf16 operands via the accumulator type, never by upcasting W: an
    # explicit astype on the [D, V] matrix would be loop-invariant and XLA would hoist a full
    # fp32 copy out of the scan.
    zs_CV = jnp.einsum("cd,dv->cv", hs_CD, ws_DV, preferred_element_type=f32) * inv_t
    zt_CV = jnp.einsum("cd,dv->cv", ht_CD, wt_DV, preferred_element_type=f32) * inv_t
    top_CK, ids_CK = tiled_top_k(zs_CV, cfg.topk, cfg.topk_tile)
    # Log-sum-exps and entropy in fp32: the JSD lives in small log-prob differences.
    st = cfg.stats(zs_CV, zt_CV, top_CK[:, -1])
    a_CK = top_CK - st.lse_s[:, None]
    b_CK = jnp.take_along_axis(zt_CV, ids_CK, axis=-1) - st.lse_t[:, None]
    if cfg.add_tail:
        A, B, rest_free_C, spec_free_C = _tail_buckets(cfg, a_CK, b_CK, top_CK, st)
    else:
        # No tail: renormalise over the k buckets (SDPO code; the full normalisers cancel).
        A = a_CK - jax.nn.logsumexp(a_CK, axis=-1, keepdims=True)
        B = b_CK - jax.nn.logsumexp(b_CK, axis=-1, keepdims=True)
    div_C, g_CB = bucket_jsd_and_grad(A, B, cfg.alpha)
    ent_C = st.ent_t
    if cfg.entropy_over == "buckets":
        ent_C = -jnp.sum(jnp.exp(B) * B, axis=-1)
    u_C = jnp.exp(-ent_C / cfg.tau)
    live_C = mask_C > 0
    coef_C = jnp.where(live_C, mask_C * u_C * tw_C, 0.0)
    # where(), not a product, so a masked row with a non-finite D cannot poison the sums.
    num_C = jnp.where(live_C, coef_C * div_C, 0.0)
    z_C = jnp.where(live_C, mask_C * u_C, 0.0)
    out = (num_C, z_C, div_C, ent_C)
    if not with_grad:
        return out, None
    g_CB = jnp.where(live_C[:, None], g_CB * coef_C[:, None], 0.0)
    g_CK = g_CB[:, : cfg.topk]
    zero_C = jnp.zeros_like(coef_C)
    if not cfg.add_tail:
        # dA_i/dz = onehot(K_i) - softmax over the top-k: only the k ids get gradient.
        g_CK = g_CK - jnp.exp(A) * jnp.sum(g_CK, axis=-1, keepdims=True)
        return out, (zs_CV, DzCoeffs(ids_CK, g_CK, zero_C, st.lse_s, zero_C, st.lse_s))
    g_tail_C = g_CB[:, -1]
    # SPEC form: dA_k/dA_i = -exp(A_i - A_k).
    spec_g_C = jnp.where(spec_free_C, g_tail_C, 0.0)
    g_CK = g_CK - spec_g_C[:, None] * jnp.exp(a_CK - A[:, -1:])
    # Rest form: dA_k/dz = [z < thr] softmax_rest(z) - softmax(z).
    rest_g_C = jnp.where(rest_free_C, g_tail_C, 0.0)
    s_C = jnp.sum(g_CK, axis=-1) + rest_g_C
    # lse where the rest term is off, so its exp stays finite (0 * inf would be NaN).
    shift_C = jnp.where(rest_free_C, st.rest_s, st.lse_s)
    # At the top-k ids, G_i - S p_i cancels when p_i ~ 1 (peaked rows); write it instead as
    # G_i (1 - p_i) - (S - G_i) p_i with 1 - p_i = -expm1(A_i) and S - G_i from exclusive
    # prefix and suffix sums, so no large terms cancel.
    zero_C1 = zero_C[:, None]
    before_CK = jnp.concatenate([zero_C1, jnp.cumsum(g_CK, axis=-1)[:, :-1]], axis=-1)
    after_CK = jnp.concatenate([jnp.cumsum(g_CK[:, ::-1], axis=-1)[:, -2::-1], zero_C1], axis=-1)
    others_CK = before_CK + after_CK + rest_g_C[:, None]
    top_dz_CK = -g_CK * jnp.expm1(a_CK) - others_CK * jnp.exp(a_CK)
    return out, (zs_CV, DzCoeffs(ids_CK, top_dz_CK, s_C, st.lse_s, rest_g_C, shift_C))


def _contract(dz_CV, hs_CD, ws_DV, dw_DV, tile: int):
    """Logit gradient -> (d hidden [C, D], dw_DV + d unembedding [D, V]), fp32 accumulation.

    dw_DV None: return this chunk's d(unembedding) [D, V] in fp32 (the first chunk).

    d(unembedding) is added into the accumulator dw_DV one [D, T] vocabulary tile at a
    time, in place: a whole-chunk h^T dz would be a second [D, V] fp32 buffer beside the
    accumulator (XLA:CPU does not fuse the add into the dot). With an fp32 unembedding the
    accumulator is the gradient itself and XLA builds it in the output buffer.
    """
    dh_CD = jnp.einsum("cv,dv->cd", dz_CV.astype(ws_DV.dtype), ws_DV, preferred_element_type=f32)
    vocab = dz_CV.shape[1]
    tile = min(tile, vocab)
    # h^T made once per chunk: contracting over C in the tile loop would re-transpose h for
    # every tile (measured 1.4x slower on XLA:CPU at T = 8192).
    hs_DC = jnp.transpose(hs_CD)
    if dw_DV is None:
        dw_DV = jnp.matmul(hs_DC, dz_CV.astype(ws_DV.dtype), preferred_element_type=f32)
        return dh_CD.astype(hs_CD.dtype), dw_DV

    def tile_step(dw_DV, col0, fresh_T):
        # Columns a shifted last tile shares with the tile before get no second update.
        dz_CT = jnp.where(fresh_T, jax.lax.dynamic_slice_in_dim(dz_CV, col0, tile, 1), 0.0)
        upd_DT = jnp.matmul(hs_DC, dz_CT.astype(ws_DV.dtype), preferred_element_type=f32)
        upd_DT += jax.lax.dynamic_slice_in_dim(dw_DV, col0, tile, 1)
        return jax.lax.dynamic_update_slice_in_dim(dw_DV, upd_DT, col0, 1), None

    dw_DV, _ = scan_tiles(tile_step, dw_DV, vocab, tile)
    return dh_CD.astype(hs_CD.dtype), dw_DV


def _split_chunks(cfg: ChunkedConfig, n_tokens: int) -> tuple[int, int]:
    """(chunk, n_chunks): tokens padded to whole chunks of at most cfg.chunk_size."""
    chunk = min(cfg.chunk_size, -(-n_tokens // 8) * 8)
    return chunk, -(-n_tokens // chunk)


def _run(cfg: ChunkedConfig, hs_ND, ht_ND, ws_DV, wt_DV, mask_N, tw_N, mode: str):
    """Pad tokens to whole chunks and scan; returns outputs and, by mode, nothing ("value"),
    the student grads ("forward", grad in forward) or the chunked DzCoeffs ("recompute")."""
    n_tokens = hs_ND.shape[0]
    chunk, n_chunks = _split_chunks(cfg, n_tokens)
    n_pad = n_chunks * chunk
    inv_t = 1.0 / cfg.temperature

    def split(x):
        pad = [(0, n_pad - n_tokens)] + [(0, 0)] * (x.ndim - 1)
        return jnp.pad(x, pad).reshape(n_chunks, chunk, *x.shape[1:])

    xs = (split(hs_ND), split(ht_ND), split(mask_N), split(tw_N))

    def chunk_grads(x, dw_acc):
        out, (zs_CV, coeffs) = _chunk(cfg, x[0], x[1], ws_DV, wt_DV, x[2], x[3], True)
        dz_CV = dz_from_coeffs(zs_CV, coeffs, 0, zs_CV.shape[1]) * inv_t
        dh_CD, dw_acc = _contract(dz_CV, x[0], ws_DV, dw_acc, cfg.dw_tile)
        return dw_acc, (out, dh_CD)

    def body(dw_acc, x):
        if mode == "forward":
            return chunk_grads(x, dw_acc)
        out, grads = _chunk(cfg, x[0], x[1], ws_DV, wt_DV, x[2], x[3], mode != "value")
        return dw_acc, (out, None if grads is None else grads[1])

    if mode != "forward":
        _, (outs, extra) = jax.lax.scan(body, None, xs)
    else:
        # The first chunk writes the dW accumulator, the scan over the rest adds into it:
        # no zero fill and no read of zeros, one [D, V] pass each.
        dw_DV, (out0, dh0) = chunk_grads(jax.tree.map(lambda a: a[0], xs), None)
        rest = jax.tree.map(lambda a: a[1:], xs)
        dw_DV, (outs, extra) = jax.lax.scan(body, dw_DV, rest)
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), out0, outs)
        extra = jnp.concatenate([dh0[None], extra])
    num_N, z_N, div_N, ent_N = (o.reshape(n_pad)[:n_tokens] for o in outs)
    result = FusedDistillOutput(jnp.sum(num_N), jnp.sum(z_N), div_N, ent_N)
    if mode != "forward":
        return result, extra
    dh_ND = extra.reshape(n_pad, -1)[:n_tokens]
    return result, (dh_ND, dw_DV.astype(ws_DV.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(cfg, hs_ND, ht_ND, ws_DV, wt_DV, mask_N, tw_N):
    return _run(cfg, hs_ND, ht_ND, ws_DV, wt_DV, mask_N, tw_N, "value")[0]


def _fused_fwd(cfg, hs_ND, ht_ND, ws_DV, wt_DV, mask_N, tw_N):
    out, extra = _run(cfg, hs_ND, ht_ND, ws_DV, wt_DV, mask_N, tw_N, cfg.grad_mode)
    if cfg.grad_mode == "recompute":
        return out, (extra, hs_ND, ws_DV)
    # ws_DV[:0] is an empty stand-in that keeps the unembedding's dtype and sharding type.
    return out, (extra, None, ws_DV[:0])


def _fused_bwd(cfg, res, ct):
    extra, hs_ND, ws_like = res
    ct_num = ct.numerator.astype(f32)
    if cfg.grad_mode == "recompute":
        chunk, _ = _split_chunks(cfg, hs_ND.shape[0])
        dh_ND, dw_DV = recompute_grads(
            hs_ND,
            ws_like,
            extra,
            ct_num,
            chunk=chunk,
            vocab_tile=cfg.vocab_tile,
            inv_t=1.0 / cfg.temperature,
            narrow_views=cfg.narrow_views
            if cfg.narrow_views is not None
            else jax.default_backend() == "cpu",
        )
    else:
        dh_ND, dw_DV = extra
        dh_ND = (dh_ND.astype(f32) * ct_num).astype(dh_ND.dtype)
        dw_DV = dw_DV.astype(f32) * ct_num
    # Under shard_map a replicated unembedding's cotangent is the sum over the token shards.
    extra_axes = jax.typeof(dw_DV).manual_axis_type.varying
    extra_axes -= jax.typeof(ws_like).manual_axis_type.varying
    if extra_axes:
        dw_DV = jax.lax.psum(dw_DV, tuple(sorted(extra_axes)))
    # None: zero cotangent for the teacher inputs, mask and token weights.
    return (dh_ND, None, dw_DV.astype(ws_like.dtype), None, None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)


def chunked_fused_distill(
    cfg: ChunkedConfig,
    student_hidden_ND: jax.Array,
    teacher_hidden_ND: jax.Array,
    student_unembed_DV: jax.Array,
    teacher_unembed_DV: jax.Array,
    mask_N: jax.Array,
    token_weight_N: jax.Array,
) -> FusedDistillOutput:
    """Chunked fused distillation with closed-form gradients; `cfg.stats` picks the back-end
    and `cfg.grad_mode` where the gradient is formed."""
    if cfg.grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode={cfg.grad_mode!r}; expected one of {GRAD_MODES}")
    if cfg.vocab_tile < 1:
        raise ValueError(f"vocab_tile={cfg.vocab_tile} must be positive")
    mask_N = jax.lax.stop_gradient(mask_N.astype(f32))
    token_weight_N = jax.lax.stop_gradient(token_weight_N.astype(f32))
    return _fused(
        cfg,
        student_hidden_ND,
        jax.lax.stop_gradient(teacher_hidden_ND),
        student_unembed_DV,
        jax.lax.stop_gradient(teacher_unembed_DV),
        mask_N,
        token_weight_N,
    )
