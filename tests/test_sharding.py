"""Mesh, rules table and born-sharded models on 8 forced CPU devices: parameters carry the
shardings the table says, and sharded forwards equal the single-device forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from srpo_jax.model import Qwen3, tiny
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import (
    LOGICAL_AXIS_RULES,
    MeshConfig,
    fit_spec,
    logical_to_spec,
    make_mesh,
)

# 4 q heads, 2 kv heads, mlp 128, vocab 256: every sharded dim divides tensor=2 and fsdp=4.
CFG = tiny(num_layers=2)


@nnx.jit
def fwd(model, ids, mask):
    return model(ids, mask)


@functools.cache
def _model(mesh_cfg: MeshConfig, n_devices: int = 8):
    """Born-sharded tiny model per mesh, built once per test session (init compiles)."""
    return create_sharded_model(CFG, make_mesh(mesh_cfg, jax.devices()[:n_devices]), seed=3)


def test_rules_table_and_specs():
    assert LOGICAL_AXIS_RULES["batch"] == ("data", "fsdp")
    assert LOGICAL_AXIS_RULES["embed"] == "fsdp"
    for name in ("mlp", "heads", "kv_heads", "vocab"):
        assert LOGICAL_AXIS_RULES[name] == "tensor"
    assert logical_to_spec(("layers", "embed", "heads", "head_dim")) == P(
        None, "fsdp", "tensor", None
    )
    assert logical_to_spec(("batch", "seq")) == P(("data", "fsdp"), "tensor")
    assert logical_to_spec(("embed", "embed")) == P("fsdp", None)  # a mesh axis is used once
    with pytest.raises(ValueError, match="'nonsense'"):
        logical_to_spec(("nonsense",))
    assert fit_spec(
        P(("data", "fsdp"), "tensor"), (1, 6), {"data": 2, "fsdp": 4, "tensor": 2}
    ) == P(None, "tensor")


def test_make_mesh_checks_device_count():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="8 devices"):
        make_mesh(MeshConfig(fsdp=3))
    with pytest.raises(ValueError, match="MeshConfig.tensor"):
        MeshConfig(tensor=0)


EXPECTED_SPECS = {
    "embed": P("tensor", "fsdp"),
    "lm_head": P("fsdp", "tensor"),
    "final_norm": P(None),
    "layers.q_proj": P(None, "fsdp", "tensor", None),
    "layers.k_proj": P(None, "fsdp", "tensor", None),
    "layers.o_proj": P(None, "tensor", None, "fsdp"),
    "layers.gate_proj": P(None, "fsdp", "tensor"),
    "layers.down_proj": P(None, "tensor", "fsdp"),
    "layers.q_norm": P(None, None),
}


@pytest.mark.parametrize(
    "mesh_cfg",
    [MeshConfig(fsdp=4, tensor=2), MeshConfig(data=2, fsdp=4)],
    ids=["fsdp4xtp2", "dp2xfsdp4"],
)
def test_born_sharded_model_matches_single_device(mesh_cfg):
    mesh = make_mesh(mesh_cfg)
    model = _model(mesh_cfg)
    single = _model(MeshConfig(), 1)
    for dotted, spec in EXPECTED_SPECS.items():
        obj = model
        for part in dotted.split("."):
            obj = getattr(obj, part)
        sharding = obj[...].sharding
        assert sharding.mesh.shape == mesh.shape
        if mesh_cfg.tensor == 1:  # a mesh axis of size 1 shards nothing; compare modulo it
            spec = P(*(None if s == "tensor" else s for s in spec))
        assert sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, spec), len(spec)), dotted
    assert model.layers.gate_proj[...].addressable_shards[0].data.shape == (
        2,
        16,
        128 // mesh_cfg.tensor,
    )
    # Same seed, same values, whatever the sharding.
    np.testing.assert_array_equal(np.asarray(model.embed[...]), np.asarray(single.embed[...]))

    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(0, 256, (8, 6)))
    mask = jnp.asarray(np.concatenate([np.zeros((8, 2), np.int32), np.ones((8, 4), np.int32)], 1))
    ref = np.asarray(fwd(single, ids, mask))
    batch_sharding = jax.sharding.NamedSharding(mesh, P(("data", "fsdp")))
    out = fwd(model, jax.device_put(ids, batch_sharding), jax.device_put(mask, batch_sharding))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    # With the mesh set, the model adds activation sharding constraints; same values.
    with jax.set_mesh(mesh):
        out_constrained = fwd(model, ids, mask)
    np.testing.assert_allclose(np.asarray(out_constrained), ref, rtol=1e-5, atol=1e-5)


def test_split_merge_keeps_shardings():
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    model = _model(MeshConfig(fsdp=4, tensor=2))
    graphdef, params = nnx.split(model, nnx.Param)
    assert isinstance(nnx.merge(graphdef, params), Qwen3)
    leaves = jax.tree.leaves(params)
    assert all(x.sharding.mesh.shape == mesh.shape for x in leaves)
