"""Learner: the jitted SRPO train step on a tiny Qwen3 (CPU, 8 forced devices)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from srpo_jax.algo import advantages, methods, routing
from srpo_jax.learner import batch as batching
from srpo_jax.learner import loss as forward
from srpo_jax.learner import train_step as learner
from srpo_jax.model import Qwen3, tiny
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import MeshConfig, make_mesh

G = 4
PROMPTS = 4
VOCAB = 97


def model_config():
    return tiny(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, head_dim=8)


def make_rows(seed: int, method: str, *, rewards=None) -> batching.StepRows:
    rng = np.random.default_rng(seed)
    b = PROMPTS * G
    prompts = [rng.integers(1, VOCAB, rng.integers(3, 9)).tolist() for _ in range(PROMPTS)]
    responses = [rng.integers(1, VOCAB, rng.integers(2, 12)).tolist() for _ in range(b)]
    rollout_lp = [(-rng.random(len(r)) * 3).tolist() for r in responses]
    if rewards is None:
        rewards = rng.integers(0, 2, b).astype(float)
        rewards[:G] = [1, 0, 0, 1]  # at least one routable group
    sdpo_mask, teacher_idx = routing.route(rewards, G, method)
    adv = np.asarray(advantages.group_advantages(rewards, G))
    teacher_prompts = {
        int(r): rng.integers(1, VOCAB, rng.integers(5, 14)).tolist()
        for r in np.flatnonzero(teacher_idx >= 0)
    }
    return batching.StepRows.from_lists(
        prompt_ids=[prompts[r // G] for r in range(b)],
        response_ids=responses,
        rollout_logprobs=rollout_lp,
        advantages=adv,
        sdpo_rows=sdpo_mask,
        teacher_rows=teacher_idx >= 0,
        teacher_prompt_ids=teacher_prompts,
    )


def lcfg(method="srpo", **kw):
    base = dict(method=method, topk=10, lr=1e-3, warmup_steps=0, chunk_size=16)
    base.update(kw)
    return learner.StepSettings.of(**base)


def fresh_state(cfg, mesh=None, seed=0, mcfg=None):
    if mesh is None:
        mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    model = create_sharded_model(mcfg or model_config(), mesh, seed=seed)
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, learner.init_state(params, cfg, mesh)


def run_step(cfg, rows, *, mesh=None, n_mini=1, micro=None, **buckets):
    graphdef, state = fresh_state(cfg, mesh)
    batch = batching.build_train_batch(
        rows,
        num_minibatches=n_mini,
        micro_batch_rows=micro or rows.num_rows // n_mini,
        pad_id=0,
        **buckets,
    )
    lrn = learner.Learner(cfg, graphdef, mesh)
    new_state, metrics = lrn.train_step(state, batch)
    return jax.device_get(new_state), jax.device_get(metrics), batch


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [dict(fsdp=4, tensor=2), dict(data=2, fsdp=4)])
def test_sharded_step_equals_single_device(shape):
    cfg = lcfg()
    rows = make_rows(0, "srpo")
    single, m1, _ = run_step(cfg, rows)
    mesh = make_mesh(MeshConfig(**shape))
    sharded, m8, _ = run_step(cfg, rows, mesh=mesh)
    assert_trees_close(single.params, sharded.params)
    assert_trees_close(single.teacher, sharded.teacher)
    assert_trees_close(single.opt_state, sharded.opt_state)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m8["grad_norm"], rtol=1e-5)


def test_params_are_sharded_by_the_rules_table():
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    _, state = fresh_state(lcfg(), mesh)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs)
    # the EMA teacher and Adam moments live exactly where the params live
    for p, t in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.teacher), strict=True):
        assert p.sharding.is_equivalent_to(t.sharding, p.ndim)


@pytest.mark.parametrize("method", ["srpo", "sdpo", "srpo_no_dw"])
def test_micro_batches_equal_one_batch(method):
    cfg = lcfg(method)
    rows = make_rows(1, method)
    full, mf, _ = run_step(cfg, rows)
    micro, mm, batch = run_step(cfg, rows, micro=4)
    assert batch.input_ids_BS.shape[:3] == (1, 4, 4)
    np.testing.assert_allclose(mf["loss"], mm["loss"], rtol=1e-5)
    assert_trees_close(full.params, micro.params)


def test_finer_length_buckets_take_the_same_step():
    # Tighter padding (data.length_buckets_per_octave) changes shapes, not the step: the
    # padding is masked, and positions count from each row's first real token.
    rows = make_rows(3, "srpo")
    coarse, mc, b_coarse = run_step(lcfg(), rows, min_bucket=4)
    fine, mf, b_fine = run_step(lcfg(), rows, min_bucket=4, buckets_per_octave=4)
    assert mf["sdpo/tokens"] > 0  # the teacher rows are in the step
    s_coarse, s_fine = b_coarse.input_ids_BS.shape[-1], b_fine.input_ids_BS.shape[-1]
    t_coarse, t_fine = (
        b_coarse.teacher_input_ids_MT.shape[-1],
        b_fine.teacher_input_ids_MT.shape[-1],
    )
    assert s_fine < s_coarse and t_fine < t_coarse, (s_fine, s_coarse, t_fine, t_coarse)
    np.testing.assert_allclose(mf["loss"], mc["loss"], rtol=1e-5)
    assert_trees_close(fine.params, coarse.params)
    assert_trees_close(fine.teacher, coarse.teacher)


def test_fused_gradient_modes_take_the_same_step():
    # grad-in-forward and the recompute backward are two contractions of one closed-form
    # gradient: the updated parameters and the loss must agree.
    rows = make_rows(3, "srpo")
    fwd, mf, _ = run_step(lcfg(fused_grad_mode="forward"), rows)
    rec, mr, _ = run_step(lcfg(fused_grad_mode="recompute"), rows)
    assert mf["sdpo/tokens"] > 0  # the distillation term is in the step
    np.testing.assert_allclose(mf["loss"], mr["loss"], rtol=1e-6)
    assert_trees_close(fwd.params, rec.params)
    with pytest.raises(ValueError, match="fused_grad_mode"):
        lcfg(fused_grad_mode="backward")


def test_bf16_student_logp_matches_the_samplers_logits():
    # With bf16 compute the learner's log-probs come from the same bf16 unembedding products
    # as Qwen3.logits (what the embedded sampler scores with); reference: float64
    # log-softmax of the model's full logits.
    mcfg = dataclasses.replace(model_config(), dtype="bfloat16")
    model = create_sharded_model(mcfg, make_mesh(MeshConfig(), jax.devices()[:1]), seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    rows = make_rows(5, "srpo")
    batch = batching.build_train_batch(rows, num_minibatches=1, micro_batch_rows=16, pad_id=0)
    mb = jax.tree.map(lambda x: jnp.asarray(x[0, 0]), batch)
    logp_BR = np.asarray(forward.student_logp(lcfg(), graphdef, params, mb)[0])

    r_len = mb.response_ids_BR.shape[-1]
    p_len = mb.input_ids_BS.shape[-1] - r_len
    logits = np.asarray(model(mb.input_ids_BS, mb.attention_mask_BS), np.float64)
    logits = logits[:, p_len - 1 : p_len - 1 + r_len]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ids = np.asarray(mb.response_ids_BR)
    want = np.take_along_axis(logits, ids[..., None], -1)[..., 0] - lse
    valid = np.asarray(mb.response_mask_BR) > 0
    np.testing.assert_allclose(logp_BR[valid], want[valid], atol=2e-5)


def test_teacher_rows_are_only_the_routed_rows_and_cost_scales():
    rewards_some = np.array([1, 0, 0, 0] + [0] * 12, float)  # 3 routed
    rewards_more = np.array([1, 0, 0, 0] * 4, float)  # 12 routed
    rewards_none = np.array([1, 1, 1, 1] + [0] * 12, float)  # nothing routed
    b_some = batching.build_train_batch(
        make_rows(2, "srpo", rewards=rewards_some), num_minibatches=1, micro_batch_rows=16, pad_id=0
    )
    assert b_some.teacher_valid_M.sum() == 3
    assert set(b_some.teacher_src_M[0, 0][b_some.teacher_valid_M[0, 0]]) == {1, 2, 3}
    b_none = batching.build_train_batch(
        make_rows(2, "srpo", rewards=rewards_none), num_minibatches=1, micro_batch_rows=16, pad_id=0
    )
    assert b_none.teacher_input_ids_MT.shape[2] == 0

    cfg = lcfg()
    graphdef, state = fresh_state(cfg)

    def flops(rewards):
        batch = batching.build_train_batch(
            make_rows(2, "srpo", rewards=rewards), num_minibatches=1, micro_batch_rows=16, pad_id=0
        )
        fn = jax.jit(lambda s, b: learner.train_step_fn(cfg, graphdef, s, b))
        # The lowered (pre-optimisation) HLO's count: the same dots, without three compiles.
        return fn.lower(state, batch).cost_analysis()["flops"]

    f_none, f_some, f_more = flops(rewards_none), flops(rewards_some), flops(rewards_more)
    # teacher cost grows with the routed count (bucketed to 4 and 16 rows)
    assert f_none < f_some < f_more
    assert (f_more - f_none) > 2.5 * (f_some - f_none)


def test_nan_gradient_skips_the_update():
    cfg = lcfg("grpo")
    rows = make_rows(3, "grpo")
    rows = dataclasses.replace(rows, advantages_B=np.full(rows.num_rows, np.nan))
    graphdef, state = fresh_state(cfg)
    before = jax.device_get(state)
    batch = batching.build_train_batch(rows, num_minibatches=1, micro_batch_rows=16, pad_id=0)
    new, metrics = learner.Learner(cfg, graphdef).train_step(state, batch)
    new, metrics = jax.device_get((new, metrics))
    assert metrics["skipped_updates"] == 1
    assert new.skipped_updates == 1 and new.consecutive_skips == 1
    assert_trees_close(before.params, new.params, rtol=0, atol=0)
    assert_trees_close(before.teacher, new.teacher, rtol=0, atol=0)
    assert_trees_close(before.opt_state.inner_state, new.opt_state.inner_state, rtol=0, atol=0)


@pytest.mark.parametrize(
    "method,dtype", [(m, "float32") for m in methods.names()] + [("srpo", "bfloat16")]
)
def test_one_step_lowers_the_methods_own_objective(method, dtype):
    cfg = lcfg(method, lr=3e-3)
    rows = make_rows(4, method)
    graphdef, state = fresh_state(cfg, mcfg=dataclasses.replace(model_config(), dtype=dtype))
    batch = batching.build_train_batch(rows, num_minibatches=1, micro_batch_rows=16, pad_id=0)
    mb = jax.tree.map(lambda x: jnp.asarray(x[0, 0]), batch)
    old_logp = forward.student_logp(cfg, graphdef, state.params, mb)[0]
    teacher0 = jax.device_get(state.teacher)  # state is donated by train_step

    def objective(params):
        num, _ = forward.micro_objective(cfg, graphdef, params, teacher0, mb, old_logp, None)
        return float(num / forward.denominator(cfg, jax.tree.map(lambda x: x[None], mb)))

    before = objective(state.params)
    params0 = jax.device_get(state.params)
    new, _ = learner.Learner(cfg, graphdef).train_step(state, batch)
    after = objective(new.params)
    assert after < before, (method, before, after)
    # and the EMA teacher moved 5% of the way to the new student
    for t0, p1, t1 in zip(
        jax.tree.leaves(params0),
        jax.tree.leaves(new.params),
        jax.tree.leaves(new.teacher),
        strict=True,
    ):
        np.testing.assert_allclose(t1, 0.95 * t0 + 0.05 * np.asarray(p1), rtol=1e-6, atol=1e-7)


def test_grpo_four_minibatches_use_pi_old_from_before_the_first_update():
    cfg = lcfg("grpo")
    rows = make_rows(5, "grpo")
    new, metrics, batch = run_step(cfg, rows, n_mini=4)
    assert batch.input_ids_BS.shape[:3] == (4, 1, 4)
    assert np.isfinite(metrics["loss"]) and metrics["skipped_updates"] == 0
    # the LR schedule advances once per training step, not per update
    assert int(new.step) == 1
    assert int(new.opt_state.inner_state[0].count) == 4


def test_warmup_schedule():
    cfg = lcfg(lr=1.0, warmup_steps=10)
    got = [float(learner.lr_at(cfg, jnp.asarray(s))) for s in range(12)]
    np.testing.assert_allclose(got, [min((s + 1) / 10, 1.0) for s in range(12)], rtol=1e-6)


def test_model_is_plain_qwen3():
    # the learner's graphdef is a plain Qwen3 module; no learner-specific state in it
    graphdef, _ = fresh_state(lcfg())
    assert isinstance(nnx.merge(graphdef, fresh_state(lcfg())[1].params), Qwen3)


def _one_correct_per_group(b):
    rewards = np.zeros(b)
    rewards[::G] = 1.0  # the correct rollout has no correct sibling: no teacher for it
    return rewards


def test_a_method_added_in_a_test_trains_through_the_learner(monkeypatch):
    # Two new table entries, nothing else touched. "srpo_again" has srpo's switches under a
    # new name: the same step bit for bit (no module reads the name). "distil_failed" is a
    # new combination (distillation of failures only, no GRPO term, no entropy weights):
    # when every rollout with a teacher is a failure, its routing equals sdpo's "all", and
    # the step must equal sdpo's.
    srpo = methods.get("srpo")
    monkeypatch.setitem(methods.METHODS, "srpo_again", dataclasses.replace(srpo, name="srpo_again"))
    new = methods.Method("distil_failed", "failed", False, False, False, 1e-5, 32)
    monkeypatch.setitem(methods.METHODS, new.name, new)

    rows = make_rows(7, "srpo")
    for micro in (None, 4):  # the micro-batch path reads entropy_weights for its pre-pass
        a, ma, _ = run_step(lcfg("srpo"), rows, micro=micro)
        b, mb, _ = run_step(lcfg("srpo_again"), make_rows(7, "srpo_again"), micro=micro)
        assert_trees_close(a.params, b.params, rtol=0, atol=0)
        assert ma.keys() == mb.keys()
        for k in ma:
            np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)

    b_rows = PROMPTS * G
    rewards = _one_correct_per_group(b_rows)
    mask, teacher = routing.route(rewards, G, "distil_failed")
    # Independent of the table: failures (reward 0) of a group with a correct rollout.
    np.testing.assert_array_equal(mask, rewards == 0)
    np.testing.assert_array_equal(teacher >= 0, rewards == 0)
    got, mg, _ = run_step(lcfg("distil_failed"), make_rows(8, "distil_failed", rewards=rewards))
    want, mw, _ = run_step(lcfg("sdpo"), make_rows(8, "sdpo", rewards=rewards))
    assert mg["sdpo/tokens"] > 0
    np.testing.assert_allclose(mg["loss"], mw["loss"], rtol=1e-6)
    assert_trees_close(got.params, want.params)
