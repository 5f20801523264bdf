"""Length mixes for the memory plan (`--lengths=worst|paper|FILE`) and the token layouts of
one step at a mix: padded (learner/batch.py) and packed (learner/packing.py).

A mix is one step's rows as lengths only: each row's prompt, response and teacher prompt
(0 = the row does not need the teacher forward). The plan turns it into StepRows of zero
tokens and builds both batches with the trainer's own settings (trainer/step.py), so the
figures it prints are the shapes the trainer would hand the learner:

- worst: every row at the config's limits (data.max_prompt_len, data.max_response_len)
  and routed with a teacher prompt of algo.max_reprompt_len: the padded layout is exactly
  the worst-case step the plan has always compiled.
- paper: the long-tail mix at the paper's limits (`paper_lengths`, also the long-tail mix
  of benchmarks/bench_packing.py), SRPO routing of rewards drawn at a 30% success rate.
- FILE: JSON Lines, one row per line, in step order (prompt-major, as the trainer's rows):
  `[prompt_len, response_len]`, `[prompt_len, response_len, teacher_prompt_len]`, or an
  object with those keys; teacher_prompt_len absent or 0 = not routed. Blank lines are
  skipped; the plan reads the first prompts_per_step x group_size rows.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from srpo_jax.algo import routing
from srpo_jax.learner import batch as batching

# The long-tail mix (see paper_lengths): its limits and the reward rate its routing draws.
PAPER_MAX_PROMPT, PAPER_MAX_RESPONSE = 2048, 8192
PAPER_SUCCESS_RATE = 0.3
TEMPLATE_TOKENS = 40  # reprompt template around the demonstration (SPEC 2), roughly
FILE_KEYS = ("prompt_len", "response_len", "teacher_prompt_len")


class MixError(ValueError):
    """A length mix that cannot be read; the message names the file and line."""


def paper_lengths(rng: np.random.Generator, prompts: int, group: int):
    """(prompt lengths [prompts], response lengths [prompts * group], teacher extra [B]).

    The paper's limits (prompts <= 2048, responses <= 8192 tokens). Prompts lognormal,
    median 300, sigma 0.8, clipped to [16, 2048]; responses lognormal, median 2000, sigma
    0.9, cut at 8192 (about 6% hit the cap, as truncated reasoning does); a teacher prompt
    is its prompt plus a sibling's response plus 40 template tokens. An assumed shape
    (right-skewed, a truncation mass at the cap), not a fit to published data: none could
    be fetched where this was written (docs/performance.md).
    """
    b = prompts * group
    prompt_lens = np.clip(rng.lognormal(np.log(300), 0.8, prompts), 16, PAPER_MAX_PROMPT)
    prompt_lens = prompt_lens.astype(int)
    response_lens = np.minimum(rng.lognormal(np.log(2000), 0.9, b), PAPER_MAX_RESPONSE)
    response_lens = np.maximum(response_lens.astype(int), 1)
    sibling = rng.permutation(response_lens)  # a correct sibling's response
    return prompt_lens, response_lens, sibling + TEMPLATE_TOKENS


@dataclasses.dataclass(frozen=True)
class LengthMix:
    """One step's rows as lengths: [B] each, teacher_prompt_lens_B 0 where not routed."""

    name: str
    prompt_lens_B: np.ndarray
    response_lens_B: np.ndarray
    teacher_prompt_lens_B: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.prompt_lens_B)

    def describe(self) -> str:
        p, r, t = self.prompt_lens_B, self.response_lens_B, self.teacher_prompt_lens_B
        return (
            f"length mix {self.name}: {self.num_rows} rows; prompt median {np.median(p):.0f} "
            f"max {p.max()}; response median {np.median(r):.0f} max {r.max()}, "
            f"{int((r == 0).sum())} empty; {int((t > 0).sum())} rows routed to the teacher"
        )

    def step_rows(self, pad_id: int = 0) -> batching.StepRows:
        """StepRows of `pad_id` tokens at these lengths (the layouts read lengths only)."""
        b = self.num_rows

        def ids(lens):
            return np.full((b, max(int(lens.max(initial=0)), 1)), pad_id, np.int32)

        return batching.StepRows(
            prompt_ids_BL=ids(self.prompt_lens_B),
            prompt_lens_B=self.prompt_lens_B,
            response_ids_BL=ids(self.response_lens_B),
            response_lens_B=self.response_lens_B,
            rollout_logprobs_BL=np.zeros(ids(self.response_lens_B).shape, np.float32),
            advantages_B=np.zeros(b, np.float32),
            sdpo_rows_B=self.teacher_prompt_lens_B > 0,
            teacher_rows_B=self.teacher_prompt_lens_B > 0,
            teacher_prompt_ids_BL=ids(self.teacher_prompt_lens_B),
            teacher_prompt_lens_B=self.teacher_prompt_lens_B,
        )


def _lens(*values) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(v, np.int64) for v in values)


def worst(cfg) -> LengthMix:
    """Every row at the config's limits, every row routed (the plan's worst case)."""
    b = cfg.train.prompts_per_step * cfg.algo.group_size
    full = [np.full(b, n) for n in (cfg.data.max_prompt_len, cfg.data.max_response_len)]
    return LengthMix("worst", *_lens(*full, np.full(b, cfg.algo.max_reprompt_len)))


def paper(cfg, seed: int = 0) -> LengthMix:
    """The long-tail mix (paper_lengths) for the config's step, SRPO-routed; limits are the
    config's where they are shorter, and a teacher prompt over algo.max_reprompt_len is
    shortened to it, as the trainer shortens the demonstration (algo/routing.py)."""
    g, n_prompts = cfg.algo.group_size, cfg.train.prompts_per_step
    p, r, extra = paper_lengths(np.random.default_rng(seed), n_prompts, g)
    p = np.minimum(np.repeat(p, g), cfg.data.max_prompt_len)
    r = np.minimum(r, cfg.data.max_response_len)
    rewards = (np.random.default_rng(seed + 1).random(n_prompts * g) < PAPER_SUCCESS_RATE) * 1.0
    _, teacher_idx = routing.route(rewards, g, "srpo")
    t = np.where(teacher_idx >= 0, np.minimum(p + extra, cfg.algo.max_reprompt_len), 0)
    return LengthMix("paper", *_lens(p, r, t))


def _row_of(value, where: str) -> tuple[int, int, int]:
    """(prompt, response, teacher prompt) lengths of one parsed line."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(FILE_KEYS))
        if unknown or not {"prompt_len", "response_len"} <= set(value):
            raise MixError(
                f"{where}: an object needs prompt_len and response_len (and optionally "
                f"teacher_prompt_len), got keys {sorted(value)}"
            )
        value = [value[k] for k in FILE_KEYS if k in value]
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise MixError(
            f"{where}: expected [prompt_len, response_len] or [prompt_len, response_len, "
            f"teacher_prompt_len], got {json.dumps(value)[:60]}"
        )
    for name, v in zip(FILE_KEYS, value, strict=False):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MixError(f"{where}: {name} must be an integer >= 0, got {json.dumps(v)}")
    return value[0], value[1], value[2] if len(value) == 3 else 0


def _check_limits(cfg, row: tuple[int, int, int], where: str) -> None:
    limits = (
        ("prompt_len", 1, cfg.data.max_prompt_len, "data.max_prompt_len"),
        ("response_len", 0, cfg.data.max_response_len, "data.max_response_len"),
        ("teacher_prompt_len", 0, cfg.algo.max_reprompt_len, "algo.max_reprompt_len"),
    )
    for value, (name, low, high, setting) in zip(row, limits, strict=True):
        if not low <= value <= high:
            raise MixError(f"{where}: {name}={value} is outside [{low}, {high}] ({setting})")


def from_file(cfg, path: str) -> LengthMix:
    """The first prompts_per_step x group_size rows of a JSON Lines file (module doc)."""
    b = cfg.train.prompts_per_step * cfg.algo.group_size
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MixError(f"--lengths={path}: cannot read it ({e.__class__.__name__}: {e})") from e
    rows = []
    for number, line in enumerate(lines, 1):
        if len(rows) == b:
            break
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise MixError(f"{where}: not JSON ({e.msg})") from e
        row = _row_of(value, where)
        _check_limits(cfg, row, where)
        rows.append(row)
    if len(rows) < b:
        raise MixError(
            f"{path}: {len(rows)} rows, but one step has {b} (train.prompts_per_step x "
            "algo.group_size)"
        )
    return LengthMix(path, *_lens(*np.asarray(rows, np.int64).T))


def resolve(cfg, spec: str) -> LengthMix:
    """--lengths: worst, paper or a file name."""
    if spec == "worst":
        return worst(cfg)
    if spec == "paper":
        return paper(cfg)
    return from_file(cfg, spec)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Token slots of one step's batch: per micro-batch, the student's and the teacher's
    [rows or streams, tokens]; padding is the fraction of the step's slots that hold no
    token of a scored row (a row with an empty response is all padding)."""

    name: str
    micro_batches: int
    student_shape: tuple[int, int]
    teacher_shape: tuple[int, int]
    padding: float

    @property
    def tokens(self) -> int:
        """Token slots per micro-batch, student and teacher together."""
        return int(np.prod(self.student_shape) + np.prod(self.teacher_shape))


def real_tokens(rows: batching.StepRows) -> int:
    """Tokens of the scored rows: prompt + response of each row with a response, plus the
    teacher prompt + response of each such row routed to the teacher."""
    scored = rows.response_lens_B > 0
    teacher = np.asarray(rows.teacher_rows_B, bool) & scored
    student = (rows.prompt_lens_B + rows.response_lens_B)[scored].sum()
    return int(student + (rows.teacher_prompt_lens_B + rows.response_lens_B)[teacher].sum())


def layout_of(name: str, batch, rows: batching.StepRows) -> Layout:
    """The Layout of a built TrainBatch or PackedBatch of `rows`."""
    if name == "packed":
        student, teacher = batch.input_ids_KL, batch.teacher_input_ids_JL
    else:
        student, teacher = batch.input_ids_BS, batch.teacher_input_ids_MT
    lead = student.shape[:2]
    slots = student.size + teacher.size
    return Layout(
        name=name,
        micro_batches=int(np.prod(lead)),
        student_shape=tuple(student.shape[2:]),
        teacher_shape=tuple(teacher.shape[2:]),
        padding=1.0 - real_tokens(rows) / slots,
    )


def table(layouts: list[Layout], labels: list[str]) -> str:
    """The layouts side by side, one line each under its label."""
    lines = [
        f"{'layout':<22} {'micro':>5}  {'student [rows|streams, len]':>27}  "
        f"{'teacher':>13}  {'tokens/micro':>12}  padding"
    ]
    for label, lay in zip(labels, layouts, strict=True):
        lines.append(
            f"{label:<22} {lay.micro_batches:>5}  {str(lay.student_shape):>27}  "
            f"{str(lay.teacher_shape):>13}  {lay.tokens:>12}  {lay.padding:7.1%}"
        )
    return "\n".join(lines)
