"""avg@k and maj@k on a test split, and the wall-clock budget table of the paper's Table 1.

avg@k: k samples per test prompt (T = 0.6, top-p 0.95 by default, SPEC 10), the mean
reward over all samples and prompts. maj@k: per prompt, the majority answer among the k
samples (answers normalised by the verifier's own parsing; ties go to the answer seen
first), scored once. Evaluation uses its own sampling seed stream (folded with the step),
so it never perturbs the training rollouts.

Budget table: the best avg@k reached within each training wall-clock budget (evaluation
time excluded, as in the paper).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence

import numpy as np

from srpo_jax.data import rewards
from srpo_jax.rollout.engine import SamplingParams
from srpo_jax.trainer.config import EvalConfig  # noqa: F401

# Keeps evaluation noise apart from training noise for the same step.
EVAL_SEED_OFFSET = 1_000_003


def _stop_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(i for i in ids if i is not None and i >= 0))


class Evaluator:
    """Runs avg@k / maj@k of an engine on a PromptSet."""

    def __init__(
        self, eval_cfg, test_set, tokenizer, max_new_tokens: int, *, batch_prompts: int = 64
    ):
        self.cfg = eval_cfg
        n = (
            len(test_set)
            if not eval_cfg.max_examples
            else min(eval_cfg.max_examples, len(test_set))
        )
        self.examples = test_set.examples[:n]
        self.prompt_ids = test_set.prompt_ids[:n]
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_prompts = batch_prompts
        self.stop_ids = _stop_ids(tokenizer)
        self.last_scores: list[float] = []  # per-question avg@k of the last run
        self.last_majority: list[float] = []  # per-question maj@k of the last run

    def run(self, engine, *, step: int, seed: int = 0) -> dict[str, float]:
        k = self.cfg.num_samples
        start = time.perf_counter()
        scores, majority, lengths = [], [], []
        for lo in range(0, len(self.examples), self.batch_prompts):
            exs = self.examples[lo : lo + self.batch_prompts]
            # Engines fold (seed, step, row); rows restart at 0 in every chunk, so the chunk
            # offset goes into the seed to keep chunks' noise independent.
            sp = SamplingParams(
                max_new_tokens=self.max_new_tokens,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                stop_token_ids=self.stop_ids,
                seed=seed + EVAL_SEED_OFFSET + lo,
            )
            ro = engine.generate(self.prompt_ids[lo : lo + self.batch_prompts], k, sp, step=step)
            for p, ex in enumerate(exs):
                texts = [
                    self.tokenizer.decode(ro.completion(p * k + j), skip_special_tokens=True)
                    for j in range(k)
                ]
                lengths.extend(int(ro.lengths_B[p * k + j]) for j in range(k))
                per = [rewards.reward(ex.kind, t, ex.answer) for t in texts]
                scores.append(float(np.mean(per)))
                majority.append(_majority_score(ex, texts, per))
        # For confidence intervals over questions (compare/intervals.py, srpo_jax.evaluate).
        self.last_scores, self.last_majority = scores, majority
        return {
            "eval/avg_at_k": float(np.mean(scores)),
            "eval/maj_at_k": float(np.mean(majority)),
            "eval/response_len_mean": float(np.mean(lengths)),
            "eval/num_prompts": float(len(scores)),
            "time/eval_s": time.perf_counter() - start,
        }


def _majority_score(example, texts: Sequence[str], scores: Sequence[float]) -> float:
    """Reward of the most frequent normalised answer (first seen wins ties)."""
    keys = [rewards.answer_key(example.kind, t) for t in texts]
    counts = collections.Counter(k for k in keys if k is not None)
    if not counts:
        return 0.0
    best = max(counts.values())
    for key, score in zip(keys, scores, strict=True):
        if key is not None and counts[key] == best:
            return float(score)
    return 0.0


def budget_table(
    evals: Sequence[Sequence[float]], hours: Sequence[float] = (1.0, 5.0, 10.0)
) -> list[tuple[float, float | None]]:
    """[(budget_hours, best avg@k with train time <= budget, or None if no eval by then)]."""
    out = []
    for h in hours:
        within = [acc for elapsed, acc in evals if elapsed <= h * 3600.0]
        out.append((h, max(within) if within else None))
    return out


def format_budget_table(rows: Sequence[tuple[float, float | None]]) -> str:
    head = "| budget | best avg@k |\n|---|---|"
    body = "\n".join(
        f"| {h:g} h | {'-' if best is None else f'{100 * best:.1f}'} |" for h, best in rows
    )
    return f"{head}\n{body}"
