"""Reward tests (SPEC section 1) on real rows of the shared SciKnowEval and ToolAlpaca splits."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srpo_jax.data import datasets, rewards


@pytest.fixture(scope="module")
def mcq_rows(packaged_data):
    return datasets.load_split(packaged_data, "chem", "test")[:20]


@pytest.fixture(scope="module")
def tool_rows(packaged_data):
    return {ex.idx: ex for ex in datasets.load_split(packaged_data, "tooluse", "test")}


def _wrong_letter(letter):
    return next(x for x in "ABCD" if x != letter)


def test_mcq_real_rows(mcq_rows):
    for ex in mcq_rows:
        good = f"<reasoning>\nIt is {ex.answer}.\n</reasoning>\n<answer>\n{ex.answer}\n</answer>"
        assert rewards.mcq_reward(good, ex.answer) == 1.0
        bad = f"<answer>\n{_wrong_letter(ex.answer)}\n</answer>"
        assert rewards.mcq_reward(bad, ex.answer) == 0.0
        # Case-sensitive and exact.
        assert rewards.mcq_reward(f"<answer>{ex.answer.lower()}</answer>", ex.answer) == 0.0
        assert rewards.mcq_reward(f"<answer>{ex.answer}.</answer>", ex.answer) == 0.0


def test_mcq_missing_tags_compares_whole_response():
    assert rewards.mcq_reward("  B \n", "B") == 1.0
    assert rewards.mcq_reward("The answer is B", "B") == 0.0
    assert rewards.mcq_reward("", "B") == 0.0


def test_mcq_last_answer_tag_wins():
    text = "<answer>\nA\n</answer> wait, no: <answer>\nC\n</answer>"
    assert rewards.mcq_reward(text, "C") == 1.0
    assert rewards.mcq_reward(text, "A") == 0.0
    # Unclosed last tag: everything after it, stripped (truncated responses).
    assert rewards.mcq_reward("<answer>\nA\n</answer><answer>\nD\n", "D") == 1.0
    # The template's own example letter in the reasoning does not count.
    assert rewards.mcq_reward("like <answer>A</answer> but <answer> B </answer>x", "B") == 1.0


def _response_for(gt_items, order=None):
    items = gt_items if order is None else [gt_items[i] for i in order]
    lines = []
    for item in items:
        lines += [
            "Thought: I should call the tool.",
            f"Action: {item['Action']}",
            f"Action Input: {item['Action_Input']}",
            "Observation: ok",
        ]
    return "\n".join(lines) + "\nFinal Answer: done"


def test_tooluse_correct_rows(tool_rows):
    scored = 0
    for ex in tool_rows.values():
        items = json.loads(ex.answer)
        nested = any(
            isinstance(v, dict) for it in items for v in json.loads(it["Action_Input"]).values()
        )
        if nested or any(not it["Action"].isidentifier() for it in items):
            continue  # see test_tooluse_nested_object_is_unreachable
        assert rewards.tooluse_reward(_response_for(items), ex.answer) == 1.0, ex.idx
        scored += 1
    assert scored >= 60


def test_tooluse_reordered_actions(tool_rows):
    ex = tool_rows[4087]  # convertCurrency then setPriceAlert, disjoint input keys
    items = json.loads(ex.answer)
    assert rewards.tooluse_reward(_response_for(items, order=[1, 0]), ex.answer) == 1.0
    # Overlapping keys: merge order matters (later blocks overwrite earlier ones).
    ex = tool_rows[4052]  # three searches differing only in "size"; the merge keeps "large"
    items = json.loads(ex.answer)
    assert rewards.tooluse_reward(_response_for(items, order=[2, 1, 0]), ex.answer) == 0.0
    assert rewards.tooluse_reward(_response_for(items, order=[1, 0, 2]), ex.answer) == 1.0


def test_tooluse_wrong_action_count_or_name(tool_rows):
    ex = tool_rows[4087]
    items = json.loads(ex.answer)
    assert rewards.tooluse_reward(_response_for(items[:1]), ex.answer) == 0.0
    assert rewards.tooluse_reward(_response_for(items + items[:1]), ex.answer) == 0.0
    renamed = [dict(items[0], Action="convertMoney"), items[1]]
    assert rewards.tooluse_reward(_response_for(renamed), ex.answer) == 0.0


def test_tooluse_argument_types_matter(tool_rows):
    ex = tool_rows[4087]  # "amount": 5000 (an int)
    text = _response_for(json.loads(ex.answer))
    assert '"amount": 5000' in text
    assert (
        rewards.tooluse_reward(text.replace('"amount": 5000', '"amount": "5000"'), ex.answer) == 0.0
    )
    assert (
        rewards.tooluse_reward(text.replace('"amount": 5000', '"amount": 5001'), ex.answer) == 0.0
    )


def test_tooluse_malformed_json_scores_zero(tool_rows):
    ex = tool_rows[4087]
    items = json.loads(ex.answer)
    text = _response_for(items)
    broken = text.replace('"amount": 5000', '"amount": 5000,')  # trailing comma: invalid JSON
    assert rewards.tooluse_reward(broken, ex.answer) == 0.0
    for junk in ["Action Input: {", "Action Input: {]}", "Action: \nAction Input: {'a': 1}", ""]:
        assert rewards.tooluse_reward(junk, ex.answer) == 0.0
    # An unparseable extra block is skipped, the rest still counts.
    assert rewards.tooluse_reward(text + "\nAction Input: {oops}", ex.answer) == 1.0


def test_tooluse_nested_object_is_unreachable(tool_rows):
    """`{.*?}` stops at the first `}`: a nested object never parses, so row 4072 scores 0
    even for a verbatim copy of the ground truth; a flat answer cannot match either."""
    ex = tool_rows[4072]
    items = json.loads(ex.answer)
    (block,) = rewards._ACTION_INPUT_RE.findall(_response_for(items))
    assert block.endswith('new_image.jpg"}') and not block.endswith("}}")
    assert rewards.extract_action_inputs(_response_for(items)) == {}
    assert rewards.tooluse_reward(_response_for(items), ex.answer) == 0.0
    # Nested lists are fine (row 4060 has "categories": [...]).
    ex = tool_rows[4060]
    assert rewards.tooluse_reward(_response_for(json.loads(ex.answer)), ex.answer) == 1.0


def test_reward_fn_dispatch():
    assert rewards.reward_fn("mcq") is rewards.mcq_reward
    assert rewards.reward_fn("tooluse") is rewards.tooluse_reward
    with pytest.raises(ValueError, match="'essay'"):
        rewards.reward_fn("essay")


def test_bad_ground_truth_raises_naming_it():
    with pytest.raises(ValueError, match="not JSON"):
        rewards.tooluse_reward("Action: x", "[{")
    with pytest.raises(ValueError, match="item 0"):
        rewards.tooluse_reward("Action: x", '[{"Action": "x"}]')


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list('{}[]":, \n\\abAction Input:0123<>/answer')), max_size=80)
)
def test_rewards_never_raise_on_garbage(text):
    gt = '[{"Action": "a", "Action_Input": "{\\"b\\": 1}"}]'
    assert rewards.tooluse_reward(text, gt) in (0.0, 1.0)
    assert rewards.mcq_reward(text, "A") in (0.0, 1.0)


def test_reward_and_answer_key(tool_rows):
    assert rewards.reward("mcq", "<answer> C </answer>", "C") == 1.0
    assert rewards.answer_key("mcq", "x <answer>\nC\n</answer>") == "C"
    assert rewards.answer_key("mcq", "<answer>\n\n</answer>") is None
    ex = tool_rows[4087]
    items = json.loads(ex.answer)
    k1 = rewards.answer_key("tooluse", _response_for(items))
    k2 = rewards.answer_key("tooluse", _response_for(items, order=[1, 0]))
    assert k1 == k2 and hash(k1) == hash(k2)
    assert rewards.reward("tooluse", _response_for(items), ex.answer) == 1.0
    assert rewards.answer_key("tooluse", "I do not know.") is None
    with pytest.raises(ValueError, match="'essay'"):
        rewards.answer_key("essay", "x")
