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


def ragged(seqs: Sequence[Sequence[Any]], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of different lengths as (values start-aligned in [N, L] with zeros after each
    row's end, lengths [N]): the layout of the engine's Rollouts arrays."""
    lens_N = np.fromiter((len(s) for s in seqs), np.int32, len(seqs))
    out_NL = np.zeros((len(seqs), int(lens_N.max(initial=0))), dtype)
    if out_NL.size:
        # Row-major boolean assignment fills row 0's first len_0 cells, then row 1's, ...
        out_NL[np.arange(out_NL.shape[1]) < lens_N[:, None]] = np.concatenate(
            [np.asarray(s, dtype).reshape(-1) for s in seqs]
        )
    return out_NL, lens_N


@dataclasses.dataclass(frozen=True)
class StepRows:
    """Everything the learner needs about the B = prompts * group_size rows of one step.

    Token sequences are ragged arrays: values start-aligned in [B, L] (whatever follows a
    row's length is ignored) with their lengths [B], so the engine's Rollouts arrays enter
    as they are. Row order is prompt-major (row = prompt * group_size + sample) so that a
    mini-batch of whole prompts is a contiguous slice of rows. Rows that need no teacher
    have teacher prompt length 0.
    """

    prompt_ids_BL: np.ndarray  # int [B, Lp]: each row's prompt (repeated within a group)
    prompt_lens_B: np.ndarray
    response_ids_BL: np.ndarray  # int [B, Lr]: sampled tokens
    response_lens_B: np.ndarray
    rollout_logprobs_BL: np.ndarray  # float [B, Lr]: engine log-probs of those tokens
    advantages_B: np.ndarray  # float
    sdpo_rows_B: np.ndarray  # bool: rows whose tokens get the SDPO loss
    teacher_rows_B: np.ndarray  # bool: rows that need the teacher forward
    teacher_prompt_ids_BL: np.ndarray  # int [B, Lt]: teacher prompt (reprompt) ids
    teacher_prompt_lens_B: np.ndarray

    def __post_init__(self):
        b = self.num_rows
        for name in ("prompt", "response", "teacher_prompt"):
            ids, lens = getattr(self, f"{name}_ids_BL"), getattr(self, f"{name}_lens_B")
            if np.ndim(ids) != 2 or ids.shape[0] != b or np.shape(lens) != (b,):
                raise ValueError(
                    f"StepRows.{name}_ids_BL {np.shape(ids)} / {name}_lens_B {np.shape(lens)} "
                    f"do not hold {b} rows"
                )
            if b and not 0 <= np.min(lens) <= np.max(lens) <= ids.shape[1]:
                raise ValueError(f"StepRows.{name}_lens_B must lie in [0, {ids.shape[1]}]")
        if np.shape(self.rollout_logprobs_BL)[:1] != (b,) or (
            np.shape(self.rollout_logprobs_BL)[1] < int(np.max(self.response_lens_B, initial=0))
        ):
            raise ValueError(
                f"StepRows.rollout_logprobs_BL has shape {np.shape(self.rollout_logprobs_BL)}, "
                f"response_ids_BL {np.shape(self.response_ids_BL)}"
            )
        for name in ("advantages_B", "sdpo_rows_B", "teacher_rows_B"):
            if np.shape(getattr(self, name)) != (b,):
                raise ValueError(
                    f"StepRows.{name} has shape {np.shape(getattr(self, name))}, expected ({b},)"
                )
        lone = np.flatnonzero(
            np.asarray(self.teacher_rows_B, bool) & (self.teacher_prompt_lens_B == 0)
        )
        if lone.size:
            raise ValueError(f"row {lone[0]} needs the teacher but has no teacher prompt")

    @classmethod
    def from_lists(
        cls,
        *,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        rollout_logprobs: Sequence[Sequence[float]],
        advantages,
        sdpo_rows,
        teacher_rows,
        teacher_prompt_ids: dict[int, Sequence[int]],
    ) -> StepRows:
        """StepRows from per-row lists and a row -> teacher prompt dict (tests, tools)."""
        for r, (ids, lps) in enumerate(zip(response_ids, rollout_logprobs, strict=True)):
            if len(ids) != len(lps):
                raise ValueError(
                    f"row {r}: {len(ids)} response tokens but {len(lps)} rollout log-probs"
                )
        teacher_B = np.asarray(teacher_rows, bool)
        for r in np.flatnonzero(teacher_B):
            if int(r) not in teacher_prompt_ids:
                raise ValueError(f"row {r} needs the teacher but has no teacher prompt")
        teacher = [teacher_prompt_ids.get(r, ()) for r in range(len(prompt_ids))]
        p_ids, p_lens = ragged(prompt_ids)
        r_ids, r_lens = ragged(response_ids)
        t_ids, t_lens = ragged(teacher)
        return cls(
            prompt_ids_BL=p_ids,
            prompt_lens_B=p_lens,
            response_ids_BL=r_ids,
            response_lens_B=r_lens,
            rollout_logprobs_BL=ragged(rollout_logprobs, np.float32)[0],
            advantages_B=np.asarray(advantages),
            sdpo_rows_B=np.asarray(sdpo_rows, bool),
            teacher_rows_B=teacher_B,
            teacher_prompt_ids_BL=t_ids,
            teacher_prompt_lens_B=t_lens,
        )

    @property
    def num_rows(self) -> int:
        return int(np.shape(self.prompt_lens_B)[0])


def _left_align(x_BL, lens_B, length: int, pad) -> tuple[np.ndarray, np.ndarray]:
    """Start-aligned ragged rows placed at the end of `length` columns, `pad` before them:
    (values [B, length], 0/1 int32 mask)."""
    k_BT = np.arange(length) - (length - np.asarray(lens_B)[:, None])  # source column
    mask_BT = k_BT >= 0
    width = x_BL.shape[1]
    src_BT = np.take_along_axis(x_BL, np.clip(k_BT, 0, max(width - 1, 0)), axis=1) if width else 0
    return np.where(mask_BT, src_BT, pad), mask_BT.astype(np.int32)


def _right_align(x_BL, lens_B, length: int, pad) -> np.ndarray:
    """Start-aligned ragged rows cut or padded to `length` columns, `pad` after each end."""
    mask_BT = np.arange(length) < np.asarray(lens_B)[:, None]
    x_BT = np.zeros((x_BL.shape[0], length), x_BL.dtype)
    w = min(length, x_BL.shape[1])
    x_BT[:, :w] = x_BL[:, :w]
    return np.where(mask_BT, x_BT, pad)


def _pack_teacher(rows, resp_ids, resp_mask, lead, pad_id, buckets, min_teacher_rows):
    """The teacher rows, packed densely per micro-batch: (fields, M, Pt); buckets is
    bucket_length's keyword arguments (minimum, per_octave)."""
    num_minibatches, n_micro, b = lead
    r_len = resp_ids.shape[-1]
    teacher_B = np.asarray(rows.teacher_rows_B, bool)
    teacher = teacher_B.reshape(num_minibatches, n_micro, b)
    m_rows = min(bucket_rows(int(teacher.sum(axis=-1).max()), minimum=min_teacher_rows), b)
    if m_rows:
        tp_len = bucket_length(int(rows.teacher_prompt_lens_B[teacher_B].max()), **buckets)
    else:
        tp_len = buckets["minimum"]
    t_ids = np.full((num_minibatches, n_micro, m_rows, tp_len + r_len), pad_id, np.int32)
    t_mask = np.zeros_like(t_ids)
    t_src = np.zeros((num_minibatches, n_micro, m_rows), np.int32)
    t_valid = np.zeros((num_minibatches, n_micro, m_rows), bool)
    # Each teacher row's slot: its rank among the micro-batch's teacher rows, in row order.
    slot = np.cumsum(teacher, axis=-1) - 1
    i, j, local = np.nonzero(teacher)
    row = (i * n_micro + j) * b + local
    tp_ids, tp_mask = _left_align(
        rows.teacher_prompt_ids_BL[row], rows.teacher_prompt_lens_B[row], tp_len, pad_id
    )
    at = (i, j, slot[i, j, local])
    t_ids[at] = np.concatenate([tp_ids, resp_ids[row]], axis=1)
    t_mask[at] = np.concatenate([tp_mask, resp_mask[row].astype(np.int32)], axis=1)
    t_src[at] = local
    t_valid[at] = True
    fields = dict(
        teacher_input_ids_MT=t_ids,
        teacher_attention_mask_MT=t_mask,
        teacher_src_M=t_src,
        teacher_valid_M=t_valid,
    )
    return fields, m_rows, tp_len


def _pack_student(rows: StepRows, lead, pad_id: int, buckets: dict):
    """The student fields, [n_mini, n_micro, b, ...] each, and the bucketed P and R."""
    p_len = bucket_length(int(np.max(rows.prompt_lens_B)), **buckets)
    r_len = bucket_length(max(1, int(np.max(rows.response_lens_B))), **buckets)
    prompt_ids, prompt_mask = _left_align(rows.prompt_ids_BL, rows.prompt_lens_B, p_len, pad_id)
    resp_ids = _right_align(rows.response_ids_BL, rows.response_lens_B, r_len, pad_id)
    resp_ids = resp_ids.astype(np.int32)
    resp_mask = (np.arange(r_len) < rows.response_lens_B[:, None]).astype(np.float32)
    rollout_lp = _right_align(
        np.asarray(rows.rollout_logprobs_BL, np.float32), rows.response_lens_B, r_len, 0.0
    ).astype(np.float32)
    input_ids = np.concatenate([prompt_ids.astype(np.int32), resp_ids], axis=1)
    attn = np.concatenate([prompt_mask, resp_mask.astype(np.int32)], axis=1)

    def split(x):
        return x.reshape(tuple(lead) + x.shape[1:])

    fields = dict(
        input_ids_BS=split(input_ids),
        attention_mask_BS=split(attn),
        response_ids_BR=split(resp_ids),
        response_mask_BR=split(resp_mask),
        rollout_logprobs_BR=split(rollout_lp),
        advantages_B=split(np.asarray(rows.advantages_B, np.float32)),
        sdpo_rows_B=split(np.asarray(rows.sdpo_rows_B, bool)),
    )
    return fields, p_len, r_len


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
    lead = (num_minibatches, n_micro, b)
    student, p_len, r_len = _pack_student(rows, lead, pad_id, buckets)
    resp_ids, resp_mask = (
        student[k].reshape(n, r_len) for k in ("response_ids_BR", "response_mask_BR")
    )
    teacher, m_rows, tp_len = _pack_teacher(
        rows, resp_ids, resp_mask, lead, pad_id, buckets, min_teacher_rows
    )
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
