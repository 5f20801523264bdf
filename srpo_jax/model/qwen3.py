"""Qwen3 dense decoder in Flax NNX, the same function as transformers' Qwen3ForCausalLM.

Pre-norm blocks: RMSNorm -> GQA attention (per-head q/k RMSNorm, RoPE) -> residual ->
RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; tied or untied unembedding. Layer
parameters are stored stacked along a leading `layers` axis and applied with lax.scan, so
compile time does not grow with depth; each layer can be rematerialised (jax.checkpoint).
Attention is srpo_jax.model.attention (`attention_impl`: the exact query-chunked XLA path,
cuDNN or splash flash attention).

Parameters are fp32 and carry logical axis names (`logical_axes` metadata) that
srpo_jax.sharding maps to mesh axes. Matmuls run in the compute dtype with fp32
accumulation; softmax and the logits are fp32. `create_sharded_model` builds one with its
parameters born sharded (the model imports sharding, never the other way round).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from srpo_jax.model import attention as attn
from srpo_jax.model import kv_cache as kvc
from srpo_jax.model.config import Qwen3Config
from srpo_jax.sharding import fit_spec, logical_to_spec, param_shardings

# name -> (per-layer shape from config, logical axes without the leading "layers", init)
_LAYER_PARAMS = {
    "attn_norm": (lambda c: (c.hidden_size,), ("norm",), "ones"),
    "q_proj": (
        lambda c: (c.hidden_size, c.num_heads, c.head_dim),
        ("embed", "heads", "head_dim"),
        "normal",
    ),
    "k_proj": (
        lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim),
        ("embed", "kv_heads", "head_dim"),
        "normal",
    ),
    "v_proj": (
        lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim),
        ("embed", "kv_heads", "head_dim"),
        "normal",
    ),
    "o_proj": (
        lambda c: (c.num_heads, c.head_dim, c.hidden_size),
        ("heads", "head_dim", "embed"),
        "normal",
    ),
    "q_norm": (lambda c: (c.head_dim,), ("head_dim",), "ones"),
    "k_norm": (lambda c: (c.head_dim,), ("head_dim",), "ones"),
    "mlp_norm": (lambda c: (c.hidden_size,), ("norm",), "ones"),
    "gate_proj": (lambda c: (c.hidden_size, c.intermediate_size), ("embed", "mlp"), "normal"),
    "up_proj": (lambda c: (c.hidden_size, c.intermediate_size), ("embed", "mlp"), "normal"),
    "down_proj": (lambda c: (c.intermediate_size, c.hidden_size), ("mlp", "embed"), "normal"),
}
LAYER_PARAM_NAMES = tuple(_LAYER_PARAMS)
_INIT_STD = 0.02  # transformers' initializer_range for Qwen3


def _param(rngs: nnx.Rngs, shape, axes, init: str, dtype) -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


def _constrain(x, names):
    """Shards an activation by the rules table when a mesh is set (jax.set_mesh); a no-op
    otherwise, and for dimensions the mesh does not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(mesh.axis_names) >= {"data", "fsdp", "tensor"}:
        return x
    spec = fit_spec(logical_to_spec(names), x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def rms_norm(x, weight, eps: float, dtype):
    # fp32 statistics: the mean of squares underflows/overflows in bf16.
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(dtype) * weight.astype(dtype)


def rope(x_BTNH, positions_BT, theta: float):
    """Rotary embedding, rotate-half convention (first and second halves of head_dim)."""
    half = x_BTNH.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, 2 * half, 2, dtype=jnp.float32) / (2 * half)))
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    cos = jnp.cos(angles_BTh)[:, :, None, :]
    sin = jnp.sin(angles_BTh)[:, :, None, :]
    x = x_BTNH.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTNH.dtype)


def _project(x, w, spec: str, dtype):
    return jnp.einsum(spec, x, w.astype(dtype), preferred_element_type=jnp.float32).astype(dtype)


def decoder_layer(config: Qwen3Config, p, x_BTD, positions_BT, kv_fn):
    """One pre-norm block. kv_fn(k_BTKH, v_BTKH) -> (keys, values, allowed_BTS): the keys and
    values to attend to (this call's, or the cache's after writing this call's)."""
    dt, eps = config.compute_dtype, config.rms_norm_eps
    h_BTD = rms_norm(x_BTD, p["attn_norm"], eps, dt)
    q = rms_norm(_project(h_BTD, p["q_proj"], "btd,dnh->btnh", dt), p["q_norm"], eps, dt)
    k = rms_norm(_project(h_BTD, p["k_proj"], "btd,dkh->btkh", dt), p["k_norm"], eps, dt)
    v = _project(h_BTD, p["v_proj"], "btd,dkh->btkh", dt)
    q = rope(q, positions_BT, config.rope_theta)
    k = rope(k, positions_BT, config.rope_theta)
    keys, values, allowed_BTS = kv_fn(k, v)
    o_BTNH = attn.attention(
        q,
        keys,
        values,
        allowed_BTS,
        dt,
        impl=config.attention_impl,
        query_chunk=config.attention_query_chunk,
    )
    x_BTD = x_BTD + _project(o_BTNH, p["o_proj"], "btnh,nhd->btd", dt)
    x_BTD = _constrain(x_BTD, ("batch", "seq", "act_embed"))
    h_BTD = rms_norm(x_BTD, p["mlp_norm"], eps, dt)
    gate_BTF = _project(h_BTD, p["gate_proj"], "btd,df->btf", dt)
    up_BTF = _project(h_BTD, p["up_proj"], "btd,df->btf", dt)
    x_BTD = x_BTD + _project(jax.nn.silu(gate_BTF) * up_BTF, p["down_proj"], "btf,fd->btd", dt)
    return _constrain(x_BTD, ("batch", "seq", "act_embed"))


def default_positions(mask_BT):
    """RoPE positions for left padding: count of real tokens before each one (pads get 0)."""
    return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=1) - 1, 0)


class DecoderStack(nnx.Module):
    """All decoder layers' parameters, each stacked along a leading `layers` axis."""

    def __init__(self, config: Qwen3Config, *, rngs: nnx.Rngs):
        for name, (shape_fn, axes, init) in _LAYER_PARAMS.items():
            shape = (config.num_layers, *shape_fn(config))
            setattr(self, name, _param(rngs, shape, ("layers", *axes), init, config.params_dtype))

    def stacked(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in LAYER_PARAM_NAMES}


class Qwen3(nnx.Module):
    """Qwen3ForCausalLM. Params: embed [V, D], layers.* [L, ...], final_norm [D],
    lm_head [D, V] (None when tied: the unembedding is embed.T)."""

    def __init__(self, config: Qwen3Config, *, rngs: nnx.Rngs):
        self.config = config
        pdt = config.params_dtype
        self.embed = _param(
            rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), "normal", pdt
        )
        self.layers = DecoderStack(config, rngs=rngs)
        self.final_norm = _param(rngs, (config.hidden_size,), ("norm",), "ones", pdt)
        self.lm_head = (
            None
            if config.tie_embeddings
            else _param(
                rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), "normal", pdt
            )
        )

    # ----- shared trunk -------------------------------------------------------------------
    def _run_layers(self, x_BTD, positions_BT, kv_fn_for_layer, carry_extra):
        """Applies every layer. kv_fn_for_layer(layer_index, extra, k, v) ->
        (keys, values, allowed, extra'): lets the cache path thread the stacked cache."""
        cfg = self.config

        def body(carry, xs):
            x, extra = carry
            p, i = xs
            box = {}

            def kv_fn(k, v):
                keys, values, allowed, box["extra"] = kv_fn_for_layer(i, extra, k, v)
                return keys, values, allowed

            x = decoder_layer(cfg, p, x, positions_BT, kv_fn)
            return (x, box["extra"]), None

        if cfg.remat:
            body = jax.checkpoint(body, prevent_cse=not cfg.scan_layers)
        params = self.layers.stacked()
        layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        carry = (x_BTD, carry_extra)
        if cfg.scan_layers:
            carry, _ = jax.lax.scan(body, carry, (params, layer_ids))
        else:
            for i in range(cfg.num_layers):
                carry, _ = body(carry, (jax.tree.map(lambda a, i=i: a[i], params), layer_ids[i]))
        return carry

    def _embed(self, input_ids_BT):
        x = jnp.take(self.embed[...], input_ids_BT, axis=0).astype(self.config.compute_dtype)
        return _constrain(x, ("batch", "seq", "act_embed"))

    def _final(self, x_BTD):
        return rms_norm(
            x_BTD, self.final_norm[...], self.config.rms_norm_eps, self.config.compute_dtype
        )

    # ----- public forward paths -----------------------------------------------------------
    def hidden_states(
        self, input_ids_BT, *, attention_mask_BT=None, positions_BT=None, segment_ids_BT=None
    ):
        """[B, T, D] hidden states after the final RMSNorm, in the compute dtype.

        segment_ids_BT: packed rows (the learner's packed streams): attention stays within
        each segment (attention.CausalSegments) and positions_BT, which then must be given,
        restart at 0 in every segment; attention_mask_BT is not read."""
        if segment_ids_BT is not None:
            if positions_BT is None:
                raise ValueError("hidden_states: packed segments need their positions_BT")
            mask = attn.CausalSegments(segment_ids_BT.astype(jnp.int32))
        else:
            if attention_mask_BT is None:
                attention_mask_BT = jnp.ones(input_ids_BT.shape, jnp.int32)
            if positions_BT is None:
                positions_BT = default_positions(attention_mask_BT)
            # Causal over each row's real tokens; the attention implementation builds its mask.
            mask = attn.CausalPadding(attention_mask_BT.astype(jnp.bool_))

        def kv_fn(_i, extra, k, v):
            return k, v, mask, extra

        x_BTD, _ = self._run_layers(self._embed(input_ids_BT), positions_BT, kv_fn, ())
        return self._final(x_BTD)

    def unembedding(self):
        """[D, V] unembedding matrix in the parameter dtype (embed.T when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden_BTD):
        """fp32 logits from hidden states: compute-dtype inputs, fp32 accumulation."""
        dt = self.config.compute_dtype
        w_DV = self.unembedding().astype(dt)
        return jnp.einsum(
            "...d,dv->...v", hidden_BTD.astype(dt), w_DV, preferred_element_type=jnp.float32
        )

    def __call__(self, input_ids_BT, attention_mask_BT=None, positions_BT=None):
        """[B, T, V] fp32 logits."""
        h = self.hidden_states(
            input_ids_BT, attention_mask_BT=attention_mask_BT, positions_BT=positions_BT
        )
        return self.logits(h)

    # ----- KV-cache decoding --------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int) -> kvc.KVCache:
        return kvc.init_cache(self.config, batch, max_len)

    def _extend(self, input_ids_BT, mask_BT, cache: kvc.KVCache):
        """Writes T tokens per row at each row's write index and returns the fp32 logits of
        the last one. Positions continue each row's count of real tokens."""
        positions_BT = cache.positions_B[:, None] + default_positions(mask_BT)
        slots_BT = kvc.slot_ids(cache, input_ids_BT.shape[1])
        valid_BS = kvc.mark_valid(cache, mask_BT)
        slot_S = jnp.arange(cache.max_len, dtype=jnp.int32)
        allowed_BTS = valid_BS[:, None, :] & (slot_S[None, None, :] <= slots_BT[:, :, None])

        def kv_fn(i, extra, k, v):
            k_cache, v_cache = extra
            k_cache = kvc.write_layer(k_cache, i, k, slots_BT)
            v_cache = kvc.write_layer(v_cache, i, v, slots_BT)
            keys = jax.lax.dynamic_index_in_dim(k_cache, i, 0, keepdims=False)
            values = jax.lax.dynamic_index_in_dim(v_cache, i, 0, keepdims=False)
            return keys, values, allowed_BTS, (k_cache, v_cache)

        extra = (cache.k_LBSKH, cache.v_LBSKH)
        x_BTD, (k_cache, v_cache) = self._run_layers(
            self._embed(input_ids_BT), positions_BT, kv_fn, extra
        )
        logits_BV = self.logits(self._final(x_BTD[:, -1]))
        return logits_BV, kvc.advance(cache, k_cache, v_cache, valid_BS, mask_BT)

    def prefill(self, input_ids_BT, attention_mask_BT, cache: kvc.KVCache):
        """Runs a (left-padded) prompt batch into the cache -> (fp32 logits [B, V] of the last
        position, cache). The cache must have room: index + T <= max_len."""
        if attention_mask_BT is None:
            attention_mask_BT = jnp.ones(input_ids_BT.shape, jnp.int32)
        return self._extend(input_ids_BT, attention_mask_BT, cache)

    def decode_step(self, tokens_B, cache: kvc.KVCache):
        """Feeds one token per row -> (fp32 logits [B, V] for the next token, cache)."""
        tokens_B1 = tokens_B[:, None]
        return self._extend(tokens_B1, jnp.ones(tokens_B1.shape, jnp.int32), cache)


def create_sharded_model(config, mesh: jax.sharding.Mesh, *, seed: int = 0):
    """A Qwen3 whose parameters are born sharded: eval_shape -> shardings from the rules
    table -> jit(init, out_shardings). No device ever holds an unsharded parameter."""
    abstract = nnx.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(mesh, abstract_state)

    @jax.jit
    def init():
        return nnx.split(Qwen3(config, rngs=nnx.Rngs(seed)))[1]

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
