"""avg@k / maj@k and the budget table, against hand-computed values, on a scripted engine.

The engine is a fake that returns fixed completions, so these tests need no model and no
compile; what they pin down is the scoring, the majority vote (ties go to the answer seen
first), the chunking of the test split and the evaluation's own seed stream.
"""

import types

import numpy as np
import pytest

from srpo_jax.config import EvalConfig
from srpo_jax.data.datasets import Example
from srpo_jax.data.synthetic import answer_text
from srpo_jax.rollout.engine import Rollouts
from srpo_jax.trainer import evaluation

# Token id -> text. Completions are single tokens; the decoder maps them to answers.
TEXTS = {1: answer_text("A"), 2: answer_text("B"), 3: answer_text("C"), 4: "no answer here"}


class Tok:
    eos_token_id = 0

    def convert_tokens_to_ids(self, token):
        return {"<|im_end|>": 5, "<|endoftext|>": 6}[token]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(TEXTS[i] for i in ids)


class ScriptedEngine:
    """Prompt i's k samples are script[prompt_ids[i][0]]; records every call."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, prompts, n, sp, *, step=0):
        self.calls.append((len(prompts), n, sp, step))
        ids = [self.script[p[0]][j] for p in prompts for j in range(n)]
        rows = len(ids)
        return Rollouts(
            token_ids_BR=np.array(ids, np.int32)[:, None],
            logprobs_BR=np.zeros((rows, 1), np.float32),
            lengths_B=np.ones(rows, np.int32),
            finish_reasons=("stop",) * rows,
            weight_version=0,
            prompt_index_B=np.repeat(np.arange(len(prompts), dtype=np.int32), n),
        )


def make_split(answers):
    examples = [
        Example(idx=i, kind="mcq", dataset="t", prompt=f"q{i}", system=None, answer=a)
        for i, a in enumerate(answers)
    ]
    return Split(examples, [[i] for i in range(len(answers))])


class Split(types.SimpleNamespace):
    """The two PromptSet attributes the Evaluator reads, and len()."""

    def __init__(self, examples, prompt_ids):
        super().__init__(examples=examples, prompt_ids=prompt_ids)

    def __len__(self):
        return len(self.examples)


def test_avg_and_majority_match_hand_computed_values():
    # prompt 0 (gold B): B B C -> mean 2/3, majority B -> 1
    # prompt 1 (gold A): C no-answer C -> mean 0, majority C -> 0
    # prompt 2 (gold C): A C no-answer -> mean 1/3, A and C tie once each, A seen first -> 0
    script = {0: [2, 2, 3], 1: [3, 4, 3], 2: [1, 3, 4]}
    engine = ScriptedEngine(script)
    ev = evaluation.Evaluator(EvalConfig(num_samples=3), make_split("BAC"), Tok(), 8)
    res = ev.run(engine, step=5, seed=7)
    assert res["eval/avg_at_k"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    assert res["eval/maj_at_k"] == pytest.approx(1 / 3)
    assert res["eval/num_prompts"] == 3 and res["eval/response_len_mean"] == 1.0


def test_no_parsable_answer_scores_zero_majority():
    engine = ScriptedEngine({0: [4, 4]})
    ev = evaluation.Evaluator(EvalConfig(num_samples=2), make_split("A"), Tok(), 8)
    res = ev.run(engine, step=0)
    assert res["eval/avg_at_k"] == 0.0 and res["eval/maj_at_k"] == 0.0


def test_chunks_cover_every_prompt_once_with_their_own_eval_seeds():
    answers = "ABCABCA"
    script = {i: [1, 2] for i in range(len(answers))}
    engine = ScriptedEngine(script)
    cfg = EvalConfig(num_samples=2, temperature=0.6, top_p=0.95, max_examples=5)
    ev = evaluation.Evaluator(cfg, make_split(answers), Tok(), 8, batch_prompts=2)
    res = ev.run(engine, step=10, seed=3)
    assert [c[0] for c in engine.calls] == [2, 2, 1]  # max_examples=5 in chunks of 2
    assert res["eval/num_prompts"] == 5
    seeds = [c[2].seed for c in engine.calls]
    # The evaluation's seed stream is offset from training's (seed 3) and differs per chunk.
    assert seeds == [3 + evaluation.EVAL_SEED_OFFSET + lo for lo in (0, 2, 4)]
    for _, n, sp, step in engine.calls:
        assert (n, step, sp.temperature, sp.top_p, sp.max_new_tokens) == (2, 10, 0.6, 0.95, 8)
        assert set(sp.stop_token_ids) == {0, 5, 6}
    # Each prompt: one A and one B sample -> avg 0.5 except gold C (0).
    assert res["eval/avg_at_k"] == pytest.approx(np.mean([0.5, 0.5, 0.0, 0.5, 0.5]))


def test_budget_table_takes_the_best_within_each_budget():
    evals = [[0.0, 0.30], [1800.0, 0.50], [3700.0, 0.45], [20000.0, 0.70]]
    table = evaluation.budget_table(evals, hours=(0.5, 1.0, 5.0, 10.0))
    assert table == [(0.5, 0.50), (1.0, 0.50), (5.0, 0.50), (10.0, 0.70)]
    assert evaluation.budget_table([[7200.0, 0.4]], hours=(1.0,)) == [(1.0, None)]
    text = evaluation.format_budget_table([(1.0, None), (5.0, 0.5)])
    assert "| 1 h | - |" in text and "| 5 h | 50.0 |" in text
