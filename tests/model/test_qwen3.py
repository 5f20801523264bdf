"""Qwen3 forward parity with transformers, KV-cache decoding, scan/remat, presets.

The reference is transformers' Qwen3ForCausalLM on tiny random configs (hf_reference.py);
weights come into JAX through load_hf from a save_pretrained directory.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_reference import hf_logits, left_padded, make_hf_model, save

from srpo_jax.model import Qwen3, Qwen3Config, load_hf, tiny
from srpo_jax.model import config as presets

FP32 = {"dtype": "float32"}


@nnx.jit
def fwd(model, ids, mask=None, positions=None):
    """Jitted forward: eager op-by-op dispatch would dominate the test time."""
    return model(ids, mask, positions)


@nnx.jit
def hidden(model, ids):
    return model.hidden_states(ids)


def _pair(tmp_path, **kw):
    hf = make_hf_model(**kw)
    return hf, load_hf(save(hf, tmp_path / "ckpt"), config_overrides=FP32)


@pytest.mark.parametrize(
    "kw",
    [
        dict(tie=False, heads=4, kv_heads=2),
        dict(tie=True, heads=4, kv_heads=1),
        dict(tie=False, heads=2, kv_heads=2, head_dim=32),
    ],
    ids=["untied-gqa", "tied-mqa", "untied-mha"],
)
def test_logits_match_transformers(tmp_path, kw):
    hf, model = _pair(tmp_path, **kw)
    ids = np.random.RandomState(1).randint(0, 160, (2, 11))
    np.testing.assert_allclose(
        np.asarray(fwd(model, jnp.asarray(ids))), hf_logits(hf, ids), rtol=1e-4, atol=1e-4
    )


def test_left_padded_batch_matches_transformers_on_real_positions(tmp_path):
    hf, model = _pair(tmp_path)
    ids, mask, positions = left_padded(np.random.RandomState(2), 160, [0, 3, 6], 12)
    ref = hf_logits(hf, ids, mask, positions)
    ours_default = np.asarray(fwd(model, jnp.asarray(ids), jnp.asarray(mask)))
    ours_explicit = np.asarray(
        fwd(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions))
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(ours_default[real], ref[real], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours_explicit[real], ref[real], rtol=1e-4, atol=1e-4)
    # A left-padded row equals the same tokens unpadded.
    solo = hf_logits(hf, ids[2:, 6:])
    np.testing.assert_allclose(ours_default[2, 6:], solo[0], rtol=1e-4, atol=1e-4)


def test_bf16_compute_within_bf16_tolerance(tmp_path):
    hf = make_hf_model()
    model = load_hf(save(hf, tmp_path / "ckpt"), config_overrides={"dtype": "bfloat16"})
    ids = np.random.RandomState(3).randint(0, 160, (2, 10))
    ours = fwd(model, jnp.asarray(ids))
    assert ours.dtype == jnp.float32  # logits are fp32 whatever the compute dtype
    ref = hf_logits(hf, ids)
    err = np.abs(np.asarray(ours) - ref).max()
    # bf16 has an 8-bit mantissa (rel. 2^-8 ~ 4e-3); a few roundings per layer stay ~1e-2.
    assert err < 3e-2 * np.abs(ref).max(), err
    h = hidden(model, jnp.asarray(ids))
    assert h.dtype == jnp.bfloat16 and h.shape == (2, 10, 64)


def test_query_chunked_attention_matches_transformers(tmp_path):
    # Blocks of 5 queries over 12 positions (the last block padded), left-padded rows.
    hf = make_hf_model()
    model = load_hf(
        save(hf, tmp_path / "ckpt"), config_overrides={**FP32, "attention_query_chunk": 5}
    )
    assert model.config.attention_query_chunk == 5
    ids, mask, positions = left_padded(np.random.RandomState(3), 160, [0, 4], 12)
    ref = hf_logits(hf, ids, mask, positions)
    ours = np.asarray(fwd(model, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], rtol=1e-4, atol=1e-4)


def test_query_chunked_attention_bounds_the_score_memory():
    # Compiled temporaries of a value-and-grad at T = 512: all scores at once hold
    # [B, heads, T, T] fp32 per layer; blocks of 64 queries hold an eighth of that.
    def temp_bytes(chunk):
        cfg = tiny(num_layers=1, attention_query_chunk=chunk)
        model = nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0)))
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(params, ids):
            return jnp.mean(nnx.merge(graphdef, params).hidden_states(ids).astype(jnp.float32))

        ids = jax.ShapeDtypeStruct((1, 512), jnp.int32)
        compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    scores = 1 * 4 * 512 * 512 * 4  # one layer's fp32 scores, B=1, 4 heads
    full, chunked = temp_bytes(0), temp_bytes(64)
    assert full >= scores, full
    assert chunked < full - scores // 2, (chunked, full)


def test_hidden_states_times_unembedding_is_logits(tmp_path):
    for tie in (False, True):
        hf, model = _pair(tmp_path / str(tie), tie=tie)
        ids = jnp.asarray(np.random.RandomState(4).randint(0, 160, (1, 7)))
        w = model.unembedding()
        assert w.shape == (64, 160)
        ref = hf.lm_head.weight.detach().numpy().T
        np.testing.assert_array_equal(np.asarray(w), ref)
        logits = jnp.einsum("btd,dv->btv", hidden(model, ids), w)
        np.testing.assert_allclose(
            np.asarray(logits), np.asarray(fwd(model, ids)), rtol=1e-5, atol=1e-5
        )


def test_causal_future_tokens_do_not_change_past_logits(tmp_path):
    _, model = _pair(tmp_path)
    ids = np.random.RandomState(5).randint(0, 160, (1, 9))
    changed = ids.copy()
    changed[0, 6:] = (changed[0, 6:] + 1) % 160
    a, b = fwd(model, jnp.asarray(ids)), fwd(model, jnp.asarray(changed))
    np.testing.assert_allclose(np.asarray(a[:, :6]), np.asarray(b[:, :6]), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(a[:, 6:]), np.asarray(b[:, 6:]))


def test_kv_cache_prefill_and_decode_reproduce_full_forward(tmp_path):
    _, model = _pair(tmp_path)
    p_len, r_len = 7, 5
    ids, mask, _ = left_padded(np.random.RandomState(6), 160, [0, 2, 5], p_len + r_len)
    full = np.asarray(fwd(model, jnp.asarray(ids), jnp.asarray(mask)))
    graphdef, params = nnx.split(model)

    @jax.jit
    def prefill(params, ids_BT, mask_BT, cache):
        return nnx.merge(graphdef, params).prefill(ids_BT, mask_BT, cache)

    @jax.jit
    def decode(params, tokens_B, cache):
        return nnx.merge(graphdef, params).decode_step(tokens_B, cache)

    cache = model.init_cache(3, p_len + r_len + 2)  # spare slots stay invalid
    logits, cache = prefill(
        params, jnp.asarray(ids[:, :p_len]), jnp.asarray(mask[:, :p_len]), cache
    )
    np.testing.assert_allclose(np.asarray(logits), full[:, p_len - 1], rtol=1e-4, atol=1e-4)
    for t in range(r_len):
        logits, cache = decode(params, jnp.asarray(ids[:, p_len + t]), cache)
        np.testing.assert_allclose(np.asarray(logits), full[:, p_len + t], rtol=1e-4, atol=1e-4)
    assert decode._cache_size() == 1  # static shapes: one compilation for every step
    np.testing.assert_array_equal(np.asarray(cache.index_B), [p_len + r_len] * 3)
    np.testing.assert_array_equal(np.asarray(cache.positions_B), mask.sum(1))


def test_kv_cache_rows_with_different_real_lengths(tmp_path):
    """Rows whose prefill ends in different numbers of (right-side) pads continue at their own
    RoPE positions; the pad slots are never attended, so decoding equals the full forward."""
    _, model = _pair(tmp_path)
    ids = jnp.asarray(np.random.RandomState(7).randint(0, 160, (2, 8)))
    full = np.asarray(fwd(model, ids))
    cache = model.init_cache(2, 10)
    prefill = nnx.jit(lambda m, ids, mask, c: m.prefill(ids, mask, c))
    decode = nnx.jit(lambda m, tokens, c: m.decode_step(tokens, c))
    # Row 0 gets 5 real tokens, row 1 gets 3 real + 2 right-side pads that are not attended.
    mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    _, cache = prefill(model, ids[:, :5], mask, cache)
    np.testing.assert_array_equal(np.asarray(cache.positions_B), [5, 3])
    logits0, cache = decode(model, jnp.asarray([ids[0, 5], ids[1, 3]]), cache)
    np.testing.assert_allclose(np.asarray(logits0[0]), full[0, 5], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits0[1]), full[1, 3], rtol=1e-4, atol=1e-4)


def test_unrolled_and_remat_equal_scan_values_and_grads(tmp_path):
    _, ref_model = _pair(tmp_path, layers=3)
    cfg = ref_model.config
    ids = jnp.asarray(np.random.RandomState(8).randint(0, 160, (2, 6)))
    graphdef, params = nnx.split(ref_model, nnx.Param)

    def value_and_grad(params, cfg):
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(2))))

        def loss(params):
            return jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, params)(ids)) ** 2)

        return jax.jit(jax.value_and_grad(loss))(params)

    base_val, base_grad = value_and_grad(params, dataclasses.replace(cfg, attention_query_chunk=0))
    for variant in (dict(scan_layers=False), dict(remat=True)):
        val, grad = value_and_grad(params, dataclasses.replace(cfg, **variant))
        np.testing.assert_allclose(val, base_val, rtol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grad, base_grad
        )
    # Query blocks (T = 6: a full block of 4 and a padded one) sum the K/V gradients block by
    # block, a different fp32 summation order: compare each array normwise (max |a - b| over
    # max |b|; measured 9e-7, a wrong block would be O(1)).
    for variant in (dict(attention_query_chunk=4), dict(attention_query_chunk=4, remat=True)):
        val, grad = value_and_grad(params, dataclasses.replace(cfg, **variant))
        np.testing.assert_allclose(val, base_val, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(base_grad), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), variant


def test_scan_program_size_does_not_grow_with_depth():
    def jaxpr_len(layers):
        model = nnx.eval_shape(lambda: Qwen3(tiny(num_layers=layers), rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        fn = lambda s, ids: nnx.merge(graphdef, s)(ids)
        return len(str(jax.make_jaxpr(fn)(state, jnp.zeros((1, 4), jnp.int32))))

    assert jaxpr_len(2) == jaxpr_len(8)


def test_params_are_fp32_with_logical_axes():
    model = nnx.eval_shape(lambda: Qwen3(tiny(tie_embeddings=True), rngs=nnx.Rngs(0)))
    assert model.lm_head is None
    expected = {
        "q_proj": ("layers", "embed", "heads", "head_dim"),
        "k_proj": ("layers", "embed", "kv_heads", "head_dim"),
        "o_proj": ("layers", "heads", "head_dim", "embed"),
        "down_proj": ("layers", "mlp", "embed"),
    }
    for name, axes in expected.items():
        var = getattr(model.layers, name)
        assert var.logical_axes == axes and var.get_value().dtype == jnp.float32
    assert model.embed.logical_axes == ("vocab", "embed")
    assert model.layers.q_proj.get_value().shape == (2, 64, 4, 16)


# Published Qwen3 config.json values (SPEC section 12), written out independently:
# (layers, hidden, intermediate, q heads, kv heads, tied)
PUBLISHED = {
    "qwen3_0p6b": (28, 1024, 3072, 16, 8, True),
    "qwen3_1p7b": (28, 2048, 6144, 16, 8, True),
    "qwen3_4b": (36, 2560, 9728, 32, 8, True),
    "qwen3_8b": (36, 4096, 12288, 32, 8, False),
    "qwen3_14b": (40, 5120, 17408, 40, 8, False),
    "qwen3_32b": (64, 5120, 25600, 64, 8, False),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_equal_published_configs(name):
    cfg = getattr(presets, name)()
    layers, hidden, mlp, heads, kv, tied = PUBLISHED[name]
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (layers, hidden, mlp)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.tie_embeddings) == (heads, kv, tied)
    assert (cfg.vocab_size, cfg.head_dim, cfg.rms_norm_eps) == (151936, 128, 1e-6)
    assert (cfg.rope_theta, cfg.max_position_embeddings) == (1_000_000, 40960)
    assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "float32")
    assert getattr(presets, name)(remat=True).remat
    assert getattr(Qwen3Config, name)() == cfg
    assert Qwen3Config.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="dtype"):
        tiny(dtype="float8")
    with pytest.raises(ValueError, match="rope_type"):
        Qwen3Config.from_hf_dict({**tiny().to_hf_dict(), "rope_parameters": {"rope_type": "yarn"}})
