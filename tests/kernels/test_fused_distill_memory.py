"""Compiled temporary memory of the chunked fused loss (XLA's memory_analysis, no run).

Properties, not byte counts. With an fp32 unembedding neither gradient mode holds an fp32
[D, V] temporary: grad-in-forward's dW accumulator is the gradient itself, built in the
output buffer. With bf16 the accumulator must be fp32 beside the bf16 result, so
grad-in-forward holds one and the recompute backward (which writes bf16 tiles straight
into the result) needs less. D is large against the chunk's C so [D, V] terms dominate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from srpo_jax.kernels.fused_distill import api, xla

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
        dw_tile=TILE,
        topk_tile=TILE,
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


def test_fp32_modes_hold_no_fp32_dv_temporary():
    dv_f32 = D * V * 4
    for mode in ("recompute", "forward"):
        temp = temp_bytes(jnp.float32, mode)
        assert temp < dv_f32, (mode, temp, dv_f32)


def test_bf16_recompute_needs_less_temp_than_grad_in_forward():
    recompute, forward = temp_bytes(jnp.bfloat16, "recompute"), temp_bytes(jnp.bfloat16, "forward")
    assert forward >= D * V * 4, forward  # the fp32 accumulator beside the bf16 result
    assert recompute < forward, (recompute, forward)


@pytest.mark.parametrize("dtype,expected", [(jnp.float32, "forward"), (jnp.bfloat16, "recompute")])
def test_api_auto_grad_mode_takes_the_lean_mode_per_dtype(dtype, expected):
    """api's grad_mode="auto" lowers to exactly the program of the mode chosen for the dtype."""

    def lowered(grad_mode):
        def loss(hs, ht, ws, wt, mask):
            def numerator(h, w):
                options = api.FusedDistillOptions(topk=20, chunk_size=CHUNK, grad_mode=grad_mode)
                out = api.fused_distill(api.FusedDistillInputs(h, ht, w, wt, mask), options)
                return out.numerator

            return jax.grad(numerator, argnums=(0, 1))(hs, ws)

        nd, dv = jax.ShapeDtypeStruct((N, D), dtype), jax.ShapeDtypeStruct((D, V), dtype)
        n_f32 = jax.ShapeDtypeStruct((N,), jnp.float32)
        return jax.jit(loss).lower(nd, nd, dv, dv, n_f32).as_text()

    auto = lowered("auto")
    assert auto == lowered(expected)
    assert auto != lowered({"forward": "recompute", "recompute": "forward"}[expected])
