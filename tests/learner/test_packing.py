"""Packed sequences (learner/packing.py, packed_loss.py): the host layout against the rows it
came from, and the packed train step against the padded one (the reference: the padded
layout's exactness tests are in test_train_step.py) on a tiny Qwen3 (CPU)."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from srpo_jax.algo import advantages, routing
from srpo_jax.aot.hlo_flops import dot_flops
from srpo_jax.learner import batch as batching
from srpo_jax.learner import loss as forward
from srpo_jax.learner import packing
from srpo_jax.learner import train_step as learner
from srpo_jax.sharding import MeshConfig, make_mesh
from tests.learner.test_train_step import VOCAB, assert_trees_close, fresh_state, lcfg

G = 4
PACK = 48


def mixed_rows(seed, method, rewards, *, empty=(), prompts=4) -> batching.StepRows:
    """Prompts of 2..11 tokens, responses of 1..30 (long tail), the rows in `empty` with an
    empty response; teacher prompts of 5..14 tokens for the routed rows."""
    rng = np.random.default_rng(seed)
    b = prompts * G
    prompt = [rng.integers(1, VOCAB, rng.integers(2, 12)).tolist() for _ in range(prompts)]
    lens = np.minimum(rng.geometric(0.12, b), 30)
    lens[list(empty)] = 0
    responses = [rng.integers(1, VOCAB, n).tolist() for n in lens]
    rewards = np.asarray(rewards, float)
    sdpo, teacher_idx = routing.route(rewards, G, method)
    return batching.StepRows.from_lists(
        prompt_ids=[prompt[r // G] for r in range(b)],
        response_ids=responses,
        rollout_logprobs=[(-rng.random(len(r)) * 3).tolist() for r in responses],
        advantages=np.asarray(advantages.group_advantages(rewards, G)),
        sdpo_rows=sdpo,
        teacher_rows=teacher_idx >= 0,
        teacher_prompt_ids={
            int(r): rng.integers(1, VOCAB, rng.integers(5, 15)).tolist()
            for r in np.flatnonzero(teacher_idx >= 0)
        },
    )


MIXED = [1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1]  # group 1: no success, no teacher


def _padded(rows, n_mini=1):
    return batching.build_train_batch(
        rows, num_minibatches=n_mini, micro_batch_rows=rows.num_rows // n_mini, pad_id=0
    )


def _step(cfg, batch):
    graphdef, state = fresh_state(cfg)
    new, metrics = learner.Learner(cfg, graphdef).train_step(state, batch)
    return jax.device_get(new), jax.device_get(metrics)


def _assert_same_step(want, m_want, got, m_got) -> None:
    """The packed step's new params, EMA teacher, optimizer state and metrics equal the
    padded step's."""
    assert_trees_close(want.params, got.params)
    assert_trees_close(want.teacher, got.teacher)
    assert_trees_close(want.opt_state, got.opt_state)
    assert set(m_want) == set(m_got)
    for k in m_want:
        np.testing.assert_allclose(m_got[k], m_want[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_rows_longer_than_a_stream_and_budgets_under_one_stream_are_refused():
    rows = mixed_rows(0, "srpo", MIXED)
    with pytest.raises(ValueError, match="train.micro_batch_tokens=40 .* train.pack_len=48"):
        packing.build_packed_batch(rows, num_minibatches=1, pack_len=48, micro_batch_tokens=40)
    with pytest.raises(ValueError, match="longer than train.pack_len=16"):
        packing.build_packed_batch(rows, num_minibatches=1, pack_len=16)


# ----------------------------------------------------------------------------- host layout


@pytest.mark.parametrize("budget", [0, PACK, 2 * PACK, 3 * PACK])
def test_streams_hold_every_row_once_as_it_was(budget):
    """Reading every segment back gives each row's prompt + response; its scored tokens are
    the positions that predict its response tokens, with those tokens and rollout log-probs;
    each teacher row's scored tokens point at the student tokens of the same row and index;
    streams fit the budget."""
    rows = mixed_rows(0, "srpo", MIXED, empty=(3, 9))
    b = packing.build_packed_batch(
        rows, num_minibatches=2, pack_len=PACK, micro_batch_tokens=budget
    )
    if budget:
        assert b.input_ids_KL.shape[-2] <= budget // PACK
    seen = []
    for i, m in np.ndindex(*b.input_ids_KL.shape[:2]):
        seg, ids = b.segment_ids_KL[i, m].reshape(-1), b.input_ids_KL[i, m].reshape(-1)
        pos = b.positions_KL[i, m].reshape(-1)
        on = b.response_mask_N[i, m] > 0
        assert np.array_equal(b.target_ids_N[i, m][on], ids[b.score_pos_N[i, m][on] + 1])
        for r in np.unique(b.row_ids_N[i, m][on]):
            row = i * 8 + int(r)
            mine = on & (b.row_ids_N[i, m] == r)
            at = b.score_pos_N[i, m][mine]
            n_p, n_r = rows.prompt_lens_B[row], rows.response_lens_B[row]
            span = np.arange(at[0] - n_p + 1, at[0] + n_r + 1)  # the row's whole segment
            assert (seg[span] == seg[at[0]]).all() and seg[at[0]] > 0
            assert seg[span[0] - 1] != seg[at[0]] or span[0] % PACK == 0
            assert np.array_equal(pos[span], np.arange(n_p + n_r))
            want = np.concatenate([rows.prompt_ids_BL[row, :n_p], rows.response_ids_BL[row, :n_r]])
            assert np.array_equal(ids[span], want)
            np.testing.assert_array_equal(
                b.rollout_logprobs_N[i, m][mine], rows.rollout_logprobs_BL[row, :n_r]
            )
            seen.append(row)
        # Teacher tokens predict the same tokens as the student tokens they point at.
        t_on = b.teacher_mask_Q[i, m] > 0
        t_ids = b.teacher_input_ids_JL[i, m].reshape(-1)
        src = b.teacher_src_Q[i, m][t_on]
        assert np.array_equal(t_ids[b.teacher_pos_Q[i, m][t_on] + 1], b.target_ids_N[i, m][src])
        assert (b.response_mask_N[i, m][src] > 0).all()
    assert sorted(seen) == np.flatnonzero(rows.response_lens_B > 0).tolist()
    n_teacher = int((rows.teacher_rows_B & (rows.response_lens_B > 0)) @ rows.response_lens_B)
    assert int(b.teacher_mask_Q.sum()) == n_teacher


# ----------------------------------------------------------------------------- the step


@pytest.mark.parametrize(
    "method,rewards,n_mini",
    [
        ("srpo", MIXED, 1),  # mixed lengths, empty responses, rows without a teacher
        ("sdpo", [1, 1, 0, 0] * 4, 1),  # every row routed
        ("grpo", MIXED, 1),  # nothing routed: no teacher stream
        ("advantage_mix", MIXED, 1),  # teacher log-probs scattered to the student positions
    ],
)
def test_packed_step_equals_padded_step(method, rewards, n_mini):
    """New params, EMA teacher, optimizer state and every metric."""
    cfg = lcfg(method)
    rows = mixed_rows(2, method, rewards, empty=(2, 7))
    want, m_want = _step(cfg, _padded(rows, n_mini))
    packed = packing.build_packed_batch(rows, num_minibatches=n_mini, pack_len=PACK)
    if method == "grpo":
        assert packed.teacher_input_ids_JL.shape[-2] == 0  # no teacher forward compiled
    got, m_got = _step(cfg, packed)
    _assert_same_step(want, m_want, got, m_got)


def test_token_budget_micro_batches_take_the_one_batch_gradient():
    """Several token-budget micro-batches (entropy-weight pre-pass) give the padded
    one-batch gradient, loss and denominator, with seq-mean-token-mean aggregation."""
    cfg = lcfg("srpo", loss_agg="seq-mean-token-mean")
    rows = mixed_rows(3, "srpo", MIXED, empty=(5,))
    graphdef, state = fresh_state(cfg)
    packed = packing.build_packed_batch(
        rows, num_minibatches=1, pack_len=PACK, micro_batch_tokens=2 * PACK
    )
    assert packed.num_microbatches > 1

    @jax.jit
    def grads(batch):
        mini = jax.tree.map(lambda x: x[0], batch)
        g, aux, denom = learner._mini_batch_grads(
            cfg, graphdef, state.params, state.teacher, mini, None
        )
        return g, aux["loss"], aux["sdpo/tokens"], denom

    g_want, loss_want, n_want, d_want = jax.device_get(grads(_padded(rows)))
    g_got, loss_got, n_got, d_got = jax.device_get(grads(packed))
    assert n_want > 0 and d_got == d_want and n_got == n_want
    np.testing.assert_allclose(loss_got, loss_want, rtol=1e-5)
    assert_trees_close(g_want, g_got, rtol=1e-4, atol=1e-7)


def test_pi_old_pre_pass_reads_the_packed_tokens():
    """Several updates per step (GRPO): pi_old of every token before the first update is the
    padded layout's, token for token. (The step after two AdamW updates is not compared:
    the second update divides each gradient by its own RMS, which turns float32 summation
    noise in near-zero gradients into visible parameter differences in either layout.)"""
    cfg = lcfg("grpo")
    rows = mixed_rows(5, "grpo", MIXED, empty=(4,))
    graphdef, state = fresh_state(cfg)
    old = jax.jit(lambda b: learner._old_logprobs(cfg, graphdef, state.params, b))
    padded = _padded(rows, 2)
    packed = packing.build_packed_batch(rows, num_minibatches=2, pack_len=PACK)
    want, got = np.asarray(old(padded)), np.asarray(old(packed))
    mask = packed.response_mask_N > 0
    rows_N = packed.row_ids_N + 8 * np.arange(2)[:, None, None]
    for row in range(rows.num_rows):
        n_r = rows.response_lens_B[row]
        mine = mask & (rows_N == row)
        assert mine.sum() == n_r
        np.testing.assert_allclose(
            got[:, :, 0][mine], want.reshape(16, -1)[row, :n_r], rtol=1e-5, atol=1e-6
        )


def test_a_segment_never_attends_to_another():
    """Changing one row's tokens moves that row's log-probs and no other row's, bit for bit."""
    cfg = lcfg("srpo")
    rows = mixed_rows(4, "srpo", MIXED)
    graphdef, state = fresh_state(cfg)
    logp = jax.jit(lambda mb: forward.student_logp(cfg, graphdef, state.params, mb)[0])
    first = jax.tree.map(
        lambda x: x[0, 0], packing.build_packed_batch(rows, num_minibatches=1, pack_len=PACK)
    )
    base = np.asarray(logp(first))[0]
    victim = 5
    ids = rows.response_ids_BL.copy()
    ids[victim] = (ids[victim] + 7) % (VOCAB - 1) + 1
    prompt = rows.prompt_ids_BL.copy()
    prompt[victim] = (prompt[victim] + 3) % (VOCAB - 1) + 1
    changed = batching.StepRows(
        **{**rows.__dict__, "response_ids_BL": ids, "prompt_ids_BL": prompt}
    )
    moved = np.asarray(
        logp(
            jax.tree.map(
                lambda x: x[0, 0],
                packing.build_packed_batch(changed, num_minibatches=1, pack_len=PACK),
            )
        )
    )[0]
    scored = first.response_mask_N > 0
    mine = scored & (first.row_ids_N == victim)
    assert (base[mine] != moved[mine]).all()
    np.testing.assert_array_equal(base[scored & ~mine], moved[scored & ~mine])


# ----------------------------------------------------------------------------- on a mesh

BATCH_AXES = PartitionSpec(None, None, ("data", "fsdp"))


def test_streams_and_tokens_round_up_to_the_batch_shards():
    """K, J, N and Q are multiples of batch_shards (a budget of three streams gives two), the
    extra streams and tokens are empty, and every row's tokens are still there."""
    rows = mixed_rows(0, "srpo", MIXED, empty=(3, 9))
    plain = packing.build_packed_batch(rows, num_minibatches=1, pack_len=PACK)
    b = packing.build_packed_batch(
        rows, num_minibatches=1, pack_len=PACK, micro_batch_tokens=3 * PACK, batch_shards=2
    )
    assert b.input_ids_KL.shape[-2] == 2
    for field in (b.input_ids_KL, b.teacher_input_ids_JL, b.score_pos_N, b.teacher_pos_Q):
        assert field.shape[2] % 2 == 0
    assert b.response_mask_N.sum() == plain.response_mask_N.sum()
    assert b.teacher_mask_Q.sum() == plain.teacher_mask_Q.sum()
    assert b.segment_ids_KL.astype(bool).sum() == plain.segment_ids_KL.astype(bool).sum()
    with pytest.raises(ValueError, match=r"micro_batch_tokens=48 .*pack_len=48 x 2 batch shards"):
        packing.build_packed_batch(
            rows, num_minibatches=1, pack_len=PACK, micro_batch_tokens=PACK, batch_shards=2
        )


def test_packed_step_on_a_data_fsdp_mesh_splits_every_field_and_equals_padded_step():
    """On data=4 x fsdp=2 the packed batch's arrays (streams, scored tokens, rows) are split
    over the batch axes, not replicated, and the step equals the one-device padded step."""
    cfg = lcfg("srpo")
    rows = mixed_rows(2, "srpo", MIXED, empty=(2, 7))
    want, m_want = _step(cfg, _padded(rows))
    mesh = make_mesh(MeshConfig(data=4, fsdp=2))
    packed = packing.build_packed_batch(rows, num_minibatches=1, pack_len=PACK, batch_shards=8)
    assert packed.teacher_input_ids_JL.shape[-2] > 0
    graphdef, state = fresh_state(cfg, mesh)
    lrn = learner.Learner(cfg, graphdef, mesh)
    placed = lrn.place_batch(packed)
    for f in dataclasses.fields(placed):
        assert getattr(placed, f.name).sharding.spec == BATCH_AXES, f.name
    got, m_got = jax.device_get(lrn.train_step(state, placed))
    _assert_same_step(want, m_want, got, m_got)


def test_packed_step_matmul_flops_per_device_split_eight_ways_on_data_8():
    """The compiled packed step's matmul FLOPs per device on data=8 are an eighth of the
    same batch's on one device (the streams, not a replicated copy, go to each device)."""
    cfg = lcfg("srpo")
    rows = mixed_rows(2, "srpo", MIXED, empty=(2, 7))
    packed = packing.build_packed_batch(rows, num_minibatches=1, pack_len=PACK, batch_shards=8)

    def flops(mesh):
        graphdef, state = fresh_state(cfg, mesh)
        fn = learner.jit_train_step(cfg, graphdef, state, packed, mesh)
        with jax.set_mesh(mesh):
            return dot_flops(fn.lower(state, packed).compile().as_text())

    one = flops(make_mesh(MeshConfig(), jax.devices()[:1]))
    assert 0 < flops(make_mesh(MeshConfig(data=8))) <= one / 8 * 1.05
