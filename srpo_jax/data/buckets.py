"""Length buckets: the static shapes that rows are padded to.

The learner's train step and the embedded sampler are jitted once per shape, so every
variable length (prompt, response, teacher prompt, teacher rows) is rounded up to a bucket.
Both sides use these functions, which is why they live with the data rather than in the
learner: rollout/ pads to the same buckets without importing learner/.
"""

from __future__ import annotations


def bucket_length(n: int, *, minimum: int = 16, per_octave: int = 1) -> int:
    """Smallest bucket >= max(n, minimum). Buckets split each doubling [s, 2s) of `minimum`'s
    powers of two into `per_octave` equal steps: 1 gives powers of two (fewest shapes, up to
    2x padding), 4 gives 16, 20, 24, 28, 32, 40, ... (padding under 25%, up to 4x the shapes).
    Below per_octave tokens a doubling has fewer steps (1, 2, 4, 8 for per_octave=8)."""
    if per_octave < 1:
        raise ValueError(f"bucket_length: per_octave must be >= 1, got {per_octave}")
    size = minimum
    while 2 * size <= n:
        size *= 2
    if n <= size:
        return size
    step = max(size // per_octave, 1)
    steps_up = -(-(n - size) // step)
    return size + steps_up * step if steps_up < min(per_octave, size) else 2 * size


def worst_case_lengths(cfg) -> tuple[int, int, int]:
    """(P, R, Pt): the buckets of a run config's longest prompt, response and teacher prompt
    (data.max_prompt_len, data.max_response_len, algo.max_reprompt_len), as the trainer
    pads them (data.length_buckets_per_octave). The plans compile this shape."""
    per_octave = cfg.data.length_buckets_per_octave
    return tuple(
        bucket_length(n, per_octave=per_octave)
        for n in (cfg.data.max_prompt_len, cfg.data.max_response_len, cfg.algo.max_reprompt_len)
    )


def bucket_rows(n: int, *, minimum: int = 1) -> int:
    """Teacher rows per micro-batch: 0 stays 0 (no teacher forward compiled), else a power of 2
    >= minimum (a larger minimum means fewer distinct shapes, hence fewer compiles)."""
    if n == 0:
        return 0
    return bucket_length(n, minimum=minimum)
