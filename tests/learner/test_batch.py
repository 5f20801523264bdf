"""Packing of one step's rollouts into the TrainBatch, against a per-row loop reference."""

import numpy as np
import pytest

from srpo_jax.data.buckets import bucket_length, bucket_rows
from srpo_jax.learner import batch as batching

PAD = 7


def _lists(seed: int, b: int, group: int):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, 50, rng.integers(1, 20)).tolist() for _ in range(b // group)]
    responses = [rng.integers(1, 50, rng.integers(0, 23)).tolist() for _ in range(b)]
    responses[1] = []  # an empty completion
    logprobs = [(-rng.random(len(r))).astype(np.float32).tolist() for r in responses]
    teacher = rng.random(b) < 0.4
    teacher_prompts = {
        int(r): rng.integers(1, 50, rng.integers(1, 30)).tolist() for r in np.flatnonzero(teacher)
    }
    return dict(
        prompt_ids=[prompts[r // group] for r in range(b)],
        response_ids=responses,
        rollout_logprobs=logprobs,
        advantages=rng.normal(size=b),
        sdpo_rows=teacher & (rng.random(b) < 0.7),
        teacher_rows=teacher,
        teacher_prompt_ids=teacher_prompts,
    )


def _reference(x, n_mini, micro, min_teacher_rows):
    """The batch written row by row with Python loops (the layout of batch.py's docstring)."""
    b = len(x["prompt_ids"])
    n_micro = b // n_mini // micro
    p_len = bucket_length(max(map(len, x["prompt_ids"])), minimum=16)
    r_len = bucket_length(max(1, max(map(len, x["response_ids"]))), minimum=16)
    ids = np.full((b, p_len + r_len), PAD, np.int32)
    attn = np.zeros((b, p_len + r_len), np.int32)
    resp = np.full((b, r_len), PAD, np.int32)
    rmask = np.zeros((b, r_len), np.float32)
    lp = np.zeros((b, r_len), np.float32)
    for r in range(b):
        p, y = x["prompt_ids"][r], x["response_ids"][r]
        for k, t in enumerate(p):
            ids[r, p_len - len(p) + k], attn[r, p_len - len(p) + k] = t, 1
        for k, t in enumerate(y):
            ids[r, p_len + k], attn[r, p_len + k] = t, 1
            resp[r, k], rmask[r, k], lp[r, k] = t, 1.0, x["rollout_logprobs"][r][k]
    lead = (n_mini, n_micro, micro)
    counts = [sum(x["teacher_rows"][c * micro : (c + 1) * micro]) for c in range(n_mini * n_micro)]
    m = min(bucket_rows(max(counts), minimum=min_teacher_rows), micro)
    tp = x["teacher_prompt_ids"]
    tp_len = bucket_length(max(map(len, tp.values())), minimum=16) if m else 16
    t_ids = np.full((*lead[:2], m, tp_len + r_len), PAD, np.int32)
    t_mask = np.zeros((*lead[:2], m, tp_len + r_len), np.int32)
    t_src = np.zeros((*lead[:2], m), np.int32)
    t_valid = np.zeros((*lead[:2], m), bool)
    for c in range(n_mini * n_micro):
        i, j, slot = c // n_micro, c % n_micro, 0
        for local in range(micro):
            r = c * micro + local
            if not x["teacher_rows"][r]:
                continue
            for k, t in enumerate(tp[r]):
                t_ids[i, j, slot, tp_len - len(tp[r]) + k] = t
                t_mask[i, j, slot, tp_len - len(tp[r]) + k] = 1
            t_ids[i, j, slot, tp_len:] = resp[r]
            t_mask[i, j, slot, tp_len:] = rmask[r]
            t_src[i, j, slot], t_valid[i, j, slot] = local, True
            slot += 1

    def split(a):
        return a.reshape(lead + a.shape[1:])

    return dict(
        input_ids_BS=split(ids),
        attention_mask_BS=split(attn),
        response_ids_BR=split(resp),
        response_mask_BR=split(rmask),
        rollout_logprobs_BR=split(lp),
        advantages_B=split(np.asarray(x["advantages"], np.float32)),
        sdpo_rows_B=split(np.asarray(x["sdpo_rows"], bool)),
        teacher_input_ids_MT=t_ids,
        teacher_attention_mask_MT=t_mask,
        teacher_src_M=t_src,
        teacher_valid_M=t_valid,
    )


def _assert_batch_equals(batch, want):
    for name, value in want.items():
        got = getattr(batch, name)
        assert got.dtype == value.dtype, name
        np.testing.assert_array_equal(got, value, err_msg=name)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_mini,micro", [(1, 16), (2, 4), (4, 2)])
def test_packing_equals_a_row_by_row_reference(seed, n_mini, micro):
    x = _lists(seed, 16, group=4)
    rows = batching.StepRows.from_lists(**x)
    batch = batching.build_train_batch(
        rows, num_minibatches=n_mini, micro_batch_rows=micro, pad_id=PAD, min_teacher_rows=1
    )
    _assert_batch_equals(batch, _reference(x, n_mini, micro, min_teacher_rows=1))


def test_engine_arrays_enter_as_they_are():
    """Rollouts arrays wider than the longest completion, with garbage past each length
    (as an engine may leave), pack exactly as the per-row lists do."""
    x = _lists(9, 8, group=2)
    rng = np.random.default_rng(0)
    r_ids, r_lens = batching.ragged(x["response_ids"])
    lp = batching.ragged(x["rollout_logprobs"], np.float32)[0]
    wide = r_ids.shape[1] + 40
    ids = rng.integers(1, 50, (8, wide)).astype(np.int32)
    lps = rng.normal(size=(8, wide)).astype(np.float32)
    ids[:, : r_ids.shape[1]] = np.where(np.arange(r_ids.shape[1]) < r_lens[:, None], r_ids, 3)
    lps[:, : lp.shape[1]] = np.where(np.arange(lp.shape[1]) < r_lens[:, None], lp, 9.0)
    lists = batching.StepRows.from_lists(**x)
    arrays = batching.StepRows(
        **{
            **lists.__dict__,
            "response_ids_BL": ids,
            "rollout_logprobs_BL": lps,
        }
    )
    kw = dict(num_minibatches=2, micro_batch_rows=2, pad_id=PAD)
    want = batching.build_train_batch(lists, **kw)
    _assert_batch_equals(batching.build_train_batch(arrays, **kw), want.__dict__)
    _assert_batch_equals(want, _reference(x, 2, 2, min_teacher_rows=1))


def test_a_teacher_row_without_a_teacher_prompt_is_refused():
    x = _lists(1, 8, group=2)
    row = int(np.flatnonzero(x["teacher_rows"])[0])
    del x["teacher_prompt_ids"][row]
    with pytest.raises(ValueError, match=f"row {row} needs the teacher"):
        batching.StepRows.from_lists(**x)
