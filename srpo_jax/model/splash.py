"""Splash attention (Pallas TPU) for Qwen3's grouped-query causal self-attention.

The kernel (jax.experimental.pallas.ops.tpu.splash_attention) is the MQA form applied per kv
head: q [G, T, H] against one kv head's k, v [T, H], vmapped over kv heads and rows. Padding
is segment ids (valid 1, pad 0) and-ed with the causal mask, so no valid query sees a pad
key, and every row, pads included, keeps at least its own diagonal (no empty softmax).
Packed streams pass their own segment ids (row slot + 1, tail pad 0) the same way. T is
padded up to a multiple of the kernel's block with pad tokens; the kernel does not scale
the scores, so k is scaled by H^-0.5 first.

Pallas calls have no SPMD partitioning rule, so under a mesh (jax.set_mesh) the kernel runs
inside shard_map: rows split over the "data" and "fsdp" axes and kv heads over "tensor",
where they divide; otherwise XLA would gather every operand onto each device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

_BLOCK = 512  # q and kv tile; T is padded to a multiple of it (or of 128 when shorter)


def _block_for(t: int) -> int:
    return _BLOCK if t >= _BLOCK else 128


@functools.cache
def _kernel(t: int, groups: int, block: int, interpret: bool = False):
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(groups)])
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    return sk.make_splash_mqa_single_device(mask=mask, block_sizes=sizes, interpret=interpret)


def _local(q_BTNH, k_BTKH, v_BTKH, valid_BT, dtype, *, interpret: bool = False):
    """One device's attention; interpret=True runs the Pallas kernel in the interpreter
    (CPU tests: the same kernel, padding and layout, without a TPU)."""
    b, t, n, h = q_BTNH.shape
    kv = k_BTKH.shape[2]
    block = _block_for(t)
    tp = -(-t // block) * block
    pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
    # The scale goes on k (a quarter of q's bytes for Qwen3's 4:1 grouping): XLA:TPU fuses it
    # into the copy that transposes k for the kernel, while on q it cost a separate
    # q-sized temporary before the transpose (0.51 -> 0.33 GiB per v5p chip at 24k tokens).
    q = jnp.pad(q_BTNH.astype(dtype), pad)
    k = jnp.pad((k_BTKH.astype(jnp.float32) * h**-0.5).astype(dtype), pad)
    v = jnp.pad(v_BTKH.astype(dtype), pad)
    seg_BT = jnp.pad(valid_BT.astype(jnp.int32), [(0, 0), (0, tp - t)])
    q_BKGTH = q.reshape(b, tp, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
    k_BKTH, v_BKTH = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    kernel = _kernel(tp, n // kv, block, interpret)

    def one_head(q_GTH, k_TH, v_TH, seg_T):
        return kernel(q_GTH, k_TH, v_TH, segment_ids=sk.SegmentIds(q=seg_T, kv=seg_T))

    per_row = jax.vmap(one_head, in_axes=(0, 0, 0, None))
    # The kernel's matmuls take bf16 operands with fp32 accumulation; a process-wide
    # "highest" matmul precision would ask Mosaic for fp32 passes on bf16 inputs, which it
    # rejects (the backward is traced outside this context: run under "default").
    with jax.default_matmul_precision("default"):
        out_BKGTH = jax.vmap(per_row)(q_BKGTH, k_BKTH, v_BKTH, seg_BT)
    out_BTNH = out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(b, tp, n, h)
    return out_BTNH[:, :t].astype(dtype)


def _axes_that_divide(mesh, names, size):
    chosen, prod = [], 1
    for name in names:
        if name in mesh.shape and size % (prod * mesh.shape[name]) == 0:
            chosen.append(name)
            prod *= mesh.shape[name]
    return tuple(chosen) or None


def splash_attention(q_BTNH, k_BTKH, v_BTKH, valid_BT, dtype):
    """Causal GQA over each row's valid tokens with the splash kernel (see module doc);
    valid_BT may also be packed segment ids (int, 0 = pad)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _local(q_BTNH, k_BTKH, v_BTKH, valid_BT, dtype)
    rows = _axes_that_divide(mesh, ("data", "fsdp"), q_BTNH.shape[0])
    heads = _axes_that_divide(mesh, ("tensor",), k_BTKH.shape[2])
    spec, spec_bt = P(rows, None, heads, None), P(rows, None)
    local = jax.shard_map(
        functools.partial(_local, dtype=dtype),
        in_specs=(spec, spec, spec, spec_bt),
        out_specs=spec,
        check_vma=False,
    )
    return local(q_BTNH, k_BTKH, v_BTKH, valid_BT)
