"""srpo_jax.model.attention: the XLA path against a float64 oracle, the fused kernels
compiled by the real XLA:GPU / XLA:TPU compilers (compile-only devices, srpo_jax.aot.targets).

The compile tests need the `[aot]` extra (jax-cuda12-plugin + cuDNN wheel, libtpu); they
skip only when it is absent.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from srpo_jax.model import attention as attn
from srpo_jax.model.config import Qwen3Config
from srpo_jax.model.qwen3 import Qwen3
from tests.model.attention_np import reference_attention_np


def _padded_valid(b, t, rng):
    """Rows of [left pad | tokens | right pad] with varied pad lengths (one row unpadded)."""
    valid = np.zeros((b, t), bool)
    for i in range(b):
        lead = 0 if i == 0 else int(rng.integers(0, t // 3))
        tail = 0 if i == 0 else int(rng.integers(0, t // 3))
        valid[i, lead : t - tail] = True
    return valid


@pytest.mark.parametrize("query_chunk", [0, 8, 13])
def test_xla_path_equals_float64_reference_with_left_and_right_padding(query_chunk):
    rng = np.random.default_rng(0)
    b, t, n, k, h = 3, 40, 4, 2, 16
    q, kk, v = (rng.standard_normal((b, t, m, h)).astype(np.float32) for m in (n, k, k))
    valid = _padded_valid(b, t, rng)
    got = attn.attention(
        jnp.asarray(q),
        jnp.asarray(kk),
        jnp.asarray(v),
        attn.CausalPadding(jnp.asarray(valid)),
        jnp.float32,
        impl="xla",
        query_chunk=query_chunk,
    )
    want = reference_attention_np(q, kk, v, valid)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=2e-5, atol=2e-6)


def test_cudnn_layout_rotation_equals_float64_reference():
    """The cuDNN path's layout (rows rotated so tokens start at 0, query/key lengths, rotated
    back) through jax's XLA attention, which takes the same arguments, on the CPU."""
    rng = np.random.default_rng(1)
    b, t, n, k, h = 4, 32, 4, 2, 16
    q, kk, v = (rng.standard_normal((b, t, m, h)).astype(np.float32) for m in (n, k, k))
    valid = _padded_valid(b, t, rng)
    args = (jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), jnp.asarray(valid))
    got = attn.cudnn_attention(*args, jnp.float32, implementation="xla")
    want = reference_attention_np(q, kk, v, valid)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=2e-5, atol=2e-6)


def test_splash_kernel_in_the_interpreter_equals_float64_reference_and_xla_gradients():
    """The splash path as it runs on a TPU (padding T up to the kernel's block, k scaled by
    H^-0.5, kv-head grouping, segment ids for pads) with the Pallas kernel interpreted on
    the CPU: forward against the float64 oracle, q/k/v gradients against the XLA path."""
    from srpo_jax.model import splash

    rng = np.random.default_rng(2)
    b, t, n, k, h = 2, 200, 4, 2, 128  # t pads to 256 = two 128-token blocks
    q, kk, v = (rng.standard_normal((b, t, m, h)).astype(np.float32) for m in (n, k, k))
    valid = _padded_valid(b, t, rng)
    mask = jnp.asarray(valid)
    weights = rng.standard_normal((b, t, n, h)).astype(np.float32) * valid[:, :, None, None]

    def run_splash(q, k, v):
        return splash._local(q, k, v, mask, jnp.float32, interpret=True)

    def run_xla(q, k, v):
        return attn.attention(q, k, v, attn.CausalPadding(mask), jnp.float32, impl="xla")

    args = tuple(jnp.asarray(x) for x in (q, kk, v))
    got = run_splash(*args)
    want = reference_attention_np(q, kk, v, valid)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=2e-5, atol=2e-6)

    def grads(f):
        return jax.grad(lambda *a: (f(*a) * weights).sum(), argnums=(0, 1, 2))(*args)

    for name, g_splash, g_xla in zip("qkv", grads(run_splash), grads(run_xla), strict=True):
        np.testing.assert_allclose(g_splash, g_xla, rtol=1e-4, atol=2e-5, err_msg=f"d{name}")


def _packed_segments(t, lengths):
    """Segment ids of rows of `lengths` laid end to end in a stream of t (tail pad 0)."""
    seg = np.zeros(t, np.int32)
    at = 0
    for i, n in enumerate(lengths):
        seg[at : at + n] = i + 1
        at += n
    return seg


def _per_segment_reference(q, k, v, seg_BT):
    """float64 oracle of packed attention: each segment attended on its own (its slice of the
    stream as one unpadded row); tail padding is left at zero."""
    out = np.zeros(q.shape, np.float64)
    for b in range(q.shape[0]):
        for s in range(1, seg_BT[b].max() + 1):
            at = np.flatnonzero(seg_BT[b] == s)
            sl = np.s_[b : b + 1, at[0] : at[-1] + 1]
            out[sl] = reference_attention_np(q[sl], k[sl], v[sl], np.ones((1, at.size), bool))
    return out


@pytest.mark.parametrize("impl,query_chunk", [("xla", 0), ("xla", 24), ("splash", 0)])
def test_packed_segments_attend_only_within_themselves(impl, query_chunk):
    """CausalSegments (the learner's packed streams): the XLA path (block-diagonal causal
    mask, query-chunked or not) and the splash kernel in the interpreter (segment ids) equal
    the per-segment float64 oracle at every real token."""
    from srpo_jax.model import splash

    rng = np.random.default_rng(3)
    b, t, n, k, h = 2, 200, 4, 2, 128 if impl == "splash" else 16
    q, kk, v = (rng.standard_normal((b, t, m, h)).astype(np.float32) for m in (n, k, k))
    seg = np.stack([_packed_segments(t, [70, 1, 90, 30]), _packed_segments(t, [13, 150])])
    args = tuple(jnp.asarray(x) for x in (q, kk, v))
    if impl == "splash":
        got = splash._local(*args, jnp.asarray(seg), jnp.float32, interpret=True)
    else:
        mask = attn.CausalSegments(jnp.asarray(seg))
        got = attn.attention(*args, mask, jnp.float32, impl="xla", query_chunk=query_chunk)
    real = seg > 0
    want = _per_segment_reference(q, kk, v, seg)
    np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=2e-5, atol=2e-6)


def test_auto_is_xla_on_cpu_and_fused_kernels_refuse_cpu():
    assert attn.resolve("auto", "cpu") == "xla"
    assert attn.resolve("auto", "gpu") == "cudnn"
    assert attn.resolve("auto", "tpu") == "splash"
    with pytest.raises(attn.AttentionUnavailable, match="runs only on GPU"):
        attn.resolve("cudnn", "cpu")
    with pytest.raises(attn.AttentionUnavailable, match="runs only on TPU"):
        attn.resolve("splash", "gpu")
    with pytest.raises(attn.AttentionUnavailable, match="expected one of"):
        attn.resolve("flash", "gpu")
    with pytest.raises(ValueError, match="attention_impl"):
        Qwen3Config.tiny(attention_impl="flash")


def _aot():
    pytest.importorskip("jax_plugins.xla_cuda12", reason="needs the [aot] extra")
    pytest.importorskip("libtpu", reason="needs the [aot] extra")
    from srpo_jax.aot import targets as aot

    return aot


def _mesh(aot, topology):
    devices = np.asarray(aot.compile_devices(topology)).reshape(-1, 1, 1)
    return Mesh(devices, ("data", "fsdp", "tensor"))


FUSED = {"cudnn": ("h20x8", "__cudnn$fmha"), "splash": ("tpu-v5p-8", "tpu_custom_call")}


@pytest.mark.parametrize("impl", sorted(FUSED))
def test_fused_attention_compiles_to_the_fused_call(impl):
    aot = _aot()
    topology, marker = FUSED[impl]
    mesh = _mesh(aot, topology)
    b, t, n, k, h = mesh.size, 256, 8, 2, 128
    rows = NamedSharding(mesh, P("data"))
    q = jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16, sharding=rows)
    kv = jax.ShapeDtypeStruct((b, t, k, h), jnp.bfloat16, sharding=rows)
    valid = jax.ShapeDtypeStruct((b, t), jnp.bool_, sharding=rows)

    def value_and_grads(q, k, v, valid):
        def loss(q, k, v):
            mask = attn.CausalPadding(valid)
            out = attn.attention(q, k, v, mask, jnp.bfloat16, impl=impl)
            return out.astype(jnp.float32).sum()

        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    # conftest sets JAX_DEFAULT_MATMUL_PRECISION=highest for the fp32 parity tests; the
    # splash backward's bf16 matmuls are traced under it and Mosaic refuses fp32 passes on
    # bf16 operands, so the compile runs at the precision main and the plan use.
    with jax.set_mesh(mesh), jax.default_matmul_precision("default"):
        text = jax.jit(value_and_grads).lower(q, kv, kv, valid).compile().as_text()
    # Forward and backward both fused: at least two kernel calls, and no [T, T] softmax.
    assert text.count(marker) >= 2, f"{marker} missing from the compiled {topology} HLO"


def _teacher_forward_temp(aot, impl, t):
    """Compiled temporaries of a Qwen3-8B-shaped (2 layers) forward of 8 rows of t tokens."""
    mesh = _mesh(aot, "h20x8")
    cfg = Qwen3Config.qwen3_8b(num_layers=2, vocab_size=1024, attention_impl=impl)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0))))
    rep = NamedSharding(mesh, P())
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    rows = NamedSharding(mesh, P("data"))
    ids = jax.ShapeDtypeStruct((mesh.size, t), jnp.int32, sharding=rows)
    mask = jax.ShapeDtypeStruct((mesh.size, t), jnp.int32, sharding=rows)

    def forward(state, ids, mask):
        return nnx.merge(graphdef, state).hidden_states(ids, attention_mask_BT=mask)

    with jax.set_mesh(mesh):
        compiled = jax.jit(forward).lower(state, ids, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled.as_text()


def _attention_temp(aot, impl, t, topology="h20x8"):
    """Compiled temporaries of one Qwen3-8B-shaped attention (32 q / 8 kv heads of 128)."""
    mesh = _mesh(aot, topology)
    rows = NamedSharding(mesh, P("data"))
    q = jax.ShapeDtypeStruct((mesh.size, t, 32, 128), jnp.bfloat16, sharding=rows)
    kv = jax.ShapeDtypeStruct((mesh.size, t, 8, 128), jnp.bfloat16, sharding=rows)
    valid = jax.ShapeDtypeStruct((mesh.size, t), jnp.bool_, sharding=rows)

    def forward(q, k, v, valid):
        mask = attn.CausalPadding(valid)
        return attn.attention(q, k, v, mask, jnp.bfloat16, impl=impl, query_chunk=1024)

    with jax.set_mesh(mesh), jax.default_matmul_precision("default"):  # as main (see above)
        return (
            jax.jit(forward).lower(q, kv, kv, valid).compile().memory_analysis().temp_size_in_bytes
        )


def test_cudnn_at_24k_tokens_needs_a_tenth_of_the_xla_temporaries():
    """Attention alone: >= 10x. The whole 2-layer teacher forward: the saving is at least one
    query block's fp32 scores (the MLP's [T, 12288] activations are the rest, in both)."""
    aot = _aot()
    start = time.perf_counter()
    t = 24576
    att_xla, att_cudnn = (_attention_temp(aot, impl, t) for impl in ("xla", "cudnn"))
    temp_xla, _ = _teacher_forward_temp(aot, "xla", t)
    temp_cudnn, text = _teacher_forward_temp(aot, "cudnn", t)
    assert "__cudnn$fmha" in text
    print(
        f"24k tokens, per device: attention temps xla {att_xla / 2**30:.2f} GiB, cudnn "
        f"{att_cudnn / 2**30:.3f} GiB; 2-layer teacher forward xla {temp_xla / 2**30:.2f} GiB, "
        f"cudnn {temp_cudnn / 2**30:.2f} GiB ({time.perf_counter() - start:.0f} s)"
    )
    assert att_cudnn * 10 <= att_xla, (att_xla, att_cudnn)
    block_scores = 1024 * t * 32 * 4  # one query block's fp32 scores, one row
    assert temp_xla - temp_cudnn >= block_scores, (temp_xla, temp_cudnn)


def test_splash_at_24k_tokens_needs_a_tenth_of_the_xla_temporaries():
    """The same attention on a v5p-8 (one row of 24576 tokens per chip) under XLA:TPU."""
    aot = _aot()
    t = 24576
    att_xla, att_splash = (_attention_temp(aot, impl, t, "tpu-v5p-8") for impl in ("xla", "splash"))
    print(f"24k tokens, per v5p chip: attention temps xla {att_xla / 2**30:.2f} GiB, splash "
          f"{att_splash / 2**30:.3f} GiB")  # fmt: skip
    assert att_splash * 10 <= att_xla, (att_xla, att_splash)
