"""Compiled temporary memory of the chunked fused loss (XLA's memory_analysis, no run).

Properties, not byte counts: the recompute backward holds no fp32 [D, V] buffer (the
grad-in-forward scan carries one as its dW accumulator) and needs less temporary memory
than grad-in-forward. D is large against the chunk's C so the [D, V] terms dominate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from srpo_jax.kernels.fused_distill import xla

N, D, V, CHUNK, TILE = 48, 512, 2048, 16, 256


def temp_bytes(dtype, grad_mode: str) -> int:
    cfg = xla.ChunkedConfig(
        topk=20,
        alpha=0.5,
        tau=1.0,
        add_tail=True,
        entropy_over="vocab",
        temperature=1.0,
        chunk_size=CHUNK,
        stats=xla.XlaVocabStats(block_v=TILE),
        grad_mode=grad_mode,
        vocab_tile=TILE,
    )
    fn = functools.partial(xla.chunked_fused_distill, cfg)

    def loss(hs, ht, ws, wt, mask, tw):
        return jax.grad(lambda h, w: fn(h, ht, w, wt, mask, tw).numerator, argnums=(0, 1))(hs, ws)

    nd, dv = jax.ShapeDtypeStruct((N, D), dtype), jax.ShapeDtypeStruct((D, V), dtype)
    n_f32 = jax.ShapeDtypeStruct((N,), jnp.float32)
    compiled = jax.jit(loss).lower(nd, nd, dv, dv, n_f32, n_f32).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("no memory analysis on this backend")
    return analysis.temp_size_in_bytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_recompute_needs_less_temp_than_grad_in_forward(dtype):
    recompute, forward = temp_bytes(dtype, "recompute"), temp_bytes(dtype, "forward")
    assert recompute < forward, (recompute, forward)
    if dtype == jnp.float32:
        assert recompute < D * V * 4, recompute  # no fp32 [D, V] accumulator
