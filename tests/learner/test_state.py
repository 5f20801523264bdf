"""The train state's layout: abstract_state is exact and sharded per the rules table, and a
fresh init_state is laid out leaf for leaf as abstract_state says (the resume target).

References are independent of the code under test: parameter counts from the SPEC 12
architecture table, per-device bytes from each sharding's own shard shape, and the
fresh state from the model born sharded by srpo_jax.model.qwen3.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from srpo_jax.learner import train_step as learner
from srpo_jax.learner.config import StepSettings
from srpo_jax.model.config import qwen3_4b, qwen3_8b, tiny
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import MeshConfig, make_mesh


def spec_param_count(layers, d, f, n, k, v, tied, h=128):
    """Qwen3 parameter count from SPEC 12: embeddings, per-layer q/k/v/o, SwiGLU, norms."""
    per_layer = d * n * h * 2 + d * k * h * 2 + 3 * d * f + 2 * d + 2 * h
    return v * d * (1 if tied else 2) + layers * per_layer + d


def per_device_bytes(tree) -> int:
    """Bytes of the largest shard of every leaf, summed (what one device holds)."""
    total = 0
    for x in jax.tree.leaves(tree):
        total += int(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64)) * x.dtype.itemsize
    return total


@pytest.mark.parametrize(
    "preset, arch",
    [
        (qwen3_8b, (36, 4096, 12288, 32, 8, 151936, False)),
        (qwen3_4b, (36, 2560, 9728, 32, 8, 151936, True)),
    ],
)
def test_abstract_state_is_exact_and_sharded_over_fsdp(preset, arch):
    layers, d, f, n, k, v, tied = arch
    count = spec_param_count(layers, d, f, n, k, v, tied)
    mesh = make_mesh(MeshConfig(fsdp=8))
    _, state = learner.abstract_state(preset(), StepSettings(), mesh)
    leaves = jax.tree.leaves(state.params)
    assert sum(x.size for x in leaves) == count
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))
    # Everything but the RMSNorm scales (replicated: 2 per layer of d, 2 of h, final d) is
    # split 8 ways; fp32 params and teacher, two fp32 Adam moments.
    norms = layers * (2 * d + 2 * 128) + d
    per_device = 4 * ((count - norms) // 8 + norms)
    assert per_device_bytes(state.params) == per_device
    assert per_device_bytes(state.teacher) == per_device
    opt = per_device_bytes(state.opt_state)
    assert 2 * per_device <= opt < 2 * per_device + 64  # + count and learning-rate scalars


def test_fresh_state_is_laid_out_as_the_abstract_state():
    # A resume restores into abstract_state and the step is compiled for the state it gets:
    # a fresh state laid out otherwise would compile a second program (or fail to restore).
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    model_cfg, cfg = tiny(vocab_size=512), StepSettings()
    graphdef, abstract = learner.abstract_state(model_cfg, cfg, mesh)
    born_graphdef, params = nnx.split(create_sharded_model(model_cfg, mesh, seed=3), nnx.Param)
    fresh = learner.init_state(params, cfg, mesh)
    assert graphdef == born_graphdef
    assert jax.tree.structure(fresh) == jax.tree.structure(abstract)
    sharded = 0
    for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(fresh), strict=True):
        assert (a.shape, a.dtype) == (x.shape, x.dtype)
        assert a.sharding.is_equivalent_to(x.sharding, x.ndim), (a.sharding, x.sharding)
        sharded += a.sharding.shard_shape(a.shape) != a.shape
    assert sharded > 0  # the layout is not trivially replicated
    # The teacher starts as the student (phi_0 = theta_0), the moments at zero.
    for p, t in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(fresh.teacher), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(t))
    assert int(fresh.step) == 0
