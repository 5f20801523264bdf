"""Host-side packing of one step's rollouts into token streams (train.packed).

The padded batch (batch.py) gives every row of a micro-batch the micro-batch's longest
prompt and response; with RL's wide spread of response lengths most of those positions are
padding. Here rows go end to end instead, into streams of `pack_len` tokens:

    stream k: [prompt_a | response_a | prompt_b | response_b | ... | tail pad]

with segment ids (row slot + 1, tail pad 0) so attention never crosses a row
(model.attention.CausalSegments) and positions that restart at 0 in every row (RoPE sees
each row exactly as in the padded layout). Only the positions that predict a response token
go through the loss head, so they are listed compactly, N of them: their flat stream
position, target token, response mask, rollout log-prob and row (row_ids index the
mini-batch's rows, so the per-row arrays advantages_B and sdpo_rows_B are the same in every
micro-batch of a mini-batch). The routed rows' teacher sequences [teacher prompt | response]
are packed the same way into J streams of their own, with their Q scored positions and, for
each, the index among the N student tokens of the same token (the fused kernel pairs them).

Token-budget micro-batches: rows go to streams first-fit-decreasing (FFD) by length, at
most micro_batch_tokens // pack_len streams per micro-batch (rounded down to a multiple of
batch_shards), in the fewest micro-batches that hold the fullest mini-batch; streams are
dealt to micro-batches so each packs about the same teacher tokens (_deal). The counts K,
J, N and Q are bucketed (bucket_length with STEPS_PER_OCTAVE steps per doubling; J and Q
are 0 when nothing needs the teacher, and then no teacher forward is compiled), which
bounds the compiled variants (docs/performance.md). Each count then rounds up to a
multiple of batch_shards (mesh data x fsdp): the learner splits these dimensions over the
batch axes only where they divide evenly (train_step.batch_shardings) and replicates them
otherwise, which would run every stream on every device. The extra streams and tokens are
empty (segment id 0, mask 0); the rounding is a function of the bucket, so it adds no
variants.

Stream length: with K and J fixed, the padding left is the room in the K (J) streams, up to
one stream's worth plus the rounding of the count. So each kind of stream is then
shortened to the step: to the shortest multiple of length_quantum(pack_len) (1/64 to 1/32
of pack_len) at which FFD still packs every micro-batch's rows into K (J) streams, never
longer than pack_len (_shortest). Student and teacher streams get their own length (L and
L_t). pack_len stays the memory plan's bound; the lengths add at most 64 values per kind to
the shapes, in practice a few (docs/performance.md).
Rows with an empty response have nothing to score and take no tokens.
"""

from __future__ import annotations

from typing import Any

import flax
import numpy as np

from srpo_jax.data.buckets import bucket_length
from srpo_jax.learner.batch import StepRows

# Stream and token counts round up to one of this many steps per doubling: at most 1/8
# padding from the rounding, 8 shapes per doubling of the step's size.
STEPS_PER_OCTAVE = 8


def _bucket(n: int, shards: int = 1) -> int:
    """n's bucket, rounded up to a multiple of `shards` (0 stays 0)."""
    if n == 0:
        return 0
    return -(-bucket_length(n, minimum=1, per_octave=STEPS_PER_OCTAVE) // shards) * shards


@flax.struct.dataclass
class PackedBatch:
    """One step's rows packed into streams, [n_mini, n_micro, ...] per field: K student
    streams of L tokens and J teacher streams of L_t (written _JL), N student and Q teacher
    scored tokens, b rows."""

    input_ids_KL: Any  # int32 tokens
    segment_ids_KL: Any  # int32: row slot + 1 within the stream, 0 for the tail padding
    positions_KL: Any  # int32: position within the row (RoPE restarts at 0)
    score_pos_N: Any  # int32: flat K * L index of a position that predicts a response token
    target_ids_N: Any  # int32: the response token it predicts
    response_mask_N: Any  # float32: 1 for a real token, 0 for the bucket's tail
    rollout_logprobs_N: Any  # float32: the engine's log-prob of that token
    row_ids_N: Any  # int32: the mini-batch row of that token (0 on the tail)
    advantages_B: Any  # float32 [b]
    sdpo_rows_B: Any  # bool [b]
    teacher_input_ids_JL: Any
    teacher_segment_ids_JL: Any
    teacher_positions_JL: Any
    teacher_pos_Q: Any  # int32: flat J * L_t index of a teacher position scoring a token
    teacher_src_Q: Any  # int32: the index among the N student tokens of the same token
    teacher_mask_Q: Any  # float32: 1 for a real token, 0 for the bucket's tail

    @property
    def num_minibatches(self) -> int:
        return self.input_ids_KL.shape[0]

    @property
    def num_microbatches(self) -> int:
        return self.input_ids_KL.shape[1]

    @property
    def num_rows(self) -> int:
        return self.advantages_B.shape[-1]


def _ffd(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit-decreasing: indices of `lengths` (> 0 each) into bins of `capacity`."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(np.flatnonzero(lengths > 0), key=lambda i: (-lengths[i], i)):
        n = int(lengths[i])
        for j, r in enumerate(room):
            if n <= r:
                bins[j].append(int(i))
                room[j] -= n
                break
        else:
            bins.append([int(i)])
            room.append(capacity - n)
    return bins


def _fill(streams, seqs_of_row, out, k_offset: int, score):
    """Writes rows into streams [k_offset + s]: ids, segment ids, positions; then
    score(row, k, start, n_r) for the n_r positions from `start` that predict the row's
    response tokens."""
    ids, seg, pos = out
    for s, stream in enumerate(streams):
        k, at = k_offset + s, 0
        for slot, row in enumerate(stream):
            prompt, response = seqs_of_row(row)
            n_p, n_r = len(prompt), len(response)
            ids[k, at : at + n_p] = prompt
            ids[k, at + n_p : at + n_p + n_r] = response
            seg[k, at : at + n_p + n_r] = slot + 1
            pos[k, at : at + n_p + n_r] = np.arange(n_p + n_r)
            score(row, k, at + n_p - 1, n_r)
            at += n_p + n_r


def _stream_lens(rows: StepRows):
    """(student, teacher) tokens per row: 0 for a row with nothing to score, and the
    teacher's 0 for a row not routed to it."""
    scored = rows.response_lens_B > 0
    student = np.where(scored, rows.prompt_lens_B + rows.response_lens_B, 0)
    routed = np.asarray(rows.teacher_rows_B, bool) & scored
    return student, np.where(routed, rows.teacher_prompt_lens_B + rows.response_lens_B, 0)


def _deal(streams, n_micro: int, teacher, student) -> list[list[list[int]]]:
    """Streams to n_micro micro-batches of at most ceil(streams / n_micro) each, longest
    processing time first: streams by decreasing teacher tokens (then student tokens), each
    to the micro-batch with the fewest teacher tokens (then student tokens, then index) that
    has room. Every micro-batch then packs about the same teacher tokens, and J, the teacher
    streams of the fullest, is not set by one micro-batch that drew the long teacher rows."""
    room = -(-len(streams) // n_micro)
    load = [(int(teacher[st].sum()), int(student[st].sum())) for st in streams]
    micro: list[list[list[int]]] = [[] for _ in range(n_micro)]
    held = [(0, 0)] * n_micro
    for s in sorted(range(len(streams)), key=lambda s: (-load[s][0], -load[s][1], s)):
        m = min((m for m in range(n_micro) if len(micro[m]) < room), key=lambda m: (held[m], m))
        micro[m].append(streams[s])
        held[m] = (held[m][0] + load[s][0], held[m][1] + load[s][1])
    return micro


def length_quantum(pack_len: int) -> int:
    """The step a stream's length moves in: the smallest power of two that is at least
    pack_len/64 (so under pack_len/32), and at least 8; 512 at pack_len 24576, a whole
    splash tile (model/splash.py)."""
    q = 8
    while q * 64 < pack_len:
        q *= 2
    return q


def _shortest(lens: np.ndarray, groups, count: int, pack_len: int) -> int:
    """The shortest multiple of length_quantum below pack_len, from the first that could hold
    the fullest group (its longest row, its tokens / count), at which first-fit-decreasing
    packs every group's rows into `count` streams; pack_len when none does."""
    q = length_quantum(pack_len)
    need = max(max(int(lens[g].max(initial=0)), -(-int(lens[g].sum()) // count)) for g in groups)
    length = -(-max(need, 1) // q) * q
    while length < pack_len and any(len(_ffd(lens[g], length)) > count for g in groups):
        length += q
    return min(length, pack_len)


def _layout(rows: StepRows, mini: int, n_mini: int, pack_len: int, cap: int, shards: int):
    """Per mini-batch: its student streams (lists of row indices) dealt over micro-batches
    (_deal); returns (per_micro[i][m] = streams, n_micro, K). cap is a multiple of
    shards, so K is too."""
    student, teacher = _stream_lens(rows)
    streams = [_ffd(student[i * mini : (i + 1) * mini], pack_len) for i in range(n_mini)]
    most = max(1, max(len(s) for s in streams))
    n_micro = -(-most // cap)
    k = min(_bucket(-(-most // n_micro), shards), cap)
    per_micro = [
        _deal([[i * mini + r for r in st] for st in s], n_micro, teacher, student)
        for i, s in enumerate(streams)
    ]
    return per_micro, n_micro, k


def _repack(lens: np.ndarray, groups, count: int, pack_len: int, at_pack_len):
    """(every group's streams at the _shortest length, that length). At pack_len the
    streams are `at_pack_len`'s, which hold at most `count` per group."""
    length = _shortest(lens, groups, count, pack_len) if count else pack_len
    if length == pack_len:
        return at_pack_len, pack_len
    return [[[int(g[x]) for x in b] for b in _ffd(lens[g], length)] for g in groups], length


def check_fits(rows: StepRows, pack_len: int) -> None:
    """ValueError if a row or a teacher row is longer than a stream, or a row with a
    response has no prompt token to predict its first token from."""
    lone = np.flatnonzero((rows.response_lens_B > 0) & (rows.prompt_lens_B == 0))
    if lone.size:
        raise ValueError(f"row {lone[0]} has a response but an empty prompt")
    student = rows.prompt_lens_B + rows.response_lens_B
    teacher = np.where(rows.teacher_rows_B, rows.teacher_prompt_lens_B + rows.response_lens_B, 0)
    for name, lens in (("prompt + response", student), ("teacher prompt + response", teacher)):
        if lens.size and int(lens.max()) > pack_len:
            r = int(np.argmax(lens))
            raise ValueError(
                f"row {r}: {name} is {int(lens[r])} tokens, longer than train.pack_len={pack_len}"
            )


def build_packed_batch(
    rows: StepRows,
    *,
    num_minibatches: int,
    pack_len: int,
    micro_batch_tokens: int = 0,
    pad_id: int = 0,
    min_teacher_streams: int = 1,
    batch_shards: int = 1,
) -> PackedBatch:
    """Packs `rows` into the learner's PackedBatch of numpy arrays (see the module doc).
    micro_batch_tokens 0: one micro-batch per mini-batch; batch_shards: the mesh's
    data x fsdp, which K, J, N and Q are multiples of."""
    n = rows.num_rows
    if num_minibatches < 1 or n % num_minibatches:
        raise ValueError(f"{n} rows cannot be split into {num_minibatches} mini-batches")
    if micro_batch_tokens and micro_batch_tokens < pack_len * batch_shards:
        raise ValueError(
            f"train.micro_batch_tokens={micro_batch_tokens} is less than "
            f"train.pack_len={pack_len} x {batch_shards} batch shards: a micro-batch must "
            "hold one stream per batch shard"
        )
    check_fits(rows, pack_len)
    mini = n // num_minibatches
    shards = batch_shards
    cap = micro_batch_tokens // pack_len if micro_batch_tokens else n + shards
    cap -= cap % shards  # >= shards: checked above
    per_micro, n_micro, k = _layout(rows, mini, num_minibatches, pack_len, cap, shards)
    # Each micro-batch's rows, then both kinds of stream shortened to the step (_shortest).
    groups = [
        np.asarray([r for st in micro for r in st], np.int64) for m in per_micro for micro in m
    ]
    j = _teacher_count(rows, groups, pack_len, min_teacher_streams, shards)
    student, teacher = _stream_lens(rows)
    dealt = [micro for m in per_micro for micro in m]
    streams, length = _repack(student, groups, k, pack_len, dealt)
    at_pack_len = [[[int(g[x]) for x in b] for b in _ffd(teacher[g], pack_len)] for g in groups]
    teacher_streams, teacher_length = _repack(teacher, groups, j, pack_len, at_pack_len)
    lead = (num_minibatches, n_micro)
    n, q = _scored_counts(rows, streams, teacher_streams, shards)
    out = _empty(lead, (k, j, n, q), mini, (length, teacher_length), pad_id)
    for g in range(len(groups)):
        i, m = divmod(g, n_micro)
        _fill_micro(rows, out, (i, m, i * mini), streams[g], teacher_streams[g])
    out["advantages_B"][:] = np.asarray(rows.advantages_B, np.float32).reshape(
        num_minibatches, 1, mini
    )
    out["sdpo_rows_B"][:] = np.asarray(rows.sdpo_rows_B, bool).reshape(num_minibatches, 1, mini)
    return PackedBatch(**out)


def _teacher_count(rows: StepRows, groups, pack_len: int, min_streams: int, shards: int) -> int:
    """J: the bucketed most teacher streams a micro-batch's routed rows FFD-pack into at
    pack_len (0 when no row needs the teacher)."""
    teacher = _stream_lens(rows)[1]
    most = max((len(_ffd(teacher[g], pack_len)) for g in groups), default=0)
    if not most:
        return 0
    return -(-max(_bucket(most), min_streams) // shards) * shards


def _scored_counts(rows: StepRows, streams, teacher_streams, shards) -> tuple[int, int]:
    """(N, Q): the bucketed most response tokens a micro-batch scores, student and teacher."""
    r = rows.response_lens_B
    n = max(sum(int(r[x]) for st in micro for x in st) for micro in streams)
    q = max(sum(int(r[x]) for st in micro for x in st) for micro in teacher_streams)
    return _bucket(max(n, 1), shards), _bucket(q, shards)


def _empty(lead, counts, b: int, lengths, pad_id: int) -> dict:
    k, j, n, q = counts
    length, teacher_length = lengths

    def full(shape, value, dtype):
        return np.full((*lead, *shape), value, dtype)

    return dict(
        input_ids_KL=full((k, length), pad_id, np.int32),
        segment_ids_KL=full((k, length), 0, np.int32),
        positions_KL=full((k, length), 0, np.int32),
        score_pos_N=full((n,), 0, np.int32),
        target_ids_N=full((n,), 0, np.int32),
        response_mask_N=full((n,), 0, np.float32),
        rollout_logprobs_N=full((n,), 0, np.float32),
        row_ids_N=full((n,), 0, np.int32),
        advantages_B=np.zeros((*lead, b), np.float32),
        sdpo_rows_B=np.zeros((*lead, b), bool),
        teacher_input_ids_JL=full((j, teacher_length), pad_id, np.int32),
        teacher_segment_ids_JL=full((j, teacher_length), 0, np.int32),
        teacher_positions_JL=full((j, teacher_length), 0, np.int32),
        teacher_pos_Q=full((q,), 0, np.int32),
        teacher_src_Q=full((q,), 0, np.int32),
        teacher_mask_Q=full((q,), 0, np.float32),
    )


def _fill_micro(rows: StepRows, out: dict, where, streams, teacher_streams) -> None:
    """One micro-batch's student and teacher streams into `out` at [i, m]."""
    i, m, first_row = where
    length = out["input_ids_KL"].shape[-1]
    teacher_length = out["teacher_input_ids_JL"].shape[-1]
    at = (i, m)
    student_at: dict[int, int] = {}  # row -> index of its first token among the N
    n_at = [0, 0]  # scored tokens written so far: student, teacher

    def prompt_response(row, teacher=False):
        ids = rows.teacher_prompt_ids_BL if teacher else rows.prompt_ids_BL
        lens = rows.teacher_prompt_lens_B if teacher else rows.prompt_lens_B
        n_r = int(rows.response_lens_B[row])
        return ids[row, : int(lens[row])], rows.response_ids_BL[row, :n_r]

    def score_student(row, k, start, n_r):
        span = slice(n_at[0], n_at[0] + n_r)
        out["score_pos_N"][at][span] = k * length + start + np.arange(n_r)
        out["target_ids_N"][at][span] = rows.response_ids_BL[row, :n_r]
        out["response_mask_N"][at][span] = 1.0
        out["rollout_logprobs_N"][at][span] = rows.rollout_logprobs_BL[row, :n_r]
        out["row_ids_N"][at][span] = row - first_row
        student_at[row] = n_at[0]
        n_at[0] += n_r

    def score_teacher(row, k, start, n_r):
        span = slice(n_at[1], n_at[1] + n_r)
        out["teacher_pos_Q"][at][span] = k * teacher_length + start + np.arange(n_r)
        out["teacher_src_Q"][at][span] = student_at[row] + np.arange(n_r)
        out["teacher_mask_Q"][at][span] = 1.0
        n_at[1] += n_r

    student = tuple(out[f][at] for f in ("input_ids_KL", "segment_ids_KL", "positions_KL"))
    _fill(streams, prompt_response, student, 0, score_student)
    teacher = tuple(
        out[f][at]
        for f in ("teacher_input_ids_JL", "teacher_segment_ids_JL", "teacher_positions_JL")
    )
    _fill(teacher_streams, lambda r: prompt_response(r, True), teacher, 0, score_teacher)
