"""Grouped-query attention for Qwen3: the exact XLA path and two fused kernels.

`Qwen3Config.attention_impl` (config key model.attention_impl) picks one:

- "xla": scores and softmax written out by XLA, queries `attention_query_chunk` at a time
  (exact, the reference the others are tested against). Any mask.
- "cudnn": jax.nn.dot_product_attention(implementation="cudnn"), cuDNN's fused flash
  attention (`__cudnn$fmha` custom calls); GPU only, bf16/fp16.
- "splash": the Pallas TPU splash-attention kernel (jax.experimental.pallas.ops.tpu); TPU
  only.
- "auto": cudnn on GPU, splash on TPU, xla elsewhere. The platform is the one of the mesh
  set with jax.set_mesh (so a compile-only GPU/TPU mesh picks the fused kernel from a CPU
  host), else the default back-end.

The fused kernels take only what the learner's and the teacher's rows look like: causal
self-attention over `[left pad | tokens | right pad]`, i.e. one contiguous run of valid
tokens per row (`CausalPadding`). cuDNN keeps its fused path only for right padding given as
sequence lengths (any other mask becomes a dense bias), so each row is rotated left by its
count of leading pads, attended with query/key lengths, and rotated back; RoPE has already
been applied, so the rotation changes nothing but where the row sits. Splash takes segment
ids (valid 1, pad 0) with its causal mask, so pads never mix with tokens. Pad rows' outputs
differ between implementations (they attend to nothing meaningful) and are never read:
pad keys are masked out for every valid query. The KV-cache path (dense slot masks) always
takes "xla". Packed streams (`CausalSegments`, the learner's train.packed) run on "xla"
(the block-diagonal causal mask built per query block) and "splash" (segment ids); cuDNN
has no packed layout in the pinned jax (docs/architecture.md).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cudnn", "splash")
_PLATFORM_OF = {"cudnn": "gpu", "splash": "tpu"}
_NEG_INF = float(jnp.finfo(jnp.float32).min)  # finite: fully masked rows stay NaN-free


class AttentionUnavailable(ValueError):
    """attention_impl names a kernel the platform cannot run."""


class CausalPadding(NamedTuple):
    """Causal self-attention where valid_BT marks each row's (contiguous) real tokens."""

    valid_BT: jax.Array

    def dense(self) -> jax.Array:
        t = self.valid_BT.shape[1]
        causal_TT = jnp.tril(jnp.ones((t, t), jnp.bool_))
        return causal_TT[None] & self.valid_BT.astype(jnp.bool_)[:, None, :]


class CausalSegments(NamedTuple):
    """Causal self-attention within packed segments: rows laid end to end in one stream,
    segment_BT numbering them (0 for the stream's tail padding). A query sees the keys at or
    before it in its own segment only (block-diagonal causal); tail pads see tail pads."""

    segment_BT: jax.Array

    def dense(self) -> jax.Array:
        t = self.segment_BT.shape[1]
        causal_TT = jnp.tril(jnp.ones((t, t), jnp.bool_))
        seg = self.segment_BT
        return causal_TT[None] & (seg[:, :, None] == seg[:, None, :])


def current_platform() -> str:
    """ "gpu" | "tpu" | "cpu": the platform of the mesh set by jax.set_mesh, else the default."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def resolve(impl: str, platform: str) -> str:
    """The implementation `impl` stands for on `platform`; AttentionUnavailable if it cannot run."""
    if impl not in IMPLS:
        raise AttentionUnavailable(f"model.attention_impl={impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        return {"gpu": "cudnn", "tpu": "splash"}.get(platform, "xla")
    needs = _PLATFORM_OF.get(impl)
    if needs is not None and needs != platform:
        raise AttentionUnavailable(
            f"model.attention_impl={impl!r} runs only on {needs.upper()}, not on {platform}: "
            "use model.attention_impl=auto or xla"
        )
    return impl


def attention(q_BTNH, k_BSKH, v_BSKH, mask, dtype, *, impl: str = "xla", query_chunk: int = 0):
    """Grouped-query attention; q head n reads kv head n // (N // K), as in transformers.

    mask: a CausalPadding or CausalSegments (self-attention) or a dense bool allowed_BTS
    (any pattern; "xla"). impl "auto" on a GPU takes cuDNN for bf16/fp16 compute and the XLA
    path for fp32. Packed segments on cuDNN are refused: the pinned jax's public
    dot_product_attention has no packed layout (docs/architecture.md), so GPU runs pad.
    """
    requested = impl
    impl = resolve(impl, current_platform())
    if impl == "cudnn" and requested == "auto" and jnp.dtype(dtype).itemsize > 2:
        impl = "xla"  # cuDNN's fused kernel is half precision only; auto keeps fp32 exact
    if isinstance(mask, CausalSegments) and impl == "splash":
        from srpo_jax.model import splash

        return splash.splash_attention(q_BTNH, k_BSKH, v_BSKH, mask.segment_BT, dtype)
    if isinstance(mask, CausalSegments) and impl == "cudnn":
        raise AttentionUnavailable(
            "packed sequences (train.packed) cannot run on model.attention_impl='cudnn': the "
            "pinned jax exposes no packed cuDNN layout; set train.packed=False on GPU"
        )
    if isinstance(mask, CausalSegments):
        # Built per query block from the segment ids: no [B, T, T] mask is materialised.
        return xla_attention(q_BTNH, k_BSKH, v_BSKH, mask, dtype, query_chunk)
    if impl == "xla" or not isinstance(mask, CausalPadding):
        allowed_BTS = mask.dense() if isinstance(mask, CausalPadding) else mask
        return xla_attention(q_BTNH, k_BSKH, v_BSKH, allowed_BTS, dtype, query_chunk)
    if impl == "cudnn":
        return cudnn_attention(q_BTNH, k_BSKH, v_BSKH, mask.valid_BT, dtype)
    from srpo_jax.model import splash

    return splash.splash_attention(q_BTNH, k_BSKH, v_BSKH, mask.valid_BT, dtype)


def xla_attention(q_BTNH, k_BSKH, v_BSKH, allowed_BTS, dtype, query_chunk: int = 0):
    """query_chunk > 0 and shorter than T: the queries go through in blocks of that many
    (lax.scan), each block rematerialised in the backward, so one block's fp32 scores
    [B, K, G, query_chunk, S] are live instead of all T rows of them. Exact: every query
    row's softmax is over its whole key range either way.

    allowed_BTS may be a CausalSegments: each block's mask is then formed from the segment
    ids and positions inside the block.
    """
    t = q_BTNH.shape[1]
    segments = isinstance(allowed_BTS, CausalSegments)
    if query_chunk <= 0 or t <= query_chunk:
        allowed = allowed_BTS.dense() if segments else allowed_BTS
        return _attention_block(q_BTNH, k_BSKH, v_BSKH, allowed, dtype)
    b, _, n, h = q_BTNH.shape
    n_blocks = -(-t // query_chunk)
    pad = n_blocks * query_chunk - t
    # Padded query rows attend to nothing (finite, uniform weights) and are dropped below.
    q_BPNH = jnp.pad(q_BTNH, [(0, 0), (0, pad), (0, 0), (0, 0)])
    q_nBCNH = q_BPNH.reshape(b, n_blocks, query_chunk, n, h).swapaxes(0, 1)
    if segments:
        seg_BT = allowed_BTS.segment_BT
        # Padded query rows: segment -1 matches no key.
        seg_BP = jnp.pad(seg_BT, [(0, 0), (0, pad)], constant_values=-1)
        idx_nC = jnp.arange(n_blocks * query_chunk, dtype=jnp.int32).reshape(n_blocks, -1)
        seg_nBC = seg_BP.reshape(b, n_blocks, query_chunk).swapaxes(0, 1)
        mask_xs = (seg_nBC, idx_nC)

        def block_mask(seg_BC, idx_C):
            causal_CS = idx_C[:, None] >= jnp.arange(t, dtype=jnp.int32)[None]
            return causal_CS[None] & (seg_BC[:, :, None] == seg_BT[:, None, :])
    else:
        allowed_BPS = jnp.pad(allowed_BTS, [(0, 0), (0, pad), (0, 0)])
        mask_xs = allowed_BPS.reshape(b, n_blocks, query_chunk, -1).swapaxes(0, 1)

        def block_mask(allowed_BCS):
            return allowed_BCS

    def one_block(q_BCNH, xs):
        return _attention_block(q_BCNH, k_BSKH, v_BSKH, block_mask(*xs), dtype)

    if not segments:
        mask_xs = (mask_xs,)
    block = jax.checkpoint(one_block)
    _, out_nBCNH = jax.lax.scan(lambda _, xs: (None, block(*xs)), None, (q_nBCNH, mask_xs))
    return out_nBCNH.swapaxes(0, 1).reshape(b, n_blocks * query_chunk, n, h)[:, :t]


def _attention_block(q_BTNH, k_BSKH, v_BSKH, allowed_BTS, dtype):
    b, t, n, h = q_BTNH.shape
    k = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    scores = jnp.einsum(
        "btkgh,bskh->bkgts", q_BTKGH, k_BSKH.astype(dtype), preferred_element_type=jnp.float32
    )
    scores = scores * (h**-0.5)
    scores = jnp.where(allowed_BTS[:, None, None], scores, _NEG_INF)
    # fp32 softmax: bf16 exponentials lose the small attention weights.
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum(
        "bkgts,bskh->btkgh", probs, v_BSKH.astype(dtype), preferred_element_type=jnp.float32
    )
    return out.astype(dtype).reshape(b, t, n, h)


def _rotate_rows(x_BT, shift_B):
    """Row b rotated left by shift_B[b] along axis 1 (out[b, t] = x[b, (t + shift) % T])."""
    t = x_BT.shape[1]
    idx_BT = (jnp.arange(t, dtype=jnp.int32)[None] + shift_B[:, None]) % t
    idx = idx_BT.reshape(idx_BT.shape + (1,) * (x_BT.ndim - 2))
    return jnp.take_along_axis(x_BT, idx, axis=1)


def cudnn_attention(q_BTNH, k_BTKH, v_BTKH, valid_BT, dtype, *, implementation="cudnn"):
    """cuDNN flash attention for rows of [left pad | tokens | right pad] (see module doc).
    implementation="xla" runs the same layout through jax's XLA attention (CPU tests)."""
    if implementation == "cudnn" and jnp.dtype(dtype) not in (
        jnp.dtype(jnp.bfloat16),
        jnp.dtype(jnp.float16),
    ):
        raise AttentionUnavailable(
            f"model.attention_impl='cudnn' needs model.dtype bfloat16 or float16, got {dtype}"
        )
    valid_BT = valid_BT.astype(jnp.bool_)
    lead_B = jnp.argmax(valid_BT, axis=1).astype(jnp.int32)  # leading pads (0 if none)
    length_B = jnp.sum(valid_BT, axis=1, dtype=jnp.int32)
    q, k, v = (_rotate_rows(x.astype(dtype), lead_B) for x in (q_BTNH, k_BTKH, v_BTKH))
    out_BTNH = jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=float(q_BTNH.shape[-1] ** -0.5),
        is_causal=True,
        query_seq_lengths=length_B,
        key_value_seq_lengths=length_B,
        implementation=implementation,
    )
    t = q_BTNH.shape[1]
    return _rotate_rows(out_BTNH, (t - lead_B) % t).astype(dtype)
