"""The Pallas fused-distillation kernels compile (not only lower) with the real XLA:GPU
(Triton -> PTX) and XLA:TPU (Mosaic) compilers on compile-only devices (srpo_jax.aot.targets), and
the compiled module calls the kernel. Needs the [aot] extra; skips only without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from srpo_jax.kernels.fused_distill import api

pytest.importorskip("jax_plugins.xla_cuda12", reason="needs the [aot] extra")
pytest.importorskip("libtpu", reason="needs the [aot] extra")
from srpo_jax.aot import targets as aot  # noqa: E402

TARGETS = {
    "pallas_gpu": ("h20x8", "__gpu$xla.gpu.triton"),
    "pallas_tpu": ("tpu-v5p-8", "tpu_custom_call"),
}


@pytest.mark.parametrize("impl", sorted(TARGETS))
def test_fused_loss_value_and_grad_compiles_with_the_kernel(impl):
    topology, marker = TARGETS[impl]
    device = aot.compile_devices(topology)[0]
    rep = NamedSharding(Mesh(np.asarray([device]), ("x",)), P())
    n, d, v = 256, 64, 1000  # V not a multiple of the tiles: the masked last tile compiles too

    def struct(shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rep)

    def loss(hs, ht, ws, wt, mask):
        def numerator(hs, ws):
            options = api.FusedDistillOptions(implementation=impl, chunk_size=128)
            out = api.fused_distill(api.FusedDistillInputs(hs, ht, ws, wt, mask), options)
            return out.numerator

        return jax.value_and_grad(numerator, argnums=(0, 1))(hs, ws)

    args = (struct((n, d)), struct((n, d)), struct((d, v)), struct((d, v)))
    compiled = jax.jit(loss).lower(*args, struct((n,), jnp.float32)).compile()
    assert marker in compiled.as_text()
    assert compiled.memory_analysis().temp_size_in_bytes > 0
