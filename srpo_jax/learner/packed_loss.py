"""One micro-batch's loss on packed streams (packing.PackedBatch): loss.py's maths, read
from the packed layout.

Student hidden states come from the [K, L] streams (segment ids keep each row's attention
to itself, positions restart per row); only the N positions that predict a response token
are gathered for the loss head, so every per-token array is [1, N] (one "row" of tokens for
the objective, which reads each token's own row through row_ids_N: algo.objective's
rows_to_tokens / row_sums). The teacher's J streams give its Q scored positions, each
paired with the student token of the same row and index (teacher_src_Q): the fused
kernel's tokens are those Q pairs. No [rows, length] array is formed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from srpo_jax.algo import objective
from srpo_jax.kernels import chunked_vocab
from srpo_jax.kernels.fused_distill import api as fused_api


def _scored_hidden(graphdef, params, ids_KL, segment_KL, positions_KL, pos_N):
    """Hidden states [N, D] at the flat stream positions pos_N, and the unembedding [D, V]."""
    model = nnx.merge(graphdef, params)
    h_KLD = model.hidden_states(ids_KL, positions_BT=positions_KL, segment_ids_BT=segment_KL)
    h_ND = jnp.take(h_KLD.reshape(-1, h_KLD.shape[-1]), pos_N, axis=0)
    return h_ND, model.unembedding()


def _token_logp(cfg, h_ND, w_DV, target_N):
    return chunked_vocab.token_logprobs(
        h_ND,
        w_DV,
        target_N,
        temperature=cfg.temperature,
        chunk_size=cfg.train.chunk_size,
        compute_dtype=h_ND.dtype,
    )


def student_logp(cfg, graphdef, params, mb):
    """(log-probs [1, N] of the scored tokens, their hidden states [N, D], unembedding)."""
    h_ND, w_DV = _scored_hidden(
        graphdef, params, mb.input_ids_KL, mb.segment_ids_KL, mb.positions_KL, mb.score_pos_N
    )
    return _token_logp(cfg, h_ND, w_DV, mb.target_ids_N)[None], h_ND, w_DV


def _teacher_hidden(graphdef, teacher_params, mb):
    """Teacher hidden states [Q, D] at its scored positions, and its unembedding."""
    return _scored_hidden(
        graphdef,
        jax.lax.stop_gradient(teacher_params),
        mb.teacher_input_ids_JL,
        mb.teacher_segment_ids_JL,
        mb.teacher_positions_JL,
        mb.teacher_pos_Q,
    )


def teacher_entropy_sum(cfg, graphdef, teacher_params, mb) -> tuple[jax.Array, jax.Array]:
    """(Z, |S|) of one micro-batch: sum of exp(-H/tau) and count over routed SDPO tokens."""
    if mb.teacher_pos_Q.shape[-1] == 0 or not cfg.method.sdpo:
        return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    ht_QD, wt_DV = _teacher_hidden(graphdef, teacher_params, mb)
    ent_Q = chunked_vocab.token_entropy(
        ht_QD,
        wt_DV,
        temperature=cfg.temperature,
        chunk_size=cfg.train.chunk_size,
        compute_dtype=ht_QD.dtype,
    )
    rows_Q = jnp.take(mb.row_ids_N, mb.teacher_src_Q)
    mask_Q = mb.teacher_mask_Q * jnp.take(mb.sdpo_rows_B, rows_Q)
    u_Q = jnp.exp(-ent_Q / cfg.effective_tau)
    return jnp.sum(u_Q * mask_Q), jnp.sum(mask_Q)


def _teacher_logp(cfg, mb, ht_QD, wt_DV, logp_1N):
    """advantage_mix: teacher log-probs of the sampled tokens at their student tokens
    [1, N], and which rows have a teacher [b]."""
    src_Q, tmask_Q = mb.teacher_src_Q, mb.teacher_mask_Q
    t_logp_Q = _token_logp(cfg, ht_QD, wt_DV, jnp.take(mb.target_ids_N, src_Q))
    teacher_logp_N = jnp.zeros(logp_1N.shape[1:], logp_1N.dtype).at[src_Q].add(t_logp_Q * tmask_Q)
    rows_Q = jnp.take(mb.row_ids_N, src_Q)
    has_teacher_B = jnp.zeros(mb.advantages_B.shape, jnp.float32).at[rows_Q].max(tmask_Q)
    return teacher_logp_N[None], has_teacher_B


def fused_distill_options(cfg) -> fused_api.FusedDistillOptions:
    """The fused distillation kernel's options from the step settings (both layouts)."""
    a, t = cfg.algo, cfg.train
    return fused_api.FusedDistillOptions(
        topk=a.topk,
        alpha=a.alpha,
        tau=cfg.effective_tau,
        add_tail=a.add_tail,
        entropy_over=a.entropy_over,
        temperature=cfg.temperature,
        chunk_size=t.chunk_size,
        implementation=t.fused_implementation,
        grad_mode=t.fused_grad_mode,
    )


def _fused_sdpo(cfg, mb, teacher, student, logp_1N, old_1N):
    """The SDPO tokens of the teacher streams through the fused kernel: ((sum u c D, Z),
    the teacher entropies at their student tokens [1, N] for the metrics)."""
    (ht_QD, wt_DV), (h_ND, w_DV) = teacher, student
    a = cfg.algo
    resp_1N, row_ids_1N = mb.response_mask_N[None], mb.row_ids_N[None]
    mult_1N = objective.sdpo_token_multiplier(
        logp_1N,
        old_1N,
        mb.rollout_logprobs_N[None],
        resp_1N,
        loss_agg=a.loss_agg,
        is_clip=a.is_clip,
        tis_cap=a.tis_cap,
        row_ids_BT=row_ids_1N,
        rows=mb.advantages_B.shape[0],
    )
    routed_N = objective.routed_token_mask(resp_1N, mb.sdpo_rows_B, row_ids_1N)[0]
    src_Q = mb.teacher_src_Q
    mask_Q = jnp.take(routed_N, src_Q) * mb.teacher_mask_Q
    inputs = fused_api.FusedDistillInputs(
        jnp.take(h_ND, src_Q, axis=0),
        ht_QD,
        w_DV.astype(h_ND.dtype),
        wt_DV.astype(ht_QD.dtype),
        mask_Q,
        jnp.take(mult_1N[0], src_Q),
    )
    out = fused_api.fused_distill(inputs, fused_distill_options(cfg))
    ent_Q = jax.lax.stop_gradient(out.entropy_N) * mask_Q
    entropy_N = jnp.zeros(logp_1N.shape[1:], logp_1N.dtype).at[src_Q].add(ent_Q)
    return (out.numerator, out.z), entropy_N[None]


def objective_inputs(cfg, graphdef, params, teacher_params, mb, old_logp_1N):
    """The objective's per-token inputs of one packed micro-batch (loss.micro_objective)."""
    method = cfg.method
    logp_1N, h_ND, w_DV = student_logp(cfg, graphdef, params, mb)
    old_1N = jax.lax.stop_gradient(logp_1N) if old_logp_1N is None else old_logp_1N
    entropy_1N = jnp.zeros_like(logp_1N)
    fused = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)) if method.sdpo else None
    teacher_logp_1N = has_teacher_B = None
    if method.teacher_advantage:
        teacher_logp_1N = jnp.zeros_like(logp_1N)
        has_teacher_B = jnp.zeros(mb.advantages_B.shape, jnp.float32)
    if mb.teacher_pos_Q.shape[-1] > 0 and method.uses_teacher:
        teacher = _teacher_hidden(graphdef, teacher_params, mb)
        if method.teacher_advantage:
            teacher_logp_1N, has_teacher_B = _teacher_logp(cfg, mb, *teacher, logp_1N)
        if method.sdpo:
            fused, entropy_1N = _fused_sdpo(cfg, mb, teacher, (h_ND, w_DV), logp_1N, old_1N)
    return objective.ObjectiveInputs(
        logp_1N,
        old_1N,
        mb.rollout_logprobs_N[None],
        mb.advantages_B,
        mb.response_mask_N[None],
        mb.sdpo_rows_B,
        entropy_BT=entropy_1N,
        teacher_logp_BT=teacher_logp_1N,
        has_teacher_B=has_teacher_B,
        fused_sdpo=fused,
        row_ids_BT=mb.row_ids_N[None],
    )


def denominator(cfg, mini):
    """The mini-batch's denominator (SPEC 7): its micro-batches hold disjoint rows, so the
    per-micro-batch counts add up."""
    rows = mini.advantages_B.shape[-1]

    def one(resp_N, row_ids_N):
        agg = objective.aggregation(
            resp_N[None], cfg.algo.loss_agg, jnp.float32, row_ids_N[None], rows
        )
        return agg[1]

    return jnp.sum(jax.vmap(one)(mini.response_mask_N, mini.row_ids_N))
