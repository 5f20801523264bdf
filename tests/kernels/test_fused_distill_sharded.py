"""Tokens split over ("data", "fsdp") of an 8-device CPU mesh give the one-device result.

Two ways: plain jit with token-sharded inputs (GSPMD partitions the chunk loop), and
fused_distill_sharded (shard_map, per-device chunk loop, psum of the two scalars; the
replicated unembedding's gradient is summed by the transpose).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from srpo_jax.kernels.fused_distill import api

N, D, V = 64, 16, 300
KW = dict(topk=100, alpha=0.5, chunk_size=16)


def inputs():
    rng = np.random.default_rng(0)
    hs, ht = rng.normal(size=(2, N, D)).astype(np.float32)
    ws = (rng.normal(size=(D, V)) * 0.5).astype(np.float32)
    wt = ws + (rng.normal(size=(D, V)) * 0.3).astype(np.float32)
    mask = ((np.arange(N) % 7 != 0) & (np.arange(N) < N - 5)).astype(np.float32)
    tw = rng.uniform(0.5, 2.0, size=N).astype(np.float32)
    return [jnp.asarray(a) for a in (hs, ht, ws, wt, mask, tw)]


def loss_and_grads(fn, args):
    def numerator(hs, ws):
        out = fn(hs, args[1], ws, *args[3:])
        return out.numerator, out

    (_, out), grads = jax.value_and_grad(numerator, argnums=(0, 1), has_aux=True)(args[0], args[2])
    return out, grads


def assert_close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu"])
def test_sharded_equals_single_device(impl):
    assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    args = inputs()
    options = api.FusedDistillOptions(**KW, implementation=impl, interpret=True)
    ref_out, ref_grads = jax.jit(
        lambda *a: loss_and_grads(lambda *b: api.fused_distill(b, options), a)
    )(*args)

    tok = NamedSharding(mesh, P(("data", "fsdp")))
    rep = NamedSharding(mesh, P())
    placed = [
        jax.device_put(a, s) for a, s in zip(args, (tok, tok, rep, rep, tok, tok), strict=True)
    ]
    gspmd = jax.jit(lambda *a: loss_and_grads(lambda *b: api.fused_distill(b, options), a))
    smap = jax.jit(
        lambda *a: loss_and_grads(lambda *b: api.fused_distill_sharded(mesh, b, options), a)
    )
    for out, grads in (gspmd(*placed), smap(*placed)):
        assert_close(out.numerator, ref_out.numerator)
        assert_close(out.z, ref_out.z)
        assert_close(out.divergence_N, ref_out.divergence_N)
        for g, g_ref in zip(grads, ref_grads, strict=True):
            assert_close(g, g_ref)
