"""Host-side packing of one training step's rollouts into static-shape device arrays.

The learner's train step is jitted once per shape bucket, so everything here pads to
buckets: prompt length P, response length R, teacher-prompt length Pt and the number of
teacher rows per micro-batch M. Rows are laid out as

    [n_mini, n_micro, b, ...]     n_mini optimizer updates per step (SPEC 10),
                                  n_micro gradient-accumulation chunks per update

and each student sequence is [prompt left-padded to P | response right-padded to R], so
the hidden state at position P-1+t predicts response token t (the same holds for the
teacher sequences with Pt in place of P).

Teacher rows are packed densely: only the rollouts that need the teacher forward (the
routed rollouts of SPEC 3, or every rollout with a teacher for `sdpo` and
`advantage_mix`) get a row, so the teacher's compute falls with the routed fraction. A
step where nothing is routed gets M = 0 and the learner compiles no teacher forward.

The batch is a `TrainBatch` (a flax.struct pytree): every field is [n_mini, n_micro, ...]
with its per-micro-batch dimensions in its name's suffix (b = B rows, S = P + R student
positions, R response tokens, M teacher rows, T = Pt + R teacher positions).
`TrainBatch.abstract` gives the same structure as ShapeDtypeStructs for a shape, which the
memory plan compiles against, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax
import jax
import numpy as np

from srpo_jax.data.buckets import bucket_length, bucket_rows

# field -> (per-micro-batch dims, dtype); b rows, S = P + R, R, M teacher rows, T = Pt + R.
_FIELDS = {
    "input_ids_BS": (("b", "S"), np.int32),
    "attention_mask_BS": (("b", "S"), np.int32),
    "response_ids_BR": (("b", "R"), np.int32),
    "response_mask_BR": (("b", "R"), np.float32),
    "rollout_logprobs_BR": (("b", "R"), np.float32),
    "advantages_B": (("b",), np.float32),
    "sdpo_rows_B": (("b",), np.bool_),  # rows whose tokens get the SDPO loss
    "teacher_input_ids_MT": (("M", "T"), np.int32),
    "teacher_attention_mask_MT": (("M", "T"), np.int32),
    "teacher_src_M": (("M",), np.int32),  # the micro-batch row each teacher row scores
    "teacher_valid_M": (("M",), np.bool_),
}


@flax.struct.dataclass
class TrainBatch:
    """One step's packed rollouts, [n_mini, n_micro, ...] per field (see _FIELDS)."""

    input_ids_BS: Any
    attention_mask_BS: Any
    response_ids_BR: Any
    response_mask_BR: Any
    rollout_logprobs_BR: Any
    advantages_B: Any
    sdpo_rows_B: Any
    teacher_input_ids_MT: Any
    teacher_attention_mask_MT: Any
    teacher_src_M: Any
    teacher_valid_M: Any

    @classmethod
    def abstract(
        cls,
        *,
        n_mini: int,
        n_micro: int,
        rows: int,
        prompt_len: int,
        response_len: int,
        teacher_rows: int,
        teacher_prompt_len: int,
    ) -> TrainBatch:
        """The batch of this shape as jax.ShapeDtypeStructs (nothing allocated)."""
        size = {
            "b": rows,
            "S": prompt_len + response_len,
            "R": response_len,
            "M": teacher_rows,
            "T": teacher_prompt_len + response_len,
        }
        return cls(
            **{
                name: jax.ShapeDtypeStruct((n_mini, n_micro, *(size[d] for d in dims)), dtype)
                for name, (dims, dtype) in _FIELDS.items()
            }
        )

    @property
    def num_minibatches(self) -> int:
        return self.input_ids_BS.shape[0]

    @property
    def num_microbatches(self) -> int:
        return self.input_ids_BS.shape[1]


@dataclasses.dataclass(frozen=True)
class StepRows:
    """Everything the learner needs about the B = prompts * group_size rows of one step.

    Row order is prompt-major (row = prompt * group_size + sample) so that a mini-batch of
    whole prompts is a contiguous slice of rows.
    """

    prompt_ids: Sequence[Sequence[int]]  # per row (repeated within a group)
    response_ids: Sequence[Sequence[int]]  # per row, sampled tokens
    rollout_logprobs: Sequence[Sequence[float]]  # per row, engine log-probs of those tokens
    advantages: np.ndarray  # float [B]
    sdpo_rows: np.ndarray  # bool [B]: rows whose tokens get the SDPO loss
    teacher_rows: np.ndarray  # bool [B]: rows that need the teacher forward
    teacher_prompt_ids: dict[int, Sequence[int]]  # row -> teacher prompt (reprompt) ids

    def __post_init__(self):
        b = len(self.prompt_ids)
        for name in ("response_ids", "rollout_logprobs"):
            if len(getattr(self, name)) != b:
                raise ValueError(
                    f"StepRows.{name} has {len(getattr(self, name))} rows, expected {b}"
                )
        for name in ("advantages", "sdpo_rows", "teacher_rows"):
            if np.shape(getattr(self, name)) != (b,):
                raise ValueError(
                    f"StepRows.{name} has shape {np.shape(getattr(self, name))}, expected ({b},)"
                )
        for r in np.flatnonzero(self.teacher_rows):
            if int(r) not in self.teacher_prompt_ids:
                raise ValueError(f"row {r} needs the teacher but has no teacher prompt")
        for r, (ids, lps) in enumerate(zip(self.response_ids, self.rollout_logprobs, strict=True)):
            if len(ids) != len(lps):
                raise ValueError(
                    f"row {r}: {len(ids)} response tokens but {len(lps)} rollout log-probs"
                )

    @property
    def num_rows(self) -> int:
        return len(self.prompt_ids)


def _left_pad(
    seqs: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, length - len(s) :] = s
            mask[i, length - len(s) :] = 1
    return ids, mask


def _right_pad(seqs: Sequence[Sequence[float]], length: int, pad, dtype) -> np.ndarray:
    out = np.full((len(seqs), length), pad, dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def _pack_teacher(rows, resp_ids, resp_mask, lead, pad_id, buckets, min_teacher_rows):
    """The teacher rows, packed densely per micro-batch: (fields, M, Pt); buckets is
    bucket_length's keyword arguments (minimum, per_octave)."""
    num_minibatches, n_micro, b = lead
    r_len = resp_ids.shape[-1]
    teacher = np.asarray(rows.teacher_rows, bool).reshape(num_minibatches, n_micro, b)
    m_rows = min(bucket_rows(int(teacher.sum(axis=-1).max()), minimum=min_teacher_rows), b)
    if m_rows:
        tp_len = bucket_length(
            max(len(rows.teacher_prompt_ids[int(r)]) for r in np.flatnonzero(rows.teacher_rows)),
            **buckets,
        )
    else:
        tp_len = buckets["minimum"]
    t_ids = np.full((num_minibatches, n_micro, m_rows, tp_len + r_len), pad_id, np.int32)
    t_mask = np.zeros_like(t_ids)
    t_src = np.zeros((num_minibatches, n_micro, m_rows), np.int32)
    t_valid = np.zeros((num_minibatches, n_micro, m_rows), bool)
    for i in range(num_minibatches):
        for j in range(n_micro):
            for slot, local in enumerate(np.flatnonzero(teacher[i, j])):
                row = (i * n_micro + j) * b + int(local)
                tp = rows.teacher_prompt_ids[row]
                ids, mask = _left_pad([tp], tp_len, pad_id)
                t_ids[i, j, slot, :tp_len] = ids[0]
                t_mask[i, j, slot, :tp_len] = mask[0]
                t_ids[i, j, slot, tp_len:] = resp_ids[row]
                t_mask[i, j, slot, tp_len:] = resp_mask[row].astype(np.int32)
                t_src[i, j, slot] = local
                t_valid[i, j, slot] = True
    fields = dict(
        teacher_input_ids_MT=t_ids,
        teacher_attention_mask_MT=t_mask,
        teacher_src_M=t_src,
        teacher_valid_M=t_valid,
    )
    return fields, m_rows, tp_len


def build_train_batch(
    rows: StepRows,
    *,
    num_minibatches: int,
    micro_batch_rows: int,
    pad_id: int,
    min_bucket: int = 16,
    buckets_per_octave: int = 1,
    min_teacher_rows: int = 1,
) -> TrainBatch:
    """Packs `rows` into the learner's TrainBatch of numpy arrays, [n_mini, n_micro, ...].

    P, R and Pt are bucketed by bucket_length(minimum=min_bucket, per_octave=
    buckets_per_octave), M by bucket_rows; teacher_src_M indexes the micro-batch's rows. The result
    has exactly the structure of `TrainBatch.abstract` for those sizes (checked).
    """
    n = rows.num_rows
    if num_minibatches < 1 or n % num_minibatches:
        raise ValueError(f"{n} rows cannot be split into {num_minibatches} mini-batches")
    mini = n // num_minibatches
    if micro_batch_rows < 1 or mini % micro_batch_rows:
        raise ValueError(
            f"mini-batch of {mini} rows is not a multiple of micro_batch_rows={micro_batch_rows}"
        )
    n_micro = mini // micro_batch_rows
    b = micro_batch_rows

    buckets = dict(minimum=min_bucket, per_octave=buckets_per_octave)
    p_len = bucket_length(max(len(p) for p in rows.prompt_ids), **buckets)
    r_len = bucket_length(max(1, max(len(r) for r in rows.response_ids)), **buckets)
    prompt_ids, prompt_mask = _left_pad(rows.prompt_ids, p_len, pad_id)
    resp_ids = _right_pad(rows.response_ids, r_len, pad_id, np.int32)
    resp_mask = _right_pad([[1] * len(r) for r in rows.response_ids], r_len, 0, np.float32)
    rollout_lp = _right_pad(rows.rollout_logprobs, r_len, 0.0, np.float32)
    input_ids = np.concatenate([prompt_ids, resp_ids], axis=1)
    attn = np.concatenate([prompt_mask, resp_mask.astype(np.int32)], axis=1)

    def split(x):
        return x.reshape((num_minibatches, n_micro, b) + x.shape[1:])

    student = dict(
        input_ids_BS=split(input_ids),
        attention_mask_BS=split(attn),
        response_ids_BR=split(resp_ids),
        response_mask_BR=split(resp_mask),
        rollout_logprobs_BR=split(rollout_lp),
        advantages_B=split(np.asarray(rows.advantages, np.float32)),
        sdpo_rows_B=split(np.asarray(rows.sdpo_rows, bool)),
    )

    teacher, m_rows, tp_len = _pack_teacher(
        rows, resp_ids, resp_mask, (num_minibatches, n_micro, b), pad_id, buckets,
        min_teacher_rows,
    )  # fmt: skip
    batch = TrainBatch(**student, **teacher)
    want = TrainBatch.abstract(
        n_mini=num_minibatches,
        n_micro=n_micro,
        rows=b,
        prompt_len=p_len,
        response_len=r_len,
        teacher_rows=m_rows,
        teacher_prompt_len=tp_len,
    )
    got = jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), batch)
    assert got == jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), want), (got, want)
    return batch
