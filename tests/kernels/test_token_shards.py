"""Per-token vocabulary kernels under a mesh run on each device's own tokens.

The partitioner, given a token loop over sharded tokens, runs the whole loop on every
device (measured: the tiny SRPO step on 8 data-parallel devices did 28% more matmul work
in total than on one). The references: the same call without a mesh (values and
gradients), and the matmul FLOPs of the compiled program (srpo_jax.aot.hlo_flops), which must
be the one-device program's divided by the device count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from srpo_jax.aot.hlo_flops import dot_flops
from srpo_jax.kernels import chunked_vocab
from srpo_jax.kernels.fused_distill import api
from srpo_jax.kernels.token_shards import token_shard_axes

N, D, V, CHUNK = 256, 16, 96, 16  # 32 tokens = 2 chunks per device on 8 devices


def _mesh(data, fsdp, tensor):
    devices = np.asarray(jax.devices()[: data * fsdp * tensor]).reshape(data, fsdp, tensor)
    return Mesh(devices, ("data", "fsdp", "tensor"))


@pytest.mark.parametrize(
    ("shape", "n", "axes"),
    [
        ((8, 1, 1), 256, ("data",)),
        ((2, 4, 1), 256, ("data", "fsdp")),
        ((1, 1, 1), 256, ()),  # nothing to split over
        ((2, 1, 4), 256, ()),  # vocabulary split over tensor: the partitioner's
        ((8, 1, 1), 100, ()),  # 100 tokens do not split 8 ways
    ],
)
def test_token_axes_follow_the_mesh(shape, n, axes):
    assert token_shard_axes(n) == (None, ())  # no mesh
    with jax.set_mesh(_mesh(*shape)):
        mesh, got = token_shard_axes(n)
    assert got == axes and (mesh is not None) == bool(axes)


def test_no_token_axes_inside_shard_map():
    mesh = _mesh(8, 1, 1)
    seen = []

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    def local(x):
        seen.append(token_shard_axes(x.shape[0]))
        return x

    with jax.set_mesh(mesh):
        jax.jit(local)(jnp.zeros((64,)))
    assert seen == [(None, ())]


def _inputs():
    rng = np.random.default_rng(0)
    h, ht = (rng.normal(size=(N, D)).astype(np.float32) for _ in range(2))
    w = (rng.normal(size=(D, V)) * 0.5).astype(np.float32)
    wt = w + (rng.normal(size=(D, V)) * 0.3).astype(np.float32)
    mask = (np.arange(N) % 5 != 0).astype(np.float32)
    return h, ht, w, wt, rng.integers(0, V, N), mask


def _logprobs_loss(h, w, t, c):
    logp = chunked_vocab.token_logprobs(h, w, t, chunk_size=CHUNK)
    return jnp.sum(logp * c) + jnp.sum(chunked_vocab.token_entropy(h, w, chunk_size=CHUNK))


def _distill_loss(h, w, ht, wt, mask):
    options = api.FusedDistillOptions(topk=10, chunk_size=CHUNK, implementation="xla")
    out = api.fused_distill(api.FusedDistillInputs(h, ht, w, wt, mask), options)
    return out.numerator / out.z


@pytest.mark.parametrize("kernel", ["token_logprobs", "fused_distill"])
def test_kernels_split_tokens_over_the_mesh(kernel):
    h, ht, w, wt, t, mask = _inputs()
    c = np.linspace(0.5, 2.0, N).astype(np.float32)
    if kernel == "token_logprobs":
        loss, rest = _logprobs_loss, (t, c)
    else:
        loss, rest = _distill_loss, (ht, wt, mask)
    grad = jax.value_and_grad(loss, argnums=(0, 1))
    one = jax.jit(grad).lower(h, w, *rest).compile()
    want_value, want_grads = one(h, w, *rest)

    mesh = _mesh(8, 1, 1)
    tok, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    shardings = (tok, rep) + ((tok, tok) if kernel == "token_logprobs" else (tok, rep, tok))
    placed = [jax.device_put(x, s) for x, s in zip((h, w, *rest), shardings, strict=True)]
    with jax.set_mesh(mesh):
        eight = jax.jit(grad).lower(*placed).compile()
    value, grads = eight(*placed)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for g, g_want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, g_want, rtol=1e-4, atol=1e-6)
    # Each device's matmuls cover its 32 tokens, not all 256.
    assert dot_flops(eight.as_text()) * 8 == dot_flops(one.as_text())
