"""The SRPO learner: one pure training step, `jit_train_step` (its one jitted, sharded form)
and the Learner that compiles it per batch shape. The state it updates: state.py.

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
   applied (SPEC 9; algo/ema.py, optax.incremental_update).

Deviations from SPEC, deliberate: none in the maths. Methods without entropy weights
(`srpo_no_dw`, `sdpo`) call the kernel with tau = inf, which makes u_t = exp(-0) = 1
exactly, i.e. w_t = 1 and Z = |S|. Step metrics that are means within a micro-batch are
averaged over micro-batches (exact with one micro-batch).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srpo_jax.algo.ema import ema_update
from srpo_jax.learner.batch import TrainBatch
from srpo_jax.learner.config import OptimConfig, StepSettings, TrainConfig  # noqa: F401
from srpo_jax.learner.loss import denominator, micro_objective, student_logp, teacher_entropy_sum
from srpo_jax.learner.state import (  # noqa: F401 - the learner's names, in one place
    TrainState,
    abstract_state,
    init_state,
    make_optimizer,
    state_shardings,
)
from srpo_jax.sharding import named_sharding


def lr_at(cfg: StepSettings, step: jax.Array) -> jax.Array:
    """Linear warmup over `warmup_steps` training steps, then constant (SPEC 10)."""
    o = cfg.optim
    if o.warmup_steps <= 0:
        return jnp.asarray(o.lr, jnp.float32)
    frac = jnp.minimum((step.astype(jnp.float32) + 1.0) / o.warmup_steps, 1.0)
    return o.lr * frac


# ----------------------------------------------------------------------------- the step


def _select(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _num_micro(mini: TrainBatch) -> int:
    """Micro-batches in one mini-batch (its fields are [n_micro, ...])."""
    return mini.advantages_B.shape[0]


def _old_logprobs(cfg: StepSettings, graphdef, params, batch: TrainBatch):
    """pi_old of every row before any update (forward only), [n_mini, n_micro, b, R]."""

    def old_micro(mb):
        return student_logp(cfg, graphdef, params, mb)[0]

    old = jax.lax.map(lambda mini: jax.lax.map(old_micro, mini), batch)
    return jax.lax.stop_gradient(old)


def _sdpo_scale(cfg: StepSettings, graphdef, teacher, mini: TrainBatch):
    """|S| / Z of the whole mini-batch from a teacher-entropy pre-pass (several micro-batches
    with entropy weights), else None: the micro-batch forms its own scale in one pass."""
    if _num_micro(mini) == 1 or not cfg.method.entropy_weights:
        return None
    if cfg.algo.entropy_over != "vocab":
        raise ValueError(
            "entropy_over='buckets' with several micro-batches is not supported: the "
            "teacher-entropy pre-pass computes full-vocabulary entropies; set "
            "train.micro_batch_rows to the mini-batch rows or entropy_over='vocab'"
        )
    zs, ss = jax.lax.map(lambda mb: teacher_entropy_sum(cfg, graphdef, teacher, mb), mini)
    return jnp.sum(ss) / jnp.maximum(jnp.sum(zs), 1e-30)


def _mini_batch_grads(cfg: StepSettings, graphdef, params, teacher, mini, old_mini):
    """Gradient of the mini-batch objective, summed over its micro-batches, and the aux."""
    denom = jnp.maximum(denominator(cfg, mini), 1.0)
    sdpo_scale = _sdpo_scale(cfg, graphdef, teacher, mini)

    def micro(acc, xs_micro):
        g_acc, aux_acc = acc
        mb, old_mb = xs_micro

        def loss_fn(p):
            num, aux = micro_objective(cfg, graphdef, p, teacher, mb, old_mb, sdpo_scale)
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
    if _num_micro(mini) > 1:
        rest = jax.tree.map(lambda x: x[1:], (mini, old_mini))
        (g_acc, aux_acc), _ = jax.lax.scan(micro, (g_acc, aux_acc), rest)
    return g_acc, aux_acc, denom


def _apply_if_finite(cfg: StepSettings, opt, lr, grads, params, opt_state):
    """Clip to the global norm (SPEC 10) and take the AdamW update, or skip it entirely
    (params and optimizer state untouched) when the norm is not finite.

    Hand-written rather than optax.clip_by_global_norm + optax.apply_if_finite: the clip
    factor min(1, c / (|g| + 1e-6)) is the one the published runs (docs/performance.md) used,
    and apply_if_finite counts non-finite updates and, past its limit, applies them anyway,
    while SPEC 10 wants every non-finite update skipped and the run aborted after
    optim.max_consecutive_skips whole steps in a row (TrainState.consecutive_skips).
    """
    gnorm = optax.tree.norm(grads)
    finite = jnp.isfinite(gnorm)
    factor = jnp.where(finite, jnp.minimum(1.0, cfg.optim.grad_clip / (gnorm + 1e-6)), 0.0)
    g_clipped = jax.tree.map(lambda g: jnp.where(finite, g * factor, 0.0), grads)
    opt_state.hyperparams["learning_rate"] = lr
    updates, new_opt = opt.update(g_clipped, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    return _select(finite, new_params, params), _select(finite, new_opt, opt_state), gnorm, finite


def train_step_fn(cfg: StepSettings, graphdef, state: TrainState, batch: TrainBatch):
    """Pure training step. batch fields are [n_mini, n_micro, ...] (batching.TrainBatch)."""
    n_mini, n_micro = batch.num_minibatches, batch.num_microbatches
    opt = make_optimizer(cfg)
    lr = lr_at(cfg, state.step)
    # With several updates per step pi_old comes from before the first; with one it is the
    # stop-gradient of the current log-prob inside the same forward (None).
    old_logp = _old_logprobs(cfg, graphdef, state.params, batch) if n_mini > 1 else None

    def one_update(carry, xs):
        params, opt_state, applied, skipped = carry
        mini, old_mini = xs
        grads, aux, denom = _mini_batch_grads(cfg, graphdef, params, state.teacher, mini, old_mini)
        params, opt_state, gnorm, finite = _apply_if_finite(cfg, opt, lr, grads, params, opt_state)
        carry = (params, opt_state, applied | finite, skipped + (~finite).astype(jnp.int32))
        return carry, dict(aux, grad_norm=gnorm, denominator=denom)

    init = (state.params, state.opt_state, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
    if old_logp is not None:
        (params, opt_state, applied, skipped), aux = jax.lax.scan(
            one_update, init, (batch, old_logp)
        )
    else:
        mini0 = jax.tree.map(lambda x: x[0], batch)
        (params, opt_state, applied, skipped), aux = one_update(init, (mini0, None))
        aux = jax.tree.map(lambda x: x[None], aux)

    # EMA teacher (SPEC 9), only if some update of the step was applied.
    teacher = ema_update(state.teacher, params, rate=cfg.algo.ema_rate, finite=applied)
    new_state = TrainState(
        params=params,
        teacher=teacher,
        opt_state=opt_state,
        step=state.step + 1,
        skipped_updates=state.skipped_updates + skipped,
        consecutive_skips=jnp.where(applied, 0, state.consecutive_skips + 1),
    )
    return new_state, _step_metrics(aux, lr, skipped, n_mini, n_micro)


def _merge_aux(a, b):
    out = {}
    for k in a:
        if k.endswith("_max") or k.endswith("/max"):
            out[k] = jnp.maximum(a[k], b[k])
        elif k.endswith("_min"):
            out[k] = jnp.minimum(a[k], b[k])
        else:
            out[k] = a[k] + b[k]
    return out


_SUMMED = ("loss", "sdpo/tokens", "sdpo/z", "skipped")


def _step_metrics(aux, lr, skipped, n_mini, n_micro):
    """Per-step metrics: sums for counts and the loss, maxima for maxima, means otherwise
    (metrics that are means within a micro-batch are averaged over micro-batches)."""
    out = {}
    for k, v in aux.items():
        if k in _SUMMED:
            out[k] = jnp.sum(v)
        elif k.endswith("_max") or k.endswith("/max") or k == "grad_norm":
            out[k] = jnp.max(v)
        elif k.endswith("_min"):
            out[k] = jnp.min(v)
        elif k == "denominator":
            continue
        else:
            out[k] = jnp.sum(v) / (n_mini * n_micro)
    out["loss"] = out["loss"] / n_mini
    out["lr"] = lr
    out["skipped_updates"] = skipped.astype(jnp.float32)
    return out


# ----------------------------------------------------------------------------- jit wrapper


def batch_shardings(mesh: Mesh, batch: TrainBatch) -> TrainBatch:
    """Rows split over the batch axes where they divide evenly; everything else replicated."""
    spec = named_sharding(mesh, ("batch",)).spec
    axes = spec[0] if len(spec) else None
    n_shards = 1
    if axes:
        for a in (axes,) if isinstance(axes, str) else axes:
            n_shards *= mesh.shape[a]

    def sharding(v):
        rows = v.shape[2] if len(v.shape) > 2 else 0
        if rows and rows % n_shards == 0:
            return NamedSharding(mesh, PartitionSpec(None, None, axes))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding, batch)


def jit_train_step(
    cfg: StepSettings, graphdef, state: TrainState, batch: TrainBatch, mesh: Mesh | None = None
):
    """`train_step_fn` jitted with its shardings, the state donated: the one place the step
    is wrapped (the Learner, the memory plan and the device check all call it).

    `state` and `batch` may be arrays or ShapeDtypeStructs: the state's leaves carry their
    shardings (abstract_state / init_state / a restore into abstract_state), which go in and
    come out unchanged; the batch's follow `batch_shardings`. Without a mesh the step is
    jitted with the default placement. Trace (call or lower) it under `jax.set_mesh(mesh)`
    so the model's activation constraints (the rules table's "batch" and "seq") apply;
    outside a mesh they are no-ops.
    """
    step = functools.partial(train_step_fn, cfg, graphdef)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    s_shard = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        step,
        in_shardings=(s_shard, batch_shardings(mesh, batch)),
        out_shardings=(s_shard, None),
        donate_argnums=0,
    )


class Learner:
    """Holds the graphdef and compiles `train_step` once per batch shape signature."""

    def __init__(self, cfg: StepSettings, graphdef, mesh: Mesh | None = None):
        self.cfg = cfg
        self.graphdef = graphdef
        self.mesh = mesh
        self._compiled: dict[tuple, Any] = {}

    def train_step(self, state: TrainState, batch: TrainBatch) -> tuple[TrainState, dict]:
        key = (type(batch).__name__,) + tuple(
            (v.shape, str(v.dtype)) for v in jax.tree.leaves(batch)
        )
        fn = self._compiled.get(key)
        if fn is None:
            fn = jit_train_step(self.cfg, self.graphdef, state, batch, self.mesh)
            self._compiled[key] = fn
        if self.mesh is None:
            return fn(state, batch)
        if jax.process_count() > 1:
            batch = self.place_batch(batch)
        with jax.set_mesh(self.mesh):
            return fn(state, batch)

    def place_batch(self, batch: TrainBatch) -> TrainBatch:
        """Global device arrays from a host batch that every process holds in full.

        jit refuses numpy inputs with non-trivial shardings across processes; each process
        supplies the slices its own devices hold.
        """

        def place(v, sharding):
            if not isinstance(v, np.ndarray):
                return v  # already a global jax.Array
            return jax.make_array_from_callback(v.shape, sharding, lambda idx: v[idx])

        return jax.tree.map(place, batch, batch_shardings(self.mesh, batch))

    @property
    def num_compiled(self) -> int:
        return len(self._compiled)
