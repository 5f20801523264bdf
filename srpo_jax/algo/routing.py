"""Teacher information, routing masks and teacher prompts (SPEC sections 2 and 3).

Host-side Python/numpy: it runs between the rollout engine and the jitted learner, once per
step, on a few hundred rollouts.

Teacher information. Rollout i is correct (c_i) when r_i >= success_threshold. Its teacher
candidates are the correct siblings of its group other than itself; f_i = 1 iff one exists.
The demonstration is the FIRST candidate in a fixed order: plain index order by default (what
the SDPO code does; rollouts in a group are i.i.d. samples, so index order is already a random
order), or a per-group permutation drawn from `seed` when one is given.

Routing (SRPO 3.1), from the method record's switches (algo/methods.py): `distil` picks the
routed rollouts, and the teacher forward runs on those plus, with `teacher_advantage`, every
rollout that has a teacher:

    method         sdpo_mask m_i        teacher_index (teacher forward needed)
    grpo           0                    -1 everywhere
    srpo           (1 - c_i) f_i        for routed rollouts only
    srpo_no_dw     (1 - c_i) f_i        for routed rollouts only
    sdpo           f_i (correct too)    for every rollout with f_i = 1
    advantage_mix  0 (no routing)       for every rollout with f_i = 1 (A^SDPO needs pi_phi)

Teacher prompt: the student's chat with its last user message replaced by the reprompt of
SPEC 2, rendered with the chat template (generation prompt on, thinking off).

Over-long reprompts (> max_reprompt_tokens). The SDPO code right-truncates the rendered
prompt, which cuts the closing instruction and the assistant header, so the teacher would
score the response in a malformed context. Here the DEMONSTRATION is shortened instead,
keeping its END (the final answer and the conclusion of its reasoning, the part that carries
the privileged information) and the whole template around it. If the prompt does not fit even
with an empty demonstration, render_teacher_prompt returns None and the caller drops the
teacher with `drop_teachers`, which sends the rollout to the GRPO branch (srpo) or gives it
zero loss (sdpo). With prompts <= 2048 and responses <= 8192 tokens this is rare.
"""

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from srpo_jax.algo import methods as methods_lib
from srpo_jax.algo.advantages import check_grouping

_THINK_RE = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


class TeacherInfo(NamedTuple):
    """Per-rollout teacher information; all [B] numpy arrays."""

    correct: np.ndarray  # bool, c_i
    has_teacher: np.ndarray  # bool, f_i
    teacher_index: np.ndarray  # int32 batch index of the demonstration, -1 when f_i = 0


def _group_order(group_size: int, num_groups: int, seed: int | None) -> np.ndarray:
    """[num_groups, G] order in which siblings are scanned for a demonstration."""
    if seed is None:
        return np.tile(np.arange(group_size), (num_groups, 1))
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(group_size) for _ in range(num_groups)])


def teacher_info(
    rewards, group_size: int, success_threshold: float = 0.5, *, seed: int | None = None
) -> TeacherInfo:
    """c_i, f_i and the index of the first correct sibling other than i (SPEC 2)."""
    rewards_B = np.asarray(rewards, dtype=np.float64)
    check_grouping(rewards_B, group_size)
    correct_B = rewards_B >= success_threshold
    num_groups = rewards_B.shape[0] // group_size
    order_NG = _group_order(group_size, num_groups, seed)
    teacher_B = np.full(rewards_B.shape[0], -1, dtype=np.int32)
    for g in range(num_groups):
        base = g * group_size
        ordered = [base + int(j) for j in order_NG[g] if correct_B[base + int(j)]]
        for i in range(base, base + group_size):
            candidates = [j for j in ordered if j != i]
            if candidates:
                teacher_B[i] = candidates[0]
    return TeacherInfo(correct_B, teacher_B >= 0, teacher_B)


def route(
    rewards,
    group_size: int,
    method: str | methods_lib.Method,
    success_threshold: float = 0.5,
    *,
    seed: int | None = None,
    info: TeacherInfo | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sdpo_mask [B] bool, teacher_index [B] int32, -1 = no teacher forward) per method.

    See the module docstring for the table. `seed` only changes which correct sibling is the
    demonstration, never which rollouts are routed. `info`: this step's `teacher_info` when
    the caller already has it (computed once per step).
    """
    m = methods_lib.get(method)
    if info is None:
        info = teacher_info(rewards, group_size, success_threshold, seed=seed)
    if m.distil == "failed":
        sdpo_mask_B = ~info.correct & info.has_teacher
    elif m.distil == "all":
        sdpo_mask_B = info.has_teacher.copy()
    else:
        sdpo_mask_B = np.zeros_like(info.correct)
    # teacher_advantage needs pi_phi(y_t) for every rollout with a teacher, routed or not.
    needs_teacher_B = sdpo_mask_B | info.has_teacher if m.teacher_advantage else sdpo_mask_B
    return sdpo_mask_B, np.where(needs_teacher_B, info.teacher_index, -1).astype(np.int32)


def drop_teachers(sdpo_mask, teacher_index, keep) -> tuple[np.ndarray, np.ndarray]:
    """Remove the teacher of rollouts whose reprompt could not be built (keep[i] False)."""
    keep_B = np.asarray(keep, dtype=bool)
    sdpo_mask_B = np.asarray(sdpo_mask, dtype=bool) & keep_B
    teacher_B = np.where(keep_B, np.asarray(teacher_index), -1).astype(np.int32)
    return sdpo_mask_B, teacher_B


def strip_think(text: str) -> str:
    """Remove every `<think>...</think>` block and the whitespace after it."""
    return _THINK_RE.sub("", text)


def reprompt(question: str, demonstration: str) -> str:
    """The teacher's user message, exactly as SPEC 2 writes it."""
    return (
        f"{question}\nCorrect solution:\n\n{demonstration}\n\n"
        "Correctly solve the original question."
    )


def has_reprompt_layout(question: str) -> bool:
    """True when `question` already ends like a reprompt (a demonstration and the closing
    instruction): reprompting it would put a second demonstration after the first."""
    return "\nCorrect solution:\n\n" in question and question.endswith(
        "\n\nCorrectly solve the original question."
    )


def build_teacher_messages(
    messages: Sequence[dict], demonstration: str, *, remove_thinking: bool = True
) -> list[dict]:
    """The student's chat with its last user message replaced by the reprompt.

    The system message and any earlier turns are kept unchanged; the input is not mutated.
    """
    out = [dict(m) for m in messages]
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            question = out[i].get("content")
            if not isinstance(question, str):
                raise ValueError(f"user message content must be a string, got {question!r}")
            demo = strip_think(demonstration) if remove_thinking else demonstration
            out[i]["content"] = reprompt(question, demo)
            return out
    raise ValueError(f"messages contain no user message to reprompt: {list(messages)!r}")


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=False, tokenize=True
    )
    # transformers returns a list, or a BatchEncoding/dict when return_dict defaults on.
    if hasattr(out, "keys"):
        out = out["input_ids"]
    out = list(out)
    if out and isinstance(out[0], list | tuple | np.ndarray):
        out = list(out[0])
    return [int(t) for t in out]


def render_teacher_prompt(
    tokenizer,
    messages: Sequence[dict],
    demonstration: str,
    max_reprompt_tokens: int = 10240,
) -> np.ndarray | None:
    """Token ids [P] (int32) of the rendered teacher prompt, or None when it cannot fit.

    Over-long prompts keep the END of the demonstration (see the module docstring for why).
    """
    ids = _chat_ids(tokenizer, build_teacher_messages(messages, demonstration))
    if len(ids) <= max_reprompt_tokens:
        return np.asarray(ids, dtype=np.int32)
    demo = strip_think(demonstration)
    overhead = len(_chat_ids(tokenizer, build_teacher_messages(messages, "")))
    demo_ids = tokenizer.encode(demo, add_special_tokens=False)
    budget = min(max_reprompt_tokens - overhead, len(demo_ids))
    # Re-tokenising a cut demonstration inside the template can merge differently at the
    # edges, so shrink until the rendered prompt really fits.
    while budget > 0:
        cut = tokenizer.decode(demo_ids[len(demo_ids) - budget :]).lstrip("\ufffd")
        ids = _chat_ids(tokenizer, build_teacher_messages(messages, cut, remove_thinking=False))
        if len(ids) <= max_reprompt_tokens:
            return np.asarray(ids, dtype=np.int32)
        budget -= max(1, len(ids) - max_reprompt_tokens)
    return None
