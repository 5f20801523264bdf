"""The synthetic demo task: deterministic, well-formed, answerable by its own rule, and
scored by the MCQ verifier like SciKnowEval."""

import re

from srpo_jax.data import datasets, rewards, synthetic


def _solve(prompt):
    """Independent solver written from the task description (not the generator)."""
    options = dict(re.findall(r"^([ABCD]): (\w+)$", prompt, flags=re.M))
    (key,) = re.findall(r"^Which letter labels (\w+)\?$", prompt, flags=re.M)
    (letter,) = [k for k, v in options.items() if v == key]
    return letter


def test_deterministic_for_a_seed():
    a = synthetic.make_synthetic_split(200, seed=5)
    b = synthetic.make_synthetic_split(200, seed=5)
    c = synthetic.make_synthetic_split(200, seed=6)
    assert a == b
    assert a != c
    train1, test1 = synthetic.make_synthetic_splits(300, 50, seed=1)
    train2, test2 = synthetic.make_synthetic_splits(300, 50, seed=1)
    assert (train1, test1) == (train2, test2)


def test_examples_are_well_formed_and_solvable():
    train, test = synthetic.make_synthetic_splits(400, 100, seed=0)
    for ex in train + test:
        assert ex.kind == "mcq" and ex.dataset == "synthetic"
        assert ex.system == synthetic.SYNTHETIC_SYSTEM_PROMPT
        assert _solve(ex.prompt) == ex.answer
        options = re.findall(r"^[ABCD]: (\w+)$", ex.prompt, flags=re.M)
        assert len(options) == 4 == len(set(options))
        assert rewards.mcq_reward(synthetic.answer_text(ex.answer), ex.answer) == 1.0
        # Unhinted: the key word sits at its home letter (lexicon index mod 4).
        key = re.findall(r"labels (\w+)\?", ex.prompt)[0]
        home = "ABCD"[synthetic.WORDS.index(key) % 4]
        assert home == ex.answer or "Correct solution:" in ex.prompt
    assert [ex.idx for ex in train + test] == list(range(500))
    assert {ex.answer for ex in test} == set("ABCD")


def test_hints_train_only_and_correct():
    train, test = synthetic.make_synthetic_splits(400, 100, seed=0, hint_frac=0.25)
    hinted = [ex for ex in train if "Correct solution:" in ex.prompt]
    assert len(hinted) == 100
    for ex in hinted:
        # Exactly the SPEC section 2 teacher layout, written out by hand here.
        suffix = "?\nCorrect solution:\n\n<answer>\n" + ex.answer + "\n</answer>\n\n"
        assert ex.prompt.endswith(suffix + "Correctly solve the original question.")
        # The hint is in answer format, so the MCQ verifier reads the hint's letter.
        assert rewards.extract_mcq_answer(ex.prompt) == ex.answer
    # Hinted keys are placed at random, so about 3 in 4 sit away from their home letter.
    away = [
        ex
        for ex in hinted
        if synthetic.home_letter(re.findall(r"labels (\w+)\?", ex.prompt)[0]) != ex.answer
    ]
    assert 50 <= len(away) <= 95
    assert not any("Correct solution:" in ex.prompt for ex in test)


def test_train_and_test_share_no_question():
    train, test = synthetic.make_synthetic_splits(2000, 300, seed=2)
    key = lambda ex: ex.prompt.split("\nCorrect solution:")[0]
    assert not {key(ex) for ex in train} & {key(ex) for ex in test}
    assert len({key(ex) for ex in train}) == 2000


def test_system_prompt_keeps_answer_format():
    ex = synthetic.make_synthetic_split(1, seed=0)[0]
    msgs = datasets.messages(ex)
    assert msgs[0]["role"] == "system" and "<answer>\nX\n</answer>" in msgs[0]["content"]
