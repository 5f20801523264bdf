"""Per-device figures of one compiled train step (the memory plan's columns): the state's
and the batch's shard bytes, and the compiled program's arguments, outputs, temporaries,
code and FLOPs, read from the target compiler's buffer assignment (aot/targets.py)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from srpo_jax.aot import targets as aot
from srpo_jax.aot.topologies import GiB
from srpo_jax.config import Config
from srpo_jax.learner import train_step as learner


def per_device_bytes(tree) -> int:
    """Sum over leaves of the bytes one device holds (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class Figures:
    """Per-device bytes of one compiled train step."""

    params: int
    teacher: int
    opt: int
    batch: int
    arguments: int
    outputs: int
    aliased: int
    temp: int
    code: int
    compiler: str = "XLA:CPU"
    flops: float = 0.0  # per device, one step
    flops_source: str = ""  # aot.Analysis.flops_source

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temp + self.code


def compile_batch(cfg: Config, model_cfg, mesh, batch, compiler: str = "XLA:CPU") -> Figures:
    """Lowers and compiles the train step for `batch` (a TrainBatch or a PackedBatch, arrays
    or abstract) on `mesh` (forced CPU devices or aot.target_mesh's compile-only ones,
    compiled by `compiler`); returns its figures."""
    lcfg = learner.StepSettings.from_config(cfg)
    graphdef, state = learner.abstract_state(model_cfg, lcfg, mesh)
    batch = jax.tree.map(
        lambda v, sh: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh),
        batch,
        learner.batch_shardings(mesh, batch),
    )
    step = learner.jit_train_step(lcfg, graphdef, state, batch, mesh)
    with jax.set_mesh(mesh):  # as Learner.train_step: the activation constraints apply
        compiled = step.lower(state, batch).compile()
        kernel = aot.fused_attention_kernel(model_cfg)
    a = aot.analyse(compiled, compiler)
    flops, source = a.flops, a.flops_source
    if kernel:
        flops += aot.step_attention_flops(model_cfg, batch) / mesh.size
        source += f" + {kernel} attention from the model shape"
    return Figures(
        params=per_device_bytes(state.params),
        teacher=per_device_bytes(state.teacher),
        opt=per_device_bytes(state.opt_state),
        batch=per_device_bytes(batch),
        arguments=a.arguments,
        outputs=a.outputs,
        aliased=a.aliased,
        temp=a.temp,
        code=a.code,
        compiler=a.compiler,
        flops=flops,
        flops_source=source,
    )


def fmt_gib(n: int) -> str:
    return f"{n / GiB:7.2f}"


def verdict(peak: int, usable: int) -> tuple[bool, float]:
    """(fits, headroom % of the usable memory)."""
    return peak <= usable, 100.0 * (usable - peak) / usable
