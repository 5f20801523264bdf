"""No reprompt carries two demonstrations. The synthetic task keeps
hints out of RL questions (tests/data/test_synthetic.py); here the general guard: a training
split whose question already ends in the reprompt layout is refused with a clear error."""

import json

import pytest

from srpo_jax.algo import routing
from srpo_jax.config import Config
from srpo_jax.data.datasets import DataConfig
from srpo_jax.trainer import setup as trainer


def test_reprompt_layout_is_detected():
    question = "What is 2 + 2?"
    assert not routing.has_reprompt_layout(question)
    assert routing.has_reprompt_layout(routing.reprompt(question, "<answer>\nB\n</answer>"))
    # Text that merely mentions the words is not a reprompt.
    assert not routing.has_reprompt_layout("Correct solution: explain. Then answer.")


def _row(idx, prompt):
    return {"idx": idx, "kind": "mcq", "dataset": "chem", "prompt": prompt, "system": None,
            "answer": "B"}  # fmt: skip


def test_training_split_with_a_hinted_question_is_refused(tmp_path):
    d = tmp_path / "sciknoweval" / "chemistry"
    d.mkdir(parents=True)
    hinted = routing.reprompt("Which is a noble gas?\nA: Ne\nB: Na", "<answer>\nA\n</answer>")
    (d / "train.json").write_text(
        json.dumps(_row(0, "Which is a metal?\nA: Ne\nB: Na")) + "\n" + json.dumps(_row(1, hinted))
    )
    (d / "test.json").write_text(json.dumps(_row(2, hinted)) + "\n")
    cfg = Config(data=DataConfig(task="chem", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="teacher-prompt layout"):
        trainer.split_examples(cfg, "train")
    assert len(trainer.split_examples(cfg, "test")) == 1  # test questions are never reprompted
