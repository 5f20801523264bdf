"""The embedded JAX engine on a tiny random Qwen3 (fp32, CPU).

References are independent of the engine's decode path: engine log-probs are checked against
a full forward of the model on prompt + completion (no KV cache), stop/length semantics
against the definition, and compile counts against JAX's own compile events.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from srpo_jax.model import Qwen3, tiny
from srpo_jax.rollout.engine import FINISH_LENGTH, FINISH_STOP, RolloutEngine, SamplingParams
from srpo_jax.rollout.jax_engine import JaxEngine, pick_bucket

CFG = tiny(dtype="float32", param_dtype="float32")
PROMPTS = [[5, 9, 17], [3, 1, 4, 1, 5, 9, 2, 6], [200, 7, 7, 7, 8]]


def _model(seed: int) -> Qwen3:
    """Random tiny Qwen3 drawn with numpy (a jitted nnx init costs seconds of compile here).

    Norm weights are 1, other weights N(0, 0.02) like the real init, except the unembedding:
    a 0.02-std one gives nearly uniform next-token distributions, which would make most
    checks vacuous, so it is scaled up to make them peaked."""
    abstract = nnx.eval_shape(lambda: Qwen3(CFG, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(path[-1].key)
        if name.endswith("norm"):
            return jnp.ones(leaf.shape, leaf.dtype)
        std = 0.5 if name == "lm_head" else 0.02
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def model():
    return _model(0)


@pytest.fixture(scope="module")
def engine(model):
    # Fixed buckets keep the number of distinct programs (and test time) small.
    return JaxEngine(
        CFG,
        model,
        pad_id=0,
        max_stop_tokens=64,
        prompt_buckets=(16,),
        batch_buckets=(2, 8),
        max_new_tokens_buckets=(16,),
    )


@nnx.jit
def _full_logits(model, ids_BT):
    return model(ids_BT)


def _reference_logits(model, prompt, completion):
    """float64 logits predicting each completion token, from one uncached forward.

    The sequence is right-padded to a fixed length so every call reuses one compile;
    causality makes the padding invisible to the positions read."""
    seq = list(prompt) + list(completion)
    ids = np.zeros((1, 32), np.int32)
    ids[0, : len(seq)] = seq
    logits = np.asarray(_full_logits(model, jnp.asarray(ids))[0], np.float64)
    p = len(prompt)
    return logits[p - 1 : p - 1 + len(completion)]


def _reference_logprobs(model, prompt, completion, temperature=1.0):
    """log_softmax(logits / T) of each completion token, float64."""
    z = _reference_logits(model, prompt, completion) / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return logp[np.arange(len(completion)), completion]


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, RolloutEngine)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_full_forward_with_mixed_left_padding(model, engine, temperature):
    sp = SamplingParams(max_new_tokens=12, temperature=temperature, seed=3)
    out = engine.generate(PROMPTS, 2, sp, step=1)
    assert out.token_ids_BR.shape == (6, 12) and out.logprobs_BR.dtype == np.float32
    np.testing.assert_array_equal(out.prompt_index_B, [0, 0, 1, 1, 2, 2])
    for r in range(out.num_rows):
        ref = _reference_logprobs(model, PROMPTS[r // 2], out.completion(r), temperature)
        np.testing.assert_allclose(out.logprobs_BR[r, : out.lengths_B[r]], ref, atol=1e-4)


def test_greedy_follows_the_full_forward_argmax(model, engine):
    out = engine.generate(PROMPTS[:2], 1, SamplingParams(max_new_tokens=6, temperature=0.0))
    for r, prompt in enumerate(PROMPTS[:2]):
        # Teacher-forced argmax at every position = the greedy continuation.
        logits = _reference_logits(model, prompt, out.completion(r))
        np.testing.assert_array_equal(out.completion(r), logits.argmax(-1))
        ref = _reference_logprobs(model, prompt, out.completion(r))
        np.testing.assert_allclose(out.logprobs_BR[r], ref, atol=1e-4)


def test_filters_reach_the_sampler(model, engine):
    # top-p this small keeps only the most likely token (after top-k), so the samples are
    # the greedy ones while the log-probs stay those of the T-scaled full distribution.
    sp = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=1e-6, top_k=5, seed=9)
    out = engine.generate(PROMPTS[:2], 1, sp)
    for r, prompt in enumerate(PROMPTS[:2]):
        logits = _reference_logits(model, prompt, out.completion(r))
        np.testing.assert_array_equal(out.completion(r), logits.argmax(-1))
        ref = _reference_logprobs(model, prompt, out.completion(r), temperature=0.7)
        np.testing.assert_allclose(out.logprobs_BR[r], ref, atol=1e-4)


def test_steps_differ_seed_and_step_reproduce_rows_ignore_batch(engine):
    sp = SamplingParams(max_new_tokens=10, seed=7)
    a = engine.generate(PROMPTS, 2, sp, step=4)
    b = engine.generate(PROMPTS, 2, sp, step=5)
    again = engine.generate(PROMPTS, 2, sp, step=4)
    assert not np.array_equal(a.token_ids_BR, b.token_ids_BR)
    np.testing.assert_array_equal(a.token_ids_BR, again.token_ids_BR)
    np.testing.assert_array_equal(a.logprobs_BR, again.logprobs_BR)
    # Rows 0-1 (prompt 0) alone: smaller batch bucket and prompt bucket, same samples.
    alone = engine.generate(PROMPTS[:1], 2, sp, step=4)
    np.testing.assert_array_equal(
        alone.token_ids_BR, a.token_ids_BR[:2, : alone.token_ids_BR.shape[1]]
    )
    np.testing.assert_allclose(
        alone.logprobs_BR, a.logprobs_BR[:2, : alone.token_ids_BR.shape[1]], atol=1e-5
    )
    # The n samples of one prompt differ from each other (row index is folded in).
    assert not np.array_equal(a.token_ids_BR[0], a.token_ids_BR[1])


def test_stop_tokens_and_length_finish_reasons(engine):
    stop = tuple(range(0, 256, 5))  # ~20% of the vocabulary: rows stop at different steps
    sp = SamplingParams(max_new_tokens=14, stop_token_ids=stop, seed=1)
    out = engine.generate(PROMPTS, 2, sp)
    assert FINISH_STOP in out.finish_reasons and len(set(out.lengths_B.tolist())) > 1
    for r in range(out.num_rows):
        toks, n = out.completion(r), int(out.lengths_B[r])
        assert not any(t in stop for t in toks[:-1]), r
        if toks[-1] in stop:
            assert out.finish_reasons[r] == FINISH_STOP
        else:
            assert out.finish_reasons[r] == FINISH_LENGTH and n == 14
        assert np.all(out.token_ids_BR[r, n:] == 0) and np.all(out.logprobs_BR[r, n:] == 0)
    plain = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=5))
    assert plain.finish_reasons == (FINISH_LENGTH,) * 6 and np.all(plain.lengths_B == 5)
    assert plain.token_ids_BR.shape == (6, 5)


def test_no_recompile_within_a_bucket(engine):
    compiles = []

    def listener(event, _secs, **_kw):
        if "backend_compile" in event:
            compiles.append(event)

    sp = SamplingParams(max_new_tokens=9, temperature=0.8, seed=0)
    engine.generate([[1, 2, 3], [4, 5], [6]], 2, sp, step=0)  # 3 prompts: the 8-bucket
    traces = engine.num_traces
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        # Other prompt lengths (same 16-bucket), prompt count (same 8-bucket), step, seed,
        # temperature and max_new_tokens (same 16-bucket): nothing is traced or compiled.
        sp2 = SamplingParams(max_new_tokens=13, temperature=1.1, seed=5)
        engine.generate([[7] * 11, [1, 2, 3, 4, 5, 6, 7], [9], [4] * 16, [2]], 2, sp2, step=3)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert engine.num_traces == traces
    assert compiles == []


def test_update_weights_switches_samples_and_records_version(engine):
    original = engine._params
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    before = engine.generate(PROMPTS, 1, greedy)
    new_model = _model(2)
    params = nnx.state(new_model, nnx.Param)
    try:
        metrics = engine.update_weights(params, version=3)
        assert set(metrics) == {"sync/seconds", "sync/bytes"}
        assert metrics["sync/bytes"] == sum(x.nbytes for x in jax.tree.leaves(params))
        # Same devices, same dtype: the learner's arrays are re-bound, not copied.
        pairs = zip(jax.tree.leaves(engine._params), jax.tree.leaves(params), strict=True)
        assert all(a is b for a, b in pairs)
        after = engine.generate(PROMPTS, 1, greedy)
    finally:
        engine.update_weights(original, version=0)
    assert before.weight_version == 0 and after.weight_version == 3
    assert not np.array_equal(before.token_ids_BR, after.token_ids_BR)
    for r, prompt in enumerate(PROMPTS):
        ref = _reference_logprobs(new_model, prompt, after.completion(r))
        np.testing.assert_allclose(after.logprobs_BR[r], ref, atol=1e-4)


def test_update_weights_takes_pure_dicts_and_casts_on_device():
    eng = JaxEngine(CFG, _model(0), pad_id=0, weights_dtype="bfloat16")
    params = nnx.state(_model(2), nnx.Param)
    pure = nnx.to_pure_dict(params)
    pure["final_norm"] = np.asarray(pure["final_norm"])  # a host leaf is accepted too
    metrics = eng.update_weights(pure, version=4)
    assert metrics["sync/bytes"] * 2 == sum(x.nbytes for x in jax.tree.leaves(params))
    assert {x.dtype for x in jax.tree.leaves(eng._params)} == {jnp.dtype(jnp.bfloat16)}
    assert eng.weight_version == 4


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_copied_weights_outlive_the_donated_source(model, dtype):
    """copy_weights (rollout.overlap): the engine keeps sampling after the arrays it was
    given are deleted, as a donating train step deletes the learner's, and samples exactly
    what an engine sharing those arrays did (a cast to the dtype a leaf already has, or none,
    would otherwise hand back the same buffer)."""
    source = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    shared = JaxEngine(CFG, source, pad_id=0, weights_dtype=dtype, max_new_tokens_buckets=(16,))
    own = JaxEngine(
        CFG, source, pad_id=0, weights_dtype=dtype, max_new_tokens_buckets=(16,), copy_weights=True
    )
    sp = SamplingParams(max_new_tokens=8, seed=5)
    want = shared.generate(PROMPTS, 2, sp, step=3)
    for x in jax.tree.leaves(source):
        x.delete()
    got = own.generate(PROMPTS, 2, sp, step=3)
    np.testing.assert_array_equal(got.token_ids_BR, want.token_ids_BR)
    np.testing.assert_array_equal(got.logprobs_BR, want.logprobs_BR)
    if dtype != "bfloat16":  # bf16: the cast already made the engine's own arrays
        with pytest.raises(RuntimeError, match="weights were deleted"):
            shared.generate(PROMPTS, 2, sp, step=3)


def test_sharded_engine_matches_unsharded(model, engine):
    from srpo_jax.sharding import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = JaxEngine(CFG, model, mesh=mesh, pad_id=0)
    sp = SamplingParams(max_new_tokens=8, seed=2)
    a = sharded.generate(PROMPTS, 2, sp)
    b = engine.generate(PROMPTS, 2, sp)
    np.testing.assert_array_equal(a.token_ids_BR, b.token_ids_BR)
    np.testing.assert_allclose(a.logprobs_BR, b.logprobs_BR, atol=1e-5)


def test_finer_length_buckets_sample_the_same_rollouts(model):
    # 20-token prompts and 18 new tokens: buckets 32 and 32 in powers of two, 20 and 20 at
    # four per doubling. The noise keys and the masked padding make the samples identical.
    prompts = [list(range(1, 21)), [7, 8, 9]]
    sp = SamplingParams(max_new_tokens=18, seed=3)
    coarse = JaxEngine(CFG, model, pad_id=0)
    fine = JaxEngine(CFG, model, pad_id=0, length_buckets_per_octave=4)
    assert coarse._pack(prompts, 2)[0].shape[1] == 32 and fine._pack(prompts, 2)[0].shape[1] == 20
    a, b = fine.generate(prompts, 2, sp), coarse.generate(prompts, 2, sp)
    np.testing.assert_array_equal(a.token_ids_BR, b.token_ids_BR)
    np.testing.assert_allclose(a.logprobs_BR, b.logprobs_BR, atol=1e-5)
    assert a.finish_reasons == b.finish_reasons == (FINISH_LENGTH,) * 4


def test_bucket_and_input_errors(engine):
    assert pick_bucket(5, None, "x") == 8 and pick_bucket(5, (4, 6, 32), "x") == 6
    with pytest.raises(ValueError, match="prompt length 40 exceeds"):
        pick_bucket(40, (16, 32), "prompt length")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], 1, SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[1, 999]], 1, SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="do not match"):
        engine.update_weights({"embed": np.zeros((3, 3))}, version=1)


def test_bf16_sampling_agrees_with_fp32_sampling_within_bf16_tolerance(model):
    """rollout.weights_dtype "" samples a bf16 model from a bf16 copy of the fp32 master
    weights. That copy changes nothing the model computes (its matmuls take bf16 operands
    either way): the rollouts equal those sampled from the fp32 master. Against fp32
    sampling (fp32 compute and weights) the log-probs agree to bf16 precision: 8 ulps of
    bf16 (2^-5), relative and absolute, on every token both engines sampled alike."""
    from srpo_jax.config_checks import ConfigError
    from srpo_jax.rollout.config import RolloutConfig, engine_weights_dtype

    bf16_cfg = tiny(dtype="bfloat16", param_dtype="float32")
    dtype = engine_weights_dtype(RolloutConfig(), bf16_cfg.dtype)
    assert dtype == "bfloat16" == engine_weights_dtype(RolloutConfig(weights_dtype="auto"), dtype)
    assert engine_weights_dtype(RolloutConfig(weights_dtype="float32"), dtype) == "float32"
    with pytest.raises(ConfigError, match="rollout.weights_dtype"):
        RolloutConfig(weights_dtype="int8")

    master = nnx.state(model, nnx.Param)
    bf16 = JaxEngine(bf16_cfg, master, pad_id=0, weights_dtype=dtype)
    assert {x.dtype for x in jax.tree.leaves(bf16._params)} == {jnp.dtype(jnp.bfloat16)}
    from_master = JaxEngine(bf16_cfg, master, pad_id=0, weights_dtype="float32")
    fp32 = JaxEngine(CFG, master, pad_id=0)
    sp = SamplingParams(max_new_tokens=12, seed=5)
    a, m = bf16.generate(PROMPTS, 4, sp, step=2), from_master.generate(PROMPTS, 4, sp, step=2)
    np.testing.assert_array_equal(a.token_ids_BR, m.token_ids_BR)
    np.testing.assert_array_equal(a.logprobs_BR, m.logprobs_BR)

    b = fp32.generate(PROMPTS, 4, sp, step=2)
    gaps = []
    for r in range(a.num_rows):
        n_common = min(a.lengths_B[r], b.lengths_B[r])
        same = a.token_ids_BR[r, :n_common] == b.token_ids_BR[r, :n_common]
        k = n_common if same.all() else int(np.argmin(same))
        # Up to the first differing token both engines saw the same context.
        np.testing.assert_allclose(
            a.logprobs_BR[r, :k], b.logprobs_BR[r, :k], rtol=2**-5, atol=2**-5
        )
        gaps.append(np.abs(a.logprobs_BR[r, :k] - b.logprobs_BR[r, :k]))
    gaps = np.concatenate(gaps)
    assert gaps.size >= a.lengths_B.sum() // 2, (gaps.size, a.lengths_B.sum())
    assert 0 < np.median(gaps) < 2**-6  # not vacuous: bf16 compute does move the log-probs
