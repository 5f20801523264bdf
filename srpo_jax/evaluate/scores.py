"""avg@k and maj@k per benchmark and overall, with 95% bootstrap intervals over questions.

Each benchmark's test split goes through the trainer's own code path: the PromptSet and
the Evaluator that trainer/setup.py builds for a run, run on the same engine with the
same (seed, step), so a checkpoint scores here exactly what its run logged at that step.
The intervals resample questions (compare/intervals.py: 2000 replicates, 2.5-97.5
percentiles); "overall" pools every benchmark's questions, so a benchmark weighs by its
number of questions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from srpo_jax.compare.intervals import question_interval
from srpo_jax.config import Config
from srpo_jax.data import datasets
from srpo_jax.trainer import evaluation
from srpo_jax.trainer import setup as trainer_setup

OVERALL = "overall"


@dataclasses.dataclass(frozen=True)
class Scores:
    """One benchmark's (or all of them pooled) per-question scores and mean response length."""

    avg_Q: np.ndarray  # per-question mean reward of the k samples
    maj_Q: np.ndarray  # per-question reward of the majority answer
    response_len_mean: float

    def summary(self, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "avg_at_k": float(np.mean(self.avg_Q)),
            "avg_at_k_ci95": list(question_interval(self.avg_Q, rng)),
            "maj_at_k": float(np.mean(self.maj_Q)),
            "maj_at_k_ci95": list(question_interval(self.maj_Q, rng)),
            "response_len_mean": self.response_len_mean,
            "num_questions": len(self.avg_Q),
        }


def test_set(cfg: Config, task: str, tokenizer) -> datasets.PromptSet:
    """`task`'s test split as the trainer builds it (trainer/setup.py)."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task=task))
    examples = trainer_setup.split_examples(cfg, "test")
    return datasets.PromptSet(examples, tokenizer, cfg.data.max_prompt_len)


def score(cfg: Config, prompts: datasets.PromptSet, engine, tokenizer, *, step: int) -> Scores:
    """One test split scored as the trainer scores it (its Evaluator, seed and step)."""
    evaluator = evaluation.Evaluator(cfg.eval, prompts, tokenizer, cfg.data.max_response_len)
    result = evaluator.run(engine, step=step, seed=cfg.train.seed)
    return Scores(
        np.asarray(evaluator.last_scores, np.float64),
        np.asarray(evaluator.last_majority, np.float64),
        result["eval/response_len_mean"],
    )


def pooled(parts: Sequence[Scores]) -> Scores:
    """Every benchmark's questions as one set (the response-length mean weighs by questions)."""
    n_Q = np.asarray([len(p.avg_Q) for p in parts], np.float64)
    lengths = np.asarray([p.response_len_mean for p in parts])
    return Scores(
        np.concatenate([p.avg_Q for p in parts]),
        np.concatenate([p.maj_Q for p in parts]),
        float(np.sum(lengths * n_Q) / np.sum(n_Q)),
    )


def summaries(per_task: dict[str, Scores], seed: int) -> dict[str, dict[str, Any]]:
    """{benchmark or "overall": summary}; the bootstrap draws from `seed`."""
    rng = np.random.default_rng(seed)
    out = {task: s.summary(rng) for task, s in per_task.items()}
    out[OVERALL] = pooled(list(per_task.values())).summary(rng)
    return out


def table(results: dict[str, dict[str, Any]], k: int) -> str:
    """One line per benchmark and the pooled one: questions, avg@k and maj@k [95% CI], in %."""

    def cell(r, key):
        lo, hi = r[f"{key}_ci95"]
        return f"{100 * r[key]:5.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]"

    head = (
        f"{'benchmark':<12} {'questions':>9}  {f'avg@{k} [95% CI]':<22} {f'maj@{k} [95% CI]':<22}"
    )
    rows = [
        f"{name:<12} {r['num_questions']:>9}  {cell(r, 'avg_at_k'):<22} {cell(r, 'maj_at_k'):<22}"
        for name, r in results.items()
    ]
    return "\n".join(line.rstrip() for line in [head, *rows])
