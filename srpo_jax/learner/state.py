"""The train state: TrainState, its optimizer, and where every leaf lives on the mesh.

Every consumer of the state's layout goes through this module:

    state_shardings(settings, state, mesh)  a NamedSharding per leaf, from the parameters'
                                            logical axes and the one rules table
                                            (srpo_jax/sharding/mesh.py); Adam's moments take
                                            their parameter's sharding, scalars replicated
    abstract_state(model_cfg, settings, mesh)
                                            (graphdef, TrainState of ShapeDtypeStructs
                                            carrying those shardings): nothing is allocated.
                                            The memory plan compiles against it and a resume
                                            restores straight into it
    init_state(params, settings, mesh)      the fresh state from (born sharded) student
                                            params, laid out exactly as abstract_state says
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srpo_jax.learner.config import StepSettings
from srpo_jax.sharding import param_shardings


@flax.struct.dataclass
class TrainState:
    params: Any  # nnx.State of the student's nnx.Param leaves, fp32
    teacher: Any  # same structure: the EMA self-teacher, fp32, never optimised
    opt_state: Any
    step: jax.Array  # int32: training steps completed
    skipped_updates: jax.Array  # int32: total updates skipped for a non-finite grad norm
    consecutive_skips: jax.Array  # int32: steps in a row whose every update was skipped


def make_optimizer(cfg: StepSettings) -> optax.GradientTransformation:
    """AdamW whose learning rate is injected per update from the training step."""
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=cfg.optim.lr,
        b1=cfg.optim.b1,
        b2=cfg.optim.b2,
        weight_decay=cfg.optim.weight_decay,
    )


def _fresh(cfg: StepSettings, params: Any) -> TrainState:
    """The state at step 0: the teacher is an fp32 copy of the student (phi_0 = theta_0,
    SPEC 9), Adam's moments are zero, every counter is 0."""
    teacher = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, teacher, make_optimizer(cfg).init(params), zero, zero, zero)


def state_shardings(cfg: StepSettings, state: TrainState, mesh: Mesh) -> TrainState:
    """A NamedSharding for every leaf of `state` (arrays or ShapeDtypeStructs): params and
    teacher from the parameters' `logical_axes`, Adam's param-shaped moments alike, the
    optimizer's scalars and the counters replicated."""
    # param_shardings gives one NamedSharding per Variable; spread it to the Variable's leaf
    # so the sharding tree has exactly the params' structure.
    p_shard = jax.tree.map(
        lambda sh, var: jax.tree.map(lambda _: sh, var),
        param_shardings(mesh, state.params),
        state.params,
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shard = optax.tree_map_params(
        make_optimizer(cfg),
        lambda _leaf, sh: sh,
        state.opt_state,
        p_shard,
        transform_non_params=lambda _leaf: replicated,
    )
    return TrainState(
        params=p_shard,
        teacher=p_shard,
        opt_state=opt_shard,
        step=replicated,
        skipped_updates=replicated,
        consecutive_skips=replicated,
    )


def abstract_state(model_cfg, cfg: StepSettings, mesh: Mesh) -> tuple[Any, TrainState]:
    """(graphdef, TrainState of ShapeDtypeStructs with their shardings) for a Qwen3 of
    `model_cfg`: shapes from nnx.eval_shape of the model class, so no weight is read or
    allocated."""
    from srpo_jax.model.qwen3 import Qwen3  # the model only where its shapes are needed

    model = nnx.eval_shape(lambda: Qwen3(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    state = jax.eval_shape(lambda p: _fresh(cfg, p), params)
    shardings = state_shardings(cfg, state, mesh)
    state = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, shardings
    )
    return graphdef, state


def init_state(params: Any, cfg: StepSettings, mesh: Mesh | None = None) -> TrainState:
    """TrainState from (already sharded) student params; teacher and optimizer born alike.

    With `mesh`, one jitted init places every leaf where `state_shardings` (and so
    `abstract_state`) says; without, the jit's own placement (one device).
    """
    build = lambda p: _fresh(cfg, p)  # noqa: E731
    if mesh is None:
        return jax.jit(build)(params)
    shardings = state_shardings(cfg, jax.eval_shape(build, params), mesh)
    return jax.jit(build, out_shardings=shardings)(params)
