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

Deviations from SPEC, deliberate: none in the maths. Methods without entropy weights
(`srpo_no_dw`, `sdpo`) call the kernel with tau = inf, which makes u_t = exp(-0) = 1
exactly, i.e. w_t = 1 and Z = |S|. Step metrics that are means within a micro-batch are
averaged over micro-batches (exact with one micro-batch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srpo_jax.forward import denominator, micro_objective, student_logp, teacher_entropy_sum
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
    fused_grad_mode: str = "auto"  # "auto" | "forward" | "recompute" (fused_distill's grad_mode)
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
        if self.fused_grad_mode not in fused_api.GRAD_MODES:
            raise ValueError(
                f"LearnerConfig.fused_grad_mode must be one of {fused_api.GRAD_MODES}, "
                f"got {self.fused_grad_mode!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"LearnerConfig.lr must be > 0, got {self.lr}")

    @property
    def effective_tau(self) -> float:
        """The fused kernel's tau: inf (u = 1, Z = |S|) for methods without entropy weights."""
        return self.tau if self.method == "srpo" else math.inf

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
            return student_logp(cfg, graphdef, state.params, mb)[0]

        old_logp = jax.lax.map(
            lambda mini: jax.lax.map(old_micro, mini), batch
        )  # [n_mini, n_micro, b, R]
        old_logp = jax.lax.stop_gradient(old_logp)
    else:
        old_logp = None

    def one_update(carry, xs):
        params, opt_state, applied, skipped = carry
        mini, old_mini = xs
        denom = jnp.maximum(denominator(cfg, mini), 1.0)
        sdpo_scale = None
        if n_micro > 1 and cfg.method == "srpo":
            if cfg.entropy_over != "vocab":
                raise ValueError(
                    "entropy_over='buckets' with several micro-batches is not supported: the "
                    "teacher-entropy pre-pass computes full-vocabulary entropies; set "
                    "train.micro_batch_rows to the mini-batch rows or entropy_over='vocab'"
                )
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

        gnorm = optax.tree.norm(g_acc)
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
    return new_state, _step_metrics(aux, lr, skipped, n_mini, n_micro)


def _merge_aux(a, b):
    out = {}
    for k in a:
        if k.endswith("_max") or k.endswith("/max") or k.endswith("/p99"):
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
        elif k.endswith("_max") or k.endswith("/max") or k.endswith("/p99") or k == "grad_norm":
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
        if self.mesh is None:
            return fn(state, batch)
        if jax.process_count() > 1:
            batch = self.place_batch(batch)
        # Traced under the mesh so the model's activation constraints (the rules table's
        # "batch" and "seq" axes) apply; without it they are no-ops.
        with jax.set_mesh(self.mesh):
            return fn(state, batch)

    def place_batch(self, batch: dict) -> dict:
        """Global device arrays from a host batch that every process holds in full.

        jit refuses numpy inputs with non-trivial shardings across processes; each process
        supplies the slices its own devices hold.
        """
        shardings = batch_shardings(self.mesh, batch)
        return {
            k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx])
            if isinstance(v, np.ndarray)
            else v  # already a global jax.Array
            for k, v in batch.items()
        }

    @property
    def num_compiled(self) -> int:
        return len(self._compiled)
