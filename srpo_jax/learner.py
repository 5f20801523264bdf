"""The SRPO learner: TrainState and one pure, jitted, sharded training step.

One call of `train_step(state, batch)` is one training step of SPEC section 10:

1. pi_old: with one mini-batch per step (SDPO, SRPO) pi_old is the stop-gradient of the
   current log-prob in the same forward (ratio == 1 exactly, as SPEC 4 says); with several
   (GRPO: 4 updates of 8 prompts) a forward-only pass over all rows before any update.
2. For each mini-batch (lax.scan): gradients accumulated over micro-batches (lax.scan) of
   the combined objective of SPEC 7 -- GRPO tokens of the rows routed to GRPO plus the
   entropy-weighted SDPO tokens of the routed rows, divided once by the mini-batch's token
   count (or sequence count for loss_agg="seq-mean-token-mean").
   * the student forward runs on [prompt | response] for every row;
   * the teacher (EMA params, stop-gradient) forward runs on [reprompt | response] for the
     densely packed routed rows only (batching.py), so its cost scales with the routed
     fraction; a step that routes nothing compiles no teacher forward at all;
   * the SDPO tokens go through the fused distillation kernel (srpo_jax.kernels), which
     returns sum_t u_t c_t D_t and Z = sum_t u_t with u_t = exp(-H_t / tau); the entropy
     weights w_t = |S| u_t / Z are applied by one scalar |S| / Z per mini-batch.
     With one micro-batch that scalar is formed in the same pass. With several, a
     teacher-entropy pre-pass over the mini-batch computes Z first, so every micro-batch
     gradient is already correctly weighted and one accumulator suffices (the pre-pass
     re-runs only the teacher forward of routed rows).
3. Global-norm clip 1.0, AdamW with the learning rate of the current *training step*
   (linear warmup, then constant; it advances once per step, not per update); an update
   whose gradient norm is not finite is skipped (params and optimizer state untouched)
   and counted.
4. EMA teacher: phi <- (1 - rate) phi + rate theta, only if some update of the step was
   applied (SPEC 9).

Deviations from SPEC, deliberate: none in the maths. `srpo_no_dw` uses tau = inf, which
makes u_t = exp(-0) = 1 exactly, i.e. w_t = 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srpo_jax.algo import losses
from srpo_jax.kernels import chunked_vocab
from srpo_jax.kernels.fused_distill import api as fused_api
from srpo_jax.sharding import named_sharding

METHODS = ("grpo", "sdpo", "srpo", "srpo_no_dw", "advantage_mix")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """What the train step needs to know; built by the trainer from the run config."""

    method: str = "srpo"
    # GRPO (SPEC 4)
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    tis_cap: float = 2.0
    # SDPO (SPEC 5-6)
    is_clip: float = 2.0
    topk: int = 100
    alpha: float = 0.5
    tau: float = 1.0
    add_tail: bool = True
    entropy_over: str = "vocab"
    temperature: float = 1.0
    loss_agg: str = "token-mean"
    adv_mix_lambda: float = 0.1
    ema_rate: float = 0.05
    # optimizer (SPEC 10)
    lr: float = 5.5e-6
    warmup_steps: int = 10
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # implementation
    loss_impl: str = "fused"  # "fused" | "plain" (materialised logits, reference maths)
    fused_implementation: str = "auto"
    chunk_size: int = 1024

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"LearnerConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.loss_agg not in ("token-mean", "seq-mean-token-mean"):
            raise ValueError(f"LearnerConfig.loss_agg: unknown {self.loss_agg!r}")
        if self.loss_impl not in ("fused", "plain"):
            raise ValueError(f"LearnerConfig.loss_impl must be fused|plain, got {self.loss_impl!r}")
        if self.entropy_over not in ("vocab", "buckets"):
            raise ValueError(
                f"LearnerConfig.entropy_over must be vocab|buckets, got {self.entropy_over!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"LearnerConfig.lr must be > 0, got {self.lr}")

    @property
    def effective_tau(self) -> float:
        return math.inf if self.method == "srpo_no_dw" else self.tau

    @property
    def uses_sdpo(self) -> bool:
        return self.method in ("sdpo", "srpo", "srpo_no_dw")


@flax.struct.dataclass
class TrainState:
    params: Any  # nnx.State of the student's nnx.Param leaves, fp32
    teacher: Any  # same structure: the EMA self-teacher, fp32, never optimised
    opt_state: Any
    step: jax.Array  # int32: training steps completed
    skipped_updates: jax.Array  # int32: total updates skipped for a non-finite grad norm
    consecutive_skips: jax.Array  # int32: steps in a row whose every update was skipped


def lr_at(cfg: LearnerConfig, step: jax.Array) -> jax.Array:
    """Linear warmup over `warmup_steps` training steps, then constant (SPEC 10)."""
    if cfg.warmup_steps <= 0:
        return jnp.asarray(cfg.lr, jnp.float32)
    frac = jnp.minimum((step.astype(jnp.float32) + 1.0) / cfg.warmup_steps, 1.0)
    return cfg.lr * frac


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """AdamW whose learning rate is injected per update from the training step."""
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=cfg.lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay
    )


def init_state(params: Any, cfg: LearnerConfig, mesh: Mesh | None = None) -> TrainState:
    """TrainState from (already sharded) student params; teacher and optimizer born alike.

    The teacher is an fp32 copy of the student (phi_0 = theta_0, SPEC 9); the optimizer
    state is created by a jitted init so its moments inherit the params' shardings.
    """
    opt = make_optimizer(cfg)

    @jax.jit
    def build(p):
        teacher = jax.tree.map(lambda x: x.astype(jnp.float32), p)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(p, teacher, opt.init(p), zero, zero, zero)

    return build(params)


# ----------------------------------------------------------------------------- forward


def _forward_hidden(graphdef, params, ids_BS, mask_BS, prompt_len: int, resp_len: int):
    """Final hidden states at the positions that predict response tokens: [B, R, D]."""
    model = nnx.merge(graphdef, params)
    h_BSD = model.hidden_states(ids_BS, attention_mask_BT=mask_BS)
    return h_BSD[:, prompt_len - 1 : prompt_len - 1 + resp_len], model.unembedding()


def _dims(mb):
    s = mb["input_ids"].shape[-1]
    r = mb["response_ids"].shape[-1]
    ts = mb["teacher_input_ids"].shape[-1]
    return s - r, r, ts - r, mb["teacher_input_ids"].shape[-2]


def _student_logp(cfg, graphdef, params, mb):
    p_len, r_len, _, _ = _dims(mb)
    h_BRD, w_DV = _forward_hidden(
        graphdef, params, mb["input_ids"], mb["attention_mask"], p_len, r_len
    )
    b, r, d = h_BRD.shape
    logp_BR = chunked_vocab.token_logprobs(
        h_BRD.reshape(b * r, d),
        w_DV,
        mb["response_ids"].reshape(-1),
        temperature=cfg.temperature,
        chunk_size=cfg.chunk_size,
    ).reshape(b, r)
    return logp_BR, h_BRD, w_DV


def _teacher_hidden(graphdef, teacher_params, mb):
    _, r_len, tp_len, _ = _dims(mb)
    teacher_params = jax.lax.stop_gradient(teacher_params)
    return _forward_hidden(
        graphdef,
        teacher_params,
        mb["teacher_input_ids"],
        mb["teacher_attention_mask"],
        tp_len,
        r_len,
    )


def _teacher_token_mask(mb):
    """[M, R] validity of teacher tokens: the source row's response mask, padded rows off."""
    src_resp = jnp.take(mb["response_mask"], mb["teacher_src"], axis=0)
    return src_resp * mb["teacher_valid"][:, None].astype(jnp.float32)


def _token_scale(cfg, mb):
    """Per-token aggregation factor [B, R]: 1 (token-mean) or 1/|y_i| (seq-mean-token-mean)."""
    mask = mb["response_mask"]
    if cfg.loss_agg == "token-mean":
        return mask
    return mask / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)


def teacher_entropy_sum(cfg, graphdef, teacher_params, mb) -> tuple[jax.Array, jax.Array]:
    """(Z, |S|) of one micro-batch: sum of exp(-H/tau) and count over routed SDPO tokens."""
    _, _, _, m_rows = _dims(mb)
    if m_rows == 0 or not cfg.uses_sdpo:
        return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    ht_MRD, wt_DV = _teacher_hidden(graphdef, teacher_params, mb)
    m, r, d = ht_MRD.shape
    ent_MR = chunked_vocab.token_entropy(
        ht_MRD.reshape(m * r, d), wt_DV, temperature=cfg.temperature, chunk_size=cfg.chunk_size
    ).reshape(m, r)
    mask_MR = _teacher_token_mask(mb) * jnp.take(mb["sdpo_rows"], mb["teacher_src"])[:, None]
    u_MR = jnp.exp(-ent_MR / cfg.effective_tau)
    return jnp.sum(u_MR * mask_MR), jnp.sum(mask_MR)


# ----------------------------------------------------------------------------- objective


def micro_objective(cfg, graphdef, params, teacher_params, mb, old_logp_BR, sdpo_scale):
    """Numerator of SPEC 7 for one micro-batch (to be divided by the mini-batch denominator).

    sdpo_scale: |S| / Z of the whole mini-batch when known (pre-pass), or None to use this
    micro-batch's own Z (exact when the mini-batch is one micro-batch).
    Returns (numerator, aux) where aux holds Z, |S| and metric sums.
    """
    _, _, _, m_rows = _dims(mb)
    logp_BR, h_BRD, w_DV = _student_logp(cfg, graphdef, params, mb)
    old_BR = jax.lax.stop_gradient(logp_BR) if old_logp_BR is None else old_logp_BR
    resp_BR = mb["response_mask"]
    scale_BR = _token_scale(cfg, mb)
    valid_B = mb["row_valid"].astype(jnp.float32)
    adv_BR = jnp.broadcast_to(mb["advantages"][:, None], logp_BR.shape)
    aux = {}

    teacher_needed = m_rows > 0 and cfg.method != "grpo"
    if teacher_needed:
        ht_MRD, wt_DV = _teacher_hidden(graphdef, teacher_params, mb)
        src_M = mb["teacher_src"]
        tmask_MR = _teacher_token_mask(mb)
        m, r, d = ht_MRD.shape

    if cfg.method == "advantage_mix" and teacher_needed:
        # A^SDPO_t = sg(log pi_phi(y_t) - log pi_theta(y_t)) on rows with a teacher (SPEC 8).
        t_logp_MR = chunked_vocab.token_logprobs(
            ht_MRD.reshape(m * r, d),
            wt_DV,
            jnp.take(mb["response_ids"], src_M, axis=0).reshape(-1),
            temperature=cfg.temperature,
            chunk_size=cfg.chunk_size,
        ).reshape(m, r)
        s_logp_MR = jnp.take(jax.lax.stop_gradient(logp_BR), src_M, axis=0)
        bonus_MR = jax.lax.stop_gradient(t_logp_MR - s_logp_MR) * tmask_MR
        bonus_BR = jnp.zeros_like(logp_BR).at[src_M].add(bonus_MR)
        adv_BR = adv_BR + cfg.adv_mix_lambda * bonus_BR

    grpo_rows_B = mb["grpo_rows"].astype(jnp.float32) * valid_B
    grpo_tok_BR = losses.grpo_token_loss(
        logp_BR,
        old_BR,
        mb["rollout_logprobs"],
        adv_BR,
        resp_BR,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        dual_clip=cfg.dual_clip,
        tis_cap=cfg.tis_cap,
    )
    numerator = jnp.sum(grpo_tok_BR * scale_BR * grpo_rows_B[:, None])

    z = jnp.zeros((), jnp.float32)
    s_count = jnp.zeros((), jnp.float32)
    ent_sum = jnp.zeros((), jnp.float32)
    if cfg.uses_sdpo and teacher_needed:
        sdpo_M = jnp.take(mb["sdpo_rows"].astype(jnp.float32) * valid_B, src_M)
        mask_MR = tmask_MR * sdpo_M[:, None]
        # Per-token multiplier, stop-gradient: min(ratio, is_clip) * w_IS * aggregation factor.
        log_ratio_BR = jnp.clip(logp_BR - old_BR, -20.0, 20.0)
        w_is_BR = jnp.minimum(
            jnp.exp(jnp.clip(old_BR - mb["rollout_logprobs"], -20.0, 20.0)), cfg.tis_cap
        )
        c_BR = jnp.minimum(jnp.exp(log_ratio_BR), cfg.is_clip) * w_is_BR * scale_BR
        c_MR = jax.lax.stop_gradient(jnp.take(c_BR, src_M, axis=0))
        hs_MRD = jnp.take(h_BRD, src_M, axis=0)
        out = fused_api.fused_distill(
            hs_MRD.reshape(m * r, d),
            ht_MRD.reshape(m * r, d),
            w_DV,
            wt_DV,
            mask_MR.reshape(-1),
            c_MR.reshape(-1),
            topk=cfg.topk,
            alpha=cfg.alpha,
            tau=cfg.effective_tau,
            add_tail=cfg.add_tail,
            entropy_over=cfg.entropy_over,
            temperature=cfg.temperature,
            chunk_size=cfg.chunk_size,
            implementation="reference" if cfg.loss_impl == "plain" else cfg.fused_implementation,
        )
        z = out.z
        s_count = jnp.sum(mask_MR)
        scale = (s_count / jnp.maximum(z, 1e-30)) if sdpo_scale is None else sdpo_scale
        numerator = numerator + jax.lax.stop_gradient(scale) * out.numerator
        ent_sum = jnp.sum(out.entropy_N * mask_MR.reshape(-1))
        u_N = jnp.exp(-out.entropy_N / cfg.effective_tau)
        w_N = jnp.where(mask_MR.reshape(-1) > 0, u_N * scale, jnp.nan)
        aux["weight_max"] = jnp.nanmax(jnp.where(s_count > 0, w_N, 0.0))
        aux["weight_min"] = jnp.nanmin(jnp.where(s_count > 0, w_N, 0.0))
        aux["divergence_sum"] = jnp.sum(out.divergence_N * mask_MR.reshape(-1))

    # metric sums (divided by counts in the step)
    ratio_BR = jnp.exp(jnp.clip(logp_BR - old_BR, -20.0, 20.0))
    g_mask = resp_BR * grpo_rows_B[:, None]
    aux.update(
        z=z,
        sdpo_tokens=s_count,
        entropy_sum=ent_sum,
        grpo_tokens=jnp.sum(g_mask),
        clip_high_tokens=jnp.sum(g_mask * (adv_BR > 0) * (ratio_BR > 1 + cfg.clip_high)),
        clip_low_tokens=jnp.sum(g_mask * (adv_BR < 0) * (ratio_BR < 1 - cfg.clip_low)),
        logp_gap_sum=jnp.sum(jnp.abs(old_BR - mb["rollout_logprobs"]) * resp_BR),
        logp_gap_max=jnp.max(jnp.abs(old_BR - mb["rollout_logprobs"]) * resp_BR),
    )
    return numerator, aux


def _denominator(cfg, mini):
    """One denominator per optimisation batch (SPEC 7)."""
    if cfg.loss_agg == "token-mean":
        return jnp.sum(mini["response_mask"] * mini["row_valid"][..., None])
    return jnp.sum(mini["row_valid"].astype(jnp.float32))


# ----------------------------------------------------------------------------- the step


def _select(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def train_step_fn(cfg: LearnerConfig, graphdef, state: TrainState, batch: dict):
    """Pure training step. batch arrays are [n_mini, n_micro, b, ...] (batching.py)."""
    n_mini, n_micro = batch["input_ids"].shape[:2]
    opt = make_optimizer(cfg)
    lr = lr_at(cfg, state.step)

    if n_mini > 1:
        # pi_old for every row before any update (forward only).
        def old_micro(mb):
            return _student_logp(cfg, graphdef, state.params, mb)[0]

        old_logp = jax.lax.map(
            lambda mini: jax.lax.map(old_micro, mini), batch
        )  # [n_mini, n_micro, b, R]
        old_logp = jax.lax.stop_gradient(old_logp)
    else:
        old_logp = None

    def one_update(carry, xs):
        params, opt_state, applied, skipped = carry
        mini, old_mini = xs
        denom = jnp.maximum(_denominator(cfg, mini), 1.0)
        sdpo_scale = None
        if n_micro > 1 and cfg.uses_sdpo:
            zs, ss = jax.lax.map(
                lambda mb: teacher_entropy_sum(cfg, graphdef, state.teacher, mb), mini
            )
            sdpo_scale = jnp.sum(ss) / jnp.maximum(jnp.sum(zs), 1e-30)

        def micro(acc, xs_micro):
            g_acc, aux_acc = acc
            mb, old_mb = xs_micro

            def loss_fn(p):
                num, aux = micro_objective(cfg, graphdef, p, state.teacher, mb, old_mb, sdpo_scale)
                return num / denom, aux

            (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            aux = dict(aux, loss=loss)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            aux_acc = aux if aux_acc is None else _merge_aux(aux_acc, aux)
            return (g_acc, aux_acc), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        first = jax.tree.map(lambda x: x[0], (mini, old_mini))
        # Trace one micro-batch to obtain the aux structure, then scan the rest.
        (g_acc, aux_acc), _ = micro((zeros, None), first)
        if n_micro > 1:
            rest = jax.tree.map(lambda x: x[1:], (mini, old_mini))
            (g_acc, aux_acc), _ = jax.lax.scan(micro, (g_acc, aux_acc), rest)

        gnorm = optax.global_norm(g_acc)
        finite = jnp.isfinite(gnorm)
        # Clip to the global norm (SPEC 10); a non-finite norm skips the update entirely.
        factor = jnp.where(finite, jnp.minimum(1.0, cfg.grad_clip / (gnorm + 1e-6)), 0.0)
        g_clipped = jax.tree.map(lambda g: jnp.where(finite, g * factor, 0.0), g_acc)
        opt_state.hyperparams["learning_rate"] = lr
        updates, new_opt = opt.update(g_clipped, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        params = _select(finite, new_params, params)
        opt_state = _select(finite, new_opt, opt_state)
        aux_acc = dict(aux_acc, grad_norm=gnorm, denominator=denom)
        return (params, opt_state, applied | finite, skipped + (~finite).astype(jnp.int32)), aux_acc

    if old_logp is None:
        old_logp = jnp.zeros(batch["response_ids"].shape, jnp.float32)
        use_old = False
    else:
        use_old = True

    def scan_body(carry, xs):
        mini, old_mini = xs
        return one_update(carry, (mini, old_mini if use_old else None))

    init = (state.params, state.opt_state, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
    if use_old:
        (params, opt_state, applied, skipped), aux = jax.lax.scan(
            scan_body, init, (batch, old_logp)
        )
    else:
        mini0 = jax.tree.map(lambda x: x[0], batch)
        carry, aux = one_update(init, (mini0, None))
        params, opt_state, applied, skipped = carry
        aux = jax.tree.map(lambda x: x[None], aux)

    rate = cfg.ema_rate
    new_teacher = jax.tree.map(
        lambda t, s: (1.0 - rate) * t + rate * s.astype(jnp.float32), state.teacher, params
    )
    teacher = _select(applied, new_teacher, state.teacher)
    new_state = TrainState(
        params=params,
        teacher=teacher,
        opt_state=opt_state,
        step=state.step + 1,
        skipped_updates=state.skipped_updates + skipped,
        consecutive_skips=jnp.where(applied, 0, state.consecutive_skips + 1),
    )
    return new_state, _step_metrics(aux, lr, skipped, n_mini)


def _merge_aux(a, b):
    out = {}
    for k in a:
        if k.endswith("_max"):
            out[k] = jnp.maximum(a[k], b[k])
        elif k.endswith("_min"):
            out[k] = jnp.minimum(a[k], b[k])
        else:
            out[k] = a[k] + b[k]
    return out


def _step_metrics(aux, lr, skipped, n_mini):
    """Per-step metrics from per-update sums ([n_mini] leading axis)."""
    s = {k: jnp.sum(v) for k, v in aux.items()}
    sdpo_tok = jnp.maximum(s["sdpo_tokens"], 1.0)
    grpo_tok = jnp.maximum(s["grpo_tokens"], 1.0)
    metrics = {
        "loss": s["loss"] / n_mini,
        "grad_norm": jnp.max(aux["grad_norm"]),
        "lr": lr,
        "skipped_updates": skipped.astype(jnp.float32),
        "sdpo/tokens": s["sdpo_tokens"],
        "grpo/tokens": s["grpo_tokens"],
        "teacher/entropy_mean": s["entropy_sum"] / sdpo_tok,
        "grpo/clip_high_frac": s["clip_high_tokens"] / grpo_tok,
        "grpo/clip_low_frac": s["clip_low_tokens"] / grpo_tok,
        "logp_gap/mean": s["logp_gap_sum"] / jnp.maximum(jnp.sum(aux["denominator"]), 1.0),
        "logp_gap/max": jnp.max(aux["logp_gap_max"]),
    }
    if "weight_max" in aux:
        metrics["sdpo/weight_max"] = jnp.max(aux["weight_max"])
        metrics["sdpo/weight_min"] = jnp.min(aux["weight_min"])
        metrics["sdpo/divergence_mean"] = s["divergence_sum"] / sdpo_tok
    return metrics


# ----------------------------------------------------------------------------- jit wrapper


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
    """Rows split over the batch axes where they divide evenly; everything else replicated."""
    spec = named_sharding(mesh, ("batch",)).spec
    axes = spec[0] if len(spec) else None
    n_shards = 1
    if axes:
        for a in (axes,) if isinstance(axes, str) else axes:
            n_shards *= mesh.shape[a]
    out = {}
    for k, v in batch.items():
        rows = v.shape[2] if v.ndim > 2 else 0
        if rows and rows % n_shards == 0:
            out[k] = NamedSharding(mesh, PartitionSpec(None, None, axes))
        else:
            out[k] = NamedSharding(mesh, PartitionSpec())
    return out


class Learner:
    """Holds the graphdef and compiles `train_step` once per batch shape signature."""

    def __init__(self, cfg: LearnerConfig, graphdef, mesh: Mesh | None = None):
        self.cfg = cfg
        self.graphdef = graphdef
        self.mesh = mesh
        self._compiled: dict[tuple, Any] = {}

    def state_shardings(self, state: TrainState):
        return jax.tree.map(lambda x: x.sharding, state)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))
        fn = self._compiled.get(key)
        if fn is None:
            step = functools.partial(train_step_fn, self.cfg, self.graphdef)
            if self.mesh is not None:
                fn = jax.jit(
                    step,
                    in_shardings=(self.state_shardings(state), batch_shardings(self.mesh, batch)),
                    out_shardings=(self.state_shardings(state), None),
                    donate_argnums=0,
                )
            else:
                fn = jax.jit(step, donate_argnums=0)
            self._compiled[key] = fn
        return fn(state, batch)

    @property
    def num_compiled(self) -> int:
        return len(self._compiled)
