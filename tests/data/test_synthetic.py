"""The synthetic code-lookup task: deterministic, well-formed, answered by its code table,
scored by the MCQ verifier like SciKnowEval; its warm-up carries no code and no hint reaches
an RL question (the probe criteria b and c)."""

import collections
import re

import pytest

from srpo_jax.algo import routing
from srpo_jax.data import datasets, rewards, synthetic

_ASKED = re.compile(r"^Codes of (\w+) and (\w+)\?")


def test_deterministic_for_a_seed():
    a = synthetic.make_synthetic_split(200, seed=5)
    assert a == synthetic.make_synthetic_split(200, seed=5)
    assert a != synthetic.make_synthetic_split(200, seed=6)
    assert synthetic.make_synthetic_splits(300, 50, seed=1) == synthetic.make_synthetic_splits(
        300, 50, seed=1
    )


def test_code_table_is_balanced_and_fixed():
    counts = collections.Counter(synthetic.CODES.values())
    assert set(counts) == set("ABCD") and set(counts.values()) == {len(synthetic.WORDS) // 4}
    assert len(set(synthetic.WORDS)) == len(synthetic.WORDS)


def test_examples_are_answered_by_the_code_table():
    train, test = synthetic.make_synthetic_splits(512, 256, seed=0)
    for ex in train + test:
        assert ex.kind == "mcq" and ex.dataset == "synthetic"
        assert ex.system == synthetic.SYNTHETIC_SYSTEM_PROMPT
        a, b = _ASKED.match(ex.prompt).groups()
        assert a != b
        assert ex.answer == f"{a} {synthetic.CODES[a]} {b} {synthetic.CODES[b]}"
        assert rewards.mcq_reward(synthetic.answer_text(ex.answer), ex.answer) == 1.0
        assert not routing.has_reprompt_layout(ex.prompt)  # criterion (c)
    assert [ex.idx for ex in train + test] == list(range(768))


def test_train_and_test_share_no_question():
    train, test = synthetic.make_synthetic_splits(600, 300, seed=2)
    asked = lambda split: {_ASKED.match(ex.prompt).groups() for ex in split}
    assert not asked(train) & asked(test)
    assert len(asked(train)) == 600 and len(asked(test)) == 300


def test_more_questions_than_word_pairs_is_a_clear_error():
    with pytest.raises(ValueError, match="ordered word pairs"):
        synthetic.make_synthetic_splits(synthetic.MAX_QUESTIONS, 1, seed=0)


def test_warmup_hints_use_the_teacher_layout_and_carry_no_code():
    warm = synthetic.make_warmup_split(4000, seed=0)
    hinted = [ex for ex in warm if "Correct solution:" in ex.prompt]
    assert len(hinted) == 3000
    for ex in hinted:
        # Exactly SPEC section 2's teacher layout around the target, written out by hand.
        question = ex.prompt.split("\n", 1)[0]
        assert ex.prompt == routing.reprompt(question, f"<answer> {ex.answer} </answer>")
    # No code: a warm-up letter agrees with the asked word's code at chance (1/4), and every
    # letter is equally frequent, in the hints and in the unhinted targets alike.
    agree, letters = 0, collections.Counter()
    for ex in warm:
        words = _ASKED.match(ex.prompt).groups()
        assert ex.answer.split(" ")[0::2] == list(words)  # the format repeats the asked words
        for w, x in zip(words, ex.answer.split(" ")[1::2], strict=True):
            agree += synthetic.CODES[w] == x
            letters[x] += 1
    n = 2 * len(warm)
    assert abs(agree / n - 0.25) < 0.02
    assert all(abs(c / n - 0.25) < 0.02 for c in letters.values())


def test_system_prompt_shows_the_answer_format():
    msgs = datasets.messages(synthetic.make_synthetic_split(1, seed=0)[0])
    assert msgs[0]["role"] == "system" and "answer tags" in msgs[0]["content"]
