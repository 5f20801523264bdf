"""The Pallas kernels lower for their real targets from this CPU-only machine.

Interpret mode alone would not catch a kernel that Triton or Mosaic cannot take. Here the
whole fused loss (values and gradients) is lowered for platform "cuda" with the Triton
kernel and for "tpu" with the Mosaic kernel, at test size and at the production
chunk x vocabulary (1024 x 151936 = 128 * 1187, not a power of two), and the lowered
module must contain the back-end's kernel call. Lowering stops at StableHLO plus the
serialized kernel IR: the final Triton-to-PTX and Mosaic-to-TPU compiles happen in XLA on
the device, so they are not exercised here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from srpo_jax.kernels.fused_distill import pallas_gpu, pallas_tpu, xla

TARGETS = {
    "pallas_gpu": ("cuda", pallas_gpu.GpuVocabStats(), "__gpu$xla.gpu.triton"),
    "pallas_tpu": ("tpu", pallas_tpu.TpuVocabStats(), "tpu_custom_call"),
}


def lowered_text(fn, *shapes, platform):
    return jax.jit(fn).trace(*shapes).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("impl", sorted(TARGETS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_loss_with_gradient_lowers(impl, dtype):
    platform, stats, marker = TARGETS[impl]
    n, d, v = 100, 64, 1000
    cfg = xla.ChunkedConfig(
        topk=100,
        alpha=0.5,
        tau=1.0,
        add_tail=True,
        entropy_over="vocab",
        temperature=1.0,
        chunk_size=64,
        stats=stats,
    )
    loss = functools.partial(xla.chunked_fused_distill, cfg)

    def value_and_grad(hs, ht, ws, wt, mask, tw):
        def numerator(hs, ws):
            return loss(hs, ht, ws, wt, mask, tw).numerator

        return jax.value_and_grad(numerator, argnums=(0, 1))(hs, ws)

    nd, dv = jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((d, v), dtype)
    vec = jax.ShapeDtypeStruct((n,), jnp.float32)
    text = lowered_text(value_and_grad, nd, nd, dv, dv, vec, vec, platform=platform)
    assert marker in text


@pytest.mark.parametrize("impl", sorted(TARGETS))
def test_vocab_pass_lowers_at_production_size(impl):
    platform, stats, marker = TARGETS[impl]
    cv = jax.ShapeDtypeStruct((1024, 151936), jnp.float32)
    text = lowered_text(
        stats, cv, cv, jax.ShapeDtypeStruct((1024,), jnp.float32), platform=platform
    )
    assert marker in text


def test_triton_rejects_a_non_power_of_two_tile():
    """Control: the GPU path really goes through Triton's checks (interpret mode has none)."""
    with pytest.raises(ValueError, match="powers of two"):
        pallas_gpu.GpuVocabStats(block_v=1000)
