"""The model side of one micro-batch's loss: student and teacher forwards feeding the objective.

The learner (learner.py) owns the optimisation loop; this module turns one micro-batch
of the packed batch (batching.py) into the numerator of SPEC 7:

* student hidden states on [prompt | response] for every row, and the log-probs of the
  sampled tokens, chunked over tokens (kernels/chunked_vocab.py);
* teacher (EMA params, stop-gradient) hidden states on [reprompt | response] for the
  packed routed rows only;
* the SDPO tokens through the fused distillation kernel, the rest through
  srpo_jax.algo.objective (the executable spec of the maths).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from srpo_jax.algo import objective
from srpo_jax.kernels import chunked_vocab
from srpo_jax.kernels.fused_distill import api as fused_api
from srpo_jax.learner import packed_loss
from srpo_jax.learner.packing import PackedBatch


def _forward_hidden(graphdef, params, ids_BS, mask_BS, prompt_len: int, resp_len: int):
    """Final hidden states at the positions that predict response tokens, [B, R, D] in the
    compute dtype, and the unembedding [D, V] in the parameter dtype.

    Every loss-head GEMM runs in the hidden states' (compute) dtype with fp32 accumulation,
    as `Qwen3.logits` does for the rollout engine, so the learner's log-probs come from the
    same bf16 products as the sampler's; the fp32 master unembedding gets its gradient
    through the cast (see `compute_dtype` in kernels/chunked_vocab.py).
    """
    model = nnx.merge(graphdef, params)
    h_BSD = model.hidden_states(ids_BS, attention_mask_BT=mask_BS)
    return h_BSD[:, prompt_len - 1 : prompt_len - 1 + resp_len], model.unembedding()


def _dims(mb):
    s = mb.input_ids_BS.shape[-1]
    r = mb.response_ids_BR.shape[-1]
    ts = mb.teacher_input_ids_MT.shape[-1]
    return s - r, r, ts - r, mb.teacher_input_ids_MT.shape[-2]


def student_logp(cfg, graphdef, params, mb):
    """(log-probs of the sampled tokens, hidden states, unembedding): [B, R] per row, or
    [K, L] per stream position for a packed micro-batch (packed_loss)."""
    if isinstance(mb, PackedBatch):
        return packed_loss.student_logp(cfg, graphdef, params, mb)
    p_len, r_len, _, _ = _dims(mb)
    h_BRD, w_DV = _forward_hidden(
        graphdef, params, mb.input_ids_BS, mb.attention_mask_BS, p_len, r_len
    )
    b, r, d = h_BRD.shape
    logp_BR = chunked_vocab.token_logprobs(
        h_BRD.reshape(b * r, d),
        w_DV,
        mb.response_ids_BR.reshape(-1),
        temperature=cfg.temperature,
        chunk_size=cfg.train.chunk_size,
        compute_dtype=h_BRD.dtype,
    ).reshape(b, r)
    return logp_BR, h_BRD, w_DV


def _teacher_hidden(graphdef, teacher_params, mb):
    _, r_len, tp_len, _ = _dims(mb)
    teacher_params = jax.lax.stop_gradient(teacher_params)
    return _forward_hidden(
        graphdef,
        teacher_params,
        mb.teacher_input_ids_MT,
        mb.teacher_attention_mask_MT,
        tp_len,
        r_len,
    )


def _teacher_token_mask(mb):
    """[M, R] validity of teacher tokens: the source row's response mask, padded rows off."""
    src_resp = jnp.take(mb.response_mask_BR, mb.teacher_src_M, axis=0)
    return src_resp * mb.teacher_valid_M[:, None].astype(jnp.float32)


def teacher_entropy_sum(cfg, graphdef, teacher_params, mb) -> tuple[jax.Array, jax.Array]:
    """(Z, |S|) of one micro-batch: sum of exp(-H/tau) and count over routed SDPO tokens."""
    if isinstance(mb, PackedBatch):
        return packed_loss.teacher_entropy_sum(cfg, graphdef, teacher_params, mb)
    _, _, _, m_rows = _dims(mb)
    if m_rows == 0 or not cfg.method.sdpo:
        return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    ht_MRD, wt_DV = _teacher_hidden(graphdef, teacher_params, mb)
    m, r, d = ht_MRD.shape
    ent_MR = chunked_vocab.token_entropy(
        ht_MRD.reshape(m * r, d),
        wt_DV,
        temperature=cfg.temperature,
        chunk_size=cfg.train.chunk_size,
        compute_dtype=ht_MRD.dtype,
    ).reshape(m, r)
    mask_MR = _teacher_token_mask(mb) * jnp.take(mb.sdpo_rows_B, mb.teacher_src_M)[:, None]
    u_MR = jnp.exp(-ent_MR / cfg.effective_tau)
    return jnp.sum(u_MR * mask_MR), jnp.sum(mask_MR)


def _teacher_logp(cfg, mb, ht_MRD, wt_DV, logp_BR):
    """advantage_mix: teacher log-probs of the sampled tokens scattered back to their rows,
    and which rows have a teacher ([B, R], [B])."""
    src_M, tvalid_M = mb.teacher_src_M, mb.teacher_valid_M.astype(jnp.float32)
    m, r, d = ht_MRD.shape
    t_logp_MR = chunked_vocab.token_logprobs(
        ht_MRD.reshape(m * r, d),
        wt_DV,
        jnp.take(mb.response_ids_BR, src_M, axis=0).reshape(-1),
        temperature=cfg.temperature,
        chunk_size=cfg.train.chunk_size,
        compute_dtype=ht_MRD.dtype,
    ).reshape(m, r)
    teacher_logp_BR = jnp.zeros_like(logp_BR).at[src_M].add(t_logp_MR * tvalid_M[:, None])
    has_teacher_B = jnp.zeros(logp_BR.shape[:1], jnp.float32).at[src_M].max(tvalid_M)
    return teacher_logp_BR, has_teacher_B


def _fused_sdpo(cfg, mb, ht_MRD, wt_DV, h_BRD, w_DV, logp_BR, old_BR, resp_BR, sdpo_B):
    """The SDPO tokens of the packed teacher rows through the fused kernel: ((sum u c D, Z),
    the teacher entropies scattered back to [B, R] for the metrics)."""
    a = cfg.algo
    src_M, tvalid_M = mb.teacher_src_M, mb.teacher_valid_M.astype(jnp.float32)
    m, r, d = ht_MRD.shape
    mult_BR = objective.sdpo_token_multiplier(
        logp_BR,
        old_BR,
        mb.rollout_logprobs_BR,
        resp_BR,
        loss_agg=a.loss_agg,
        is_clip=a.is_clip,
        tis_cap=a.tis_cap,
    )
    routed_BR = objective.routed_token_mask(resp_BR, sdpo_B)
    mask_MR = jnp.take(routed_BR, src_M, axis=0) * tvalid_M[:, None]
    inputs = fused_api.FusedDistillInputs(
        jnp.take(h_BRD, src_M, axis=0).reshape(m * r, d),
        ht_MRD.reshape(m * r, d),
        # In the compute dtype: bf16 GEMMs; the kernel accumulates dW in fp32 itself.
        w_DV.astype(h_BRD.dtype),
        wt_DV.astype(ht_MRD.dtype),
        mask_MR.reshape(-1),
        jnp.take(mult_BR, src_M, axis=0).reshape(-1),
    )
    out = fused_api.fused_distill(inputs, packed_loss.fused_distill_options(cfg))
    ent_MR = jax.lax.stop_gradient(out.entropy_N.reshape(m, r)) * mask_MR
    entropy_BR = jnp.zeros_like(logp_BR).at[src_M].add(ent_MR)
    return (out.numerator, out.z), entropy_BR


def _gap_metrics(old_BR, rollout_BR, resp_BR) -> dict:
    """Engine vs trainer log-prob gap (SPEC 4's rollout correction exists because of it)."""
    gap_BR = jnp.abs(old_BR - rollout_BR)
    return {
        "logp_gap/mean": jnp.sum(gap_BR * resp_BR) / jnp.maximum(jnp.sum(resp_BR), 1.0),
        "logp_gap/max": jnp.max(gap_BR * resp_BR),
    }


def objective_options(cfg) -> objective.ObjectiveOptions:
    """The learner's method and hyper-parameters as the objective's options."""
    a = cfg.algo
    return objective.ObjectiveOptions(
        method=cfg.method,
        loss_agg=a.loss_agg,
        tau=a.tau,
        clip_low=a.clip_low,
        clip_high=a.clip_high,
        dual_clip=a.dual_clip,
        tis_cap=a.tis_cap,
        is_clip=a.is_clip,
        mix_lambda=a.adv_mix_lambda,
    )


def micro_objective(cfg, graphdef, params, teacher_params, mb, old_logp_BR, sdpo_scale):
    """Numerator of SPEC 7 for one micro-batch (to be divided by the mini-batch denominator).

    The maths is srpo_jax.algo.objective's (the executable spec, tested against float64
    NumPy); this function feeds it: student log-probs for every row, and for the packed
    teacher rows the fused kernel's (sum u c D, Z) (methods with an SDPO term) and/or the
    teacher log-probs of the sampled tokens (teacher-advantage mixing).

    sdpo_scale: |S| / Z of the whole mini-batch when known (pre-pass), or None to use this
    micro-batch's own Z (exact when the mini-batch is one micro-batch).
    Returns (numerator, metrics).
    """
    if isinstance(mb, PackedBatch):
        inputs = packed_loss.objective_inputs(
            cfg, graphdef, params, teacher_params, mb, old_logp_BR
        )
    else:
        inputs = _objective_inputs(cfg, graphdef, params, teacher_params, mb, old_logp_BR)
    parts, metrics = objective.objective_parts(inputs, objective_options(cfg))
    if sdpo_scale is None:
        numerator, _ = objective.combine(parts)
    else:
        numerator = parts.grpo_sum + jax.lax.stop_gradient(sdpo_scale) * parts.sdpo_sum
    # The routed fraction of rows is the host's route/sdpo_frac; not logged twice.
    metrics = {f"loss/{k}": v for k, v in metrics.items() if k != "routed_fraction"}
    metrics.update(
        _gap_metrics(inputs.old_logp_BT, inputs.rollout_logp_BT, inputs.response_mask_BT)
    )
    metrics.update({"sdpo/tokens": parts.sdpo_count, "sdpo/z": parts.sdpo_z})
    return numerator, metrics


def _objective_inputs(cfg, graphdef, params, teacher_params, mb, old_logp_BR):
    """The objective's per-token inputs of one padded micro-batch."""
    method = cfg.method
    _, _, _, m_rows = _dims(mb)
    logp_BR, h_BRD, w_DV = student_logp(cfg, graphdef, params, mb)
    old_BR = jax.lax.stop_gradient(logp_BR) if old_logp_BR is None else old_logp_BR
    resp_BR = mb.response_mask_BR
    sdpo_B = mb.sdpo_rows_B
    entropy_BR = jnp.zeros_like(logp_BR)
    # Nothing routed / nothing with a teacher in this batch: no SDPO term, no mixing.
    fused = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)) if method.sdpo else None
    teacher_logp_BR = has_teacher_B = None
    if method.teacher_advantage:
        teacher_logp_BR = jnp.zeros_like(logp_BR)
        has_teacher_B = jnp.zeros(logp_BR.shape[:1], jnp.float32)
    if m_rows > 0 and method.uses_teacher:
        ht_MRD, wt_DV = _teacher_hidden(graphdef, teacher_params, mb)
        if method.teacher_advantage:
            teacher_logp_BR, has_teacher_B = _teacher_logp(cfg, mb, ht_MRD, wt_DV, logp_BR)
        if method.sdpo:
            fused, entropy_BR = _fused_sdpo(
                cfg, mb, ht_MRD, wt_DV, h_BRD, w_DV, logp_BR, old_BR, resp_BR, sdpo_B
            )
    return objective.ObjectiveInputs(
        logp_BR,
        old_BR,
        mb.rollout_logprobs_BR,
        mb.advantages_B,
        resp_BR,
        sdpo_B,
        entropy_BT=entropy_BR,
        teacher_logp_BT=teacher_logp_BR,
        has_teacher_B=has_teacher_B,
        fused_sdpo=fused,
    )


def denominator(cfg, mini):
    """One denominator per optimisation batch (SPEC 7), from the mini-batch's masks."""
    if isinstance(mini, PackedBatch):
        return packed_loss.denominator(cfg, mini)
    resp = mini.response_mask_BR
    return objective.aggregation(resp.reshape(-1, resp.shape[-1]), cfg.algo.loss_agg)[1]
