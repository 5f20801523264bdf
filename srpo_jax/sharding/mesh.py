"""Device mesh and the one logical-axis -> mesh-axis rules table.

Every array that is sharded names its dimensions with logical axis names (parameters carry
them as nnx metadata `logical_axes`); this module alone decides which mesh axes those names
map to. Mesh axes: "data" (pure data parallel), "fsdp" (data parallel whose parameters and
optimizer state are sharded over it), "tensor" (megatron-style heads / mlp / vocab split).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srpo_jax.sharding.config import MESH_AXES, MeshConfig

# logical name -> mesh axis / tuple of mesh axes / None (replicated).
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    # Sequence parallelism of the residual stream between layers: the per-layer inputs that
    # remat keeps for the backward are 1/tensor per device. XLA all-gathers the sequence
    # before attention and the MLP and reduce-scatters after their output projections
    # (instead of an all-reduce): the same bytes moved, a tensor-th of the memory held.
    "seq": "tensor",
    "act_embed": None,  # the model dim of activations: batch is already split over fsdp
    # parameters
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
    # kv cache length axis
    "cache_seq": None,
}


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != cfg.size:
        raise ValueError(
            f"MeshConfig data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} = {cfg.size} "
            f"devices, but {len(devices)} devices were given"
        )
    shape = (cfg.data, cfg.fsdp, cfg.tensor)
    try:
        # Lays tensor (fastest-communicating) axis on the most tightly linked devices.
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):  # unknown topology: row-major
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(names: Sequence[str | None]) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry these logical names (None: replicated).

    A mesh axis is used at most once per array: if two dimensions map to the same mesh axis,
    the later one is replicated (e.g. a square matrix named (embed, embed))."""
    used: set[str] = set()
    spec = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_AXIS_RULES:
            raise ValueError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES")
        axes = LOGICAL_AXIS_RULES[name]
        axes_t = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes_t = tuple(a for a in axes_t if a not in used)
        used.update(axes_t)
        spec.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names))


def fit_spec(
    spec: PartitionSpec, shape: Sequence[int], mesh_shape: dict[str, int]
) -> PartitionSpec:
    """Drops the mesh axes of any dimension they do not divide evenly (replicating it), so
    odd sizes such as batch 1 in decoding or a vocab not divisible by `tensor` still work."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes_t = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        size = int(np.prod([mesh_shape[a] for a in axes_t])) if axes_t else 1
        out.append(axes if size > 0 and dim % size == 0 else None)
    return PartitionSpec(*out)


def param_shardings(mesh: Mesh, abstract_state):
    """NamedSharding for every Variable of an (abstract) nnx state, from its `logical_axes`
    metadata; variables without it are replicated."""
    from flax import nnx

    def one(var):
        names = var.get_metadata().get("logical_axes") if isinstance(var, nnx.Variable) else None
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        spec = fit_spec(logical_to_spec(names), var.get_value().shape, dict(mesh.shape))
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
