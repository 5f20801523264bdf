"""Teacher information, routing masks and teacher prompts (SPEC 2-3) against hand-made cases.

The decision table of SRPO 3.1 row by row, the group edge cases (lone success, all success,
all fail), a loop reference on random groups, and the exact teacher prompt string of a real
SciKnowEval row written out by hand in the Qwen3 chat format.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srpo_jax.algo import methods, routing


def _route_all(rewards, g, **kw):
    return {m: routing.route(rewards, g, m, **kw) for m in methods.names()}


def test_decision_table_rows():
    # group 0: two successes + two failures; group 1: lone success; group 2: all fail.
    rewards = [1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    out = _route_all(rewards, 4)
    mask, teacher = out["srpo"]
    # correct with a correct sibling -> GRPO, no teacher forward
    assert not mask[0] and teacher[0] == -1
    # wrong with a correct sibling -> SDPO, demonstration = first correct sibling
    assert mask[1] and teacher[1] == 0 and mask[3] and teacher[3] == 0
    # correct alone -> GRPO
    assert not mask[5] and teacher[5] == -1
    # its failing siblings are taught by it
    assert all(mask[i] and teacher[i] == 5 for i in (4, 6, 7))
    # wrong with no correct sibling (all fail) -> GRPO
    assert not mask[8:].any() and (teacher[8:] == -1).all()
    np.testing.assert_array_equal(out["srpo_no_dw"][0], mask)
    np.testing.assert_array_equal(out["srpo_no_dw"][1], teacher)


def test_sdpo_masks_correct_rollouts_with_another_correct_sibling():
    rewards = [1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    mask, teacher = routing.route(rewards, 4, "sdpo")
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    assert teacher[0] == 2 and teacher[2] == 0  # never its own response
    assert teacher[5] == -1  # the lone success has nobody to learn from


def test_all_success_group():
    rewards = [1.0] * 4
    srpo_mask, srpo_teacher = routing.route(rewards, 4, "srpo")
    assert not srpo_mask.any() and (srpo_teacher == -1).all()
    sdpo_mask, sdpo_teacher = routing.route(rewards, 4, "sdpo")
    assert sdpo_mask.all()
    np.testing.assert_array_equal(sdpo_teacher, [1, 0, 0, 0])


def test_all_fail_and_grpo_and_advantage_mix():
    out = _route_all([0, 0, 0, 1, 0, 0], 3)
    for m in methods.names():
        assert not out[m][0][:3].any() and (out[m][1][:3] == -1).all(), m
    assert not out["grpo"][0].any() and (out["grpo"][1] == -1).all()
    mix_mask, mix_teacher = out["advantage_mix"]
    assert not mix_mask.any()  # no routing: every rollout stays in the GRPO surrogate
    np.testing.assert_array_equal(mix_teacher, [-1, -1, -1, -1, 3, 3])


def test_threshold_and_non_binary_rewards():
    mask, teacher = routing.route([0.7, 0.4, 0.5, 0.49], 4, "srpo", success_threshold=0.5)
    np.testing.assert_array_equal(mask, [0, 1, 0, 1])
    np.testing.assert_array_equal(teacher, [-1, 0, -1, 0])


def _reference(rewards, g, threshold, order):
    """Loop reference of SPEC 2-3: (correct, has_teacher, teacher index)."""
    n = len(rewards)
    correct = [r >= threshold for r in rewards]
    teacher = [-1] * n
    for i in range(n):
        base = (i // g) * g
        for j in order[i // g]:
            if base + j != i and correct[base + j]:
                teacher[i] = base + j
                break
    return np.array(correct), np.array(teacher) >= 0, np.array(teacher)


@settings(max_examples=25, deadline=None)
@given(
    g=st.integers(1, 6),
    groups=st.integers(1, 4),
    data=st.data(),
    seed=st.one_of(st.none(), st.integers(0, 1000)),
)
def test_routing_matches_loop_reference(g, groups, data, seed):
    rewards = data.draw(
        st.lists(st.sampled_from([0.0, 0.3, 0.5, 1.0]), min_size=g * groups, max_size=g * groups)
    )
    if seed is None:
        order = [list(range(g))] * groups
    else:
        rng = np.random.default_rng(seed)
        order = [list(rng.permutation(g)) for _ in range(groups)]
    correct, has_t, teacher = _reference(rewards, g, 0.5, order)
    info = routing.teacher_info(rewards, g, 0.5, seed=seed)
    np.testing.assert_array_equal(info.correct, correct)
    np.testing.assert_array_equal(info.has_teacher, has_t)
    np.testing.assert_array_equal(info.teacher_index, teacher)
    expected = {
        "grpo": (np.zeros(len(rewards), bool), np.full(len(rewards), -1)),
        "srpo": (~correct & has_t, np.where(~correct & has_t, teacher, -1)),
        "srpo_no_dw": (~correct & has_t, np.where(~correct & has_t, teacher, -1)),
        "sdpo": (has_t, teacher),
        "advantage_mix": (np.zeros(len(rewards), bool), teacher),
    }
    for method, (mask_ref, teacher_ref) in expected.items():
        mask, idx = routing.route(rewards, g, method, seed=seed)
        assert mask.dtype == bool and idx.dtype == np.int32
        np.testing.assert_array_equal(mask, mask_ref, err_msg=method)
        np.testing.assert_array_equal(idx, teacher_ref, err_msg=method)


def test_seed_changes_only_the_demonstration():
    rewards = [1, 1, 1, 0, 0, 0, 1, 1] * 4
    masks = [routing.route(rewards, 8, "srpo", seed=s)[0] for s in range(5)]
    teachers = [routing.route(rewards, 8, "srpo", seed=s)[1] for s in range(5)]
    assert all((m == masks[0]).all() for m in masks)
    assert any((t != teachers[0]).any() for t in teachers)
    np.testing.assert_array_equal(teachers[2], routing.route(rewards, 8, "srpo", seed=2)[1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method 'ppo'"):
        routing.route([1, 0], 2, "ppo")
    with pytest.raises(ValueError, match="group_size=3"):
        routing.route([1, 0], 3, "srpo")


def test_drop_teachers_sends_rollouts_back():
    mask, teacher = routing.drop_teachers([True, True, False], [2, 2, -1], [True, False, True])
    np.testing.assert_array_equal(mask, [True, False, False])
    np.testing.assert_array_equal(teacher, [2, -1, -1])


def test_strip_think():
    assert routing.strip_think("<think>a\nb</think>\n\n Answer") == "Answer"
    assert routing.strip_think("x<think>1</think> y<think>2</think>z") == "xyz"
    assert routing.strip_think("no tags </think>") == "no tags </think>"


def test_build_teacher_messages_replaces_only_the_last_user_turn():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "Q"},
    ]
    out = routing.build_teacher_messages(msgs, "<think>hidden</think>\nDEMO")
    assert out[:3] == msgs[:3]
    assert out[3] == {
        "role": "user",
        "content": "Q\nCorrect solution:\n\nDEMO\n\nCorrectly solve the original question.",
    }
    assert msgs[3]["content"] == "Q"  # input untouched
    with pytest.raises(ValueError, match="no user message"):
        routing.build_teacher_messages([{"role": "system", "content": "S"}], "d")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from srpo_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer

    return load_tokenizer(build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def test_teacher_prompt_of_a_sciknoweval_row(packaged_data, tokenizer):
    path = packaged_data / "sciknoweval" / "chemistry" / "test.json"
    row = json.loads(path.read_text().splitlines()[0])
    assert row["idx"] == 1522 and row["answer"] == "A"
    messages = [
        {"role": "system", "content": row["system"]},
        {"role": "user", "content": row["prompt"]},
    ]
    sibling = (
        "<think>\nscratch\n</think>\n\n"
        "<reasoning>\nPhthalimide removal.\n</reasoning>\n<answer>\nA\n</answer>"
    )
    expected = (
        "<|im_start|>system\n"
        "\nGiven a question and four options, please select the right answer. Respond in the "
        "following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
        "For the answer, only output the letter corresponding to the correct option (A, B, C, "
        "or D), and nothing else. Do not restate the answer text. For example, if the answer is "
        '"A", just output:\n<answer>\nA\n</answer>\n'
        "<|im_end|>\n<|im_start|>user\n"
        "Which of the following molecules is the only correct reactant used in the synthesis "
        'of the product "Nc1ccn(Cc2ccc(Cl)cc2C(F)(F)F)n1" ?\n\n'
        "A: O=C1c2ccccc2C(=O)N1c1ccn(Cc2ccc(Cl)cc2C(F)(F)F)n1\n"
        "B: O=C1c2ccccc2C(Cl)N1c1ccc2ccc(Cl)nc2n1\n"
        "C: O=C1c2ccccc2C(=O)N1Cc1ccc(Oc2ccc(Cl)c(C(F)(F)F)c2)cc1\n"
        "D: O=C1c2ccccc2C(=O)N1CC=C(Cc1ccccc1)C(F)(F)F\n"
        "Please reason step by step."
        "\nCorrect solution:\n\n"
        "<reasoning>\nPhthalimide removal.\n</reasoning>\n<answer>\nA\n</answer>"
        "\n\nCorrectly solve the original question.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    ids = routing.render_teacher_prompt(tokenizer, messages, sibling)
    assert ids.dtype == np.int32
    assert tokenizer.decode(ids) == expected
    np.testing.assert_array_equal(ids, tokenizer.encode(expected, add_special_tokens=False))


def test_over_long_reprompt_keeps_the_end_of_the_demonstration(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    demo = " ".join(f"step{i}" for i in range(300)) + " <answer>B</answer>"
    full = routing.render_teacher_prompt(tokenizer, messages, demo)
    limit = len(full) // 2
    ids = routing.render_teacher_prompt(tokenizer, messages, demo, max_reprompt_tokens=limit)
    text = tokenizer.decode(ids)
    assert len(ids) <= limit
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ?\nCorrect")
    assert text.endswith(
        "<answer>B</answer>\n\nCorrectly solve the original question.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert "step0 " not in text and "step299" in text
    assert routing.render_teacher_prompt(tokenizer, messages, demo, max_reprompt_tokens=10) is None
