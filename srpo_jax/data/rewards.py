"""Verifiable rewards (SPEC section 1): pure Python, never `eval`, never raising on output.

The response text is the completion decoded with special tokens skipped. Any malformed
model output scores 0.0; only a malformed *ground truth* (a data bug) raises.

MCQ (SciKnowEval and the synthetic demo task): the prediction is the text after the last
`<answer>` up to the next `</answer>` (or the end of the text when no closing tag
follows), stripped; with no `<answer>` at all the whole stripped response is the
prediction. Reward 1.0 iff it equals the ground-truth letter exactly (case-sensitive).

Tool use (ToolAlpaca): predicted actions are every `Action:\\s*(\\w+)` match; predicted
inputs are the `dict.update` merge, in order, of `json.loads` of every
`Action Input:\\s*({.*?})` match (DOTALL); blocks that do not parse as a JSON object are
skipped. Reward 1.0 iff the multiset of actions equals the ground truth's and the merged
inputs equal the merged ground-truth inputs exactly (JSON types matter: "1" != 1).

Known consequences of the SPEC regexes, kept on purpose for parity with the SDPO baselines:
- `{.*?}` is non-greedy, so it stops at the first `}`. An input with a nested object,
  e.g. `{"a": {"b": 1}}`, matches only `{"a": {"b": 1}` which is not valid JSON and is
  skipped; such rows can only be solved if the ground truth has no nested object either.
  Nested lists are fine (no braces).
- `\\w+` cannot match an action name that starts with a non-word character (one test row
  has the action `[Optional]updateUserProfile`), so such a row always scores 0.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
_ACTION_RE = re.compile(r"Action:\s*(\w+)")
_ACTION_INPUT_RE = re.compile(r"Action Input:\s*({.*?})", re.DOTALL)

RewardFn = Callable[[str, str], float]


def extract_mcq_answer(response_text: str) -> str:
    """Text after the last <answer> up to the next </answer>, stripped (whole text if no tag)."""
    tail = response_text.rsplit(ANSWER_OPEN, 1)[-1]
    return tail.split(ANSWER_CLOSE, 1)[0].strip()


def mcq_reward(response_text: str, answer: str) -> float:
    """1.0 iff the extracted answer equals the ground-truth letter exactly."""
    if not isinstance(response_text, str):
        return 0.0
    return 1.0 if extract_mcq_answer(response_text) == answer else 0.0


def extract_actions(text: str) -> list[str]:
    return _ACTION_RE.findall(text)


def _json_object(block: str) -> dict[str, Any] | None:
    """json.loads(block) if it is a JSON object, else None (never raises)."""
    try:
        value = json.loads(block)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def extract_action_inputs(text: str) -> dict[str, Any]:
    """Merge (dict.update, in order) of every Action Input block that parses to an object."""
    merged: dict[str, Any] = {}
    for block in _ACTION_INPUT_RE.findall(text):
        parsed = _json_object(block)
        if parsed is not None:
            merged.update(parsed)
    return merged


def parse_tooluse_answer(answer_json: str) -> tuple[list[str], dict[str, Any]]:
    """Ground truth -> (actions, merged inputs). Raises ValueError naming what is wrong."""
    try:
        items = json.loads(answer_json)
    except ValueError as e:
        raise ValueError(f"tool-use ground truth is not JSON: {answer_json[:120]!r}") from e
    if not isinstance(items, list):
        raise ValueError(f"tool-use ground truth must be a JSON list, got: {answer_json[:120]!r}")
    actions: list[str] = []
    merged: dict[str, Any] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "Action" not in item or "Action_Input" not in item:
            raise ValueError(f"tool-use ground truth item {i} lacks Action/Action_Input: {item!r}")
        actions.append(item["Action"])
        raw = item["Action_Input"]
        parsed = _json_object(raw) if isinstance(raw, str) else None
        if parsed is None:
            raise ValueError(
                f"tool-use ground truth item {i}: Action_Input is not a JSON object string: {raw!r}"
            )
        merged.update(parsed)
    return actions, merged


def tooluse_reward(response_text: str, answer_json: str) -> float:
    """1.0 iff action multisets match and merged inputs are exactly equal."""
    gt_actions, gt_inputs = parse_tooluse_answer(answer_json)
    if not isinstance(response_text, str):
        return 0.0
    pred_actions = extract_actions(response_text)
    pred_inputs = extract_action_inputs(response_text)
    # Equality of parsed JSON: dict/list/str compare structurally and "1" != 1. One caveat
    # of Python equality is kept as in the reference: 1 == 1.0 and True == 1.
    ok = Counter(pred_actions) == Counter(gt_actions) and pred_inputs == gt_inputs
    return 1.0 if ok else 0.0


REWARD_FNS: dict[str, RewardFn] = {"mcq": mcq_reward, "tooluse": tooluse_reward}


def reward_fn(kind: str) -> RewardFn:
    """The verifier for an Example.kind."""
    if kind not in REWARD_FNS:
        raise ValueError(f"no reward function for kind {kind!r}; known: {sorted(REWARD_FNS)}")
    return REWARD_FNS[kind]


def reward(kind: str, response_text: str, answer: str) -> float:
    """reward_fn(kind)(response_text, answer)."""
    return reward_fn(kind)(response_text, answer)


def answer_key(kind: str, response_text: str) -> Hashable | None:
    """A hashable normal form of the response's answer, for majority voting (maj@k).

    Two responses with equal keys get equal rewards. MCQ: the extracted answer text;
    tool use: (sorted actions, merged inputs as canonical JSON). None when the response
    holds no answer at all (empty extraction, or no action and no input).
    """
    if kind not in REWARD_FNS:
        raise ValueError(f"no answer key for kind {kind!r}; known: {sorted(REWARD_FNS)}")
    if not isinstance(response_text, str):
        return None
    if kind == "mcq":
        return extract_mcq_answer(response_text) or None
    actions = extract_actions(response_text)
    inputs = extract_action_inputs(response_text)
    if not actions and not inputs:
        return None
    # sort_keys: one spelling per dict, so equal keys imply equal inputs (equal rewards).
    return tuple(sorted(actions)), json.dumps(inputs, sort_keys=True)


def is_success(reward: float, success_threshold: float = 0.5) -> bool:
    """SPEC section 1: a rollout is correct iff r >= success_threshold."""
    return reward >= success_threshold
