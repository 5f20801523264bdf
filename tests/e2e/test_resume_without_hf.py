"""A run started from HF weights resumes after the HF directory is gone, exactly.

`python -m srpo_jax.main` with model.hf_path set to a tiny random HF checkpoint (its
config.json, weights and tokenizer) trains 2 steps and checkpoints; the HF directory is
deleted; the same command with num_steps=4 resumes from the checkpoint alone (the
architecture and tokenizer from the workdir's model_files copy) and must equal the
uninterrupted 4-step run: every metric line and every array of the final checkpoint
(params, EMA teacher, optimizer state) bit for bit.
"""

import shutil

import pytest

from srpo_jax.trainer.metrics import read_metrics
from tests.e2e.test_resume import TINY, assert_same_run, finish, start
from tests.trainer.test_setup import write_tiny_hf


def _args(hf, steps: int) -> list[str]:
    return TINY + [
        "--config.model.preset=",
        f"--config.model.hf_path={hf}",
        "--config.warmup.steps=0",
        "--config.eval.every_steps=0",
        "--config.checkpoint.every_steps=2",
        f"--config.train.num_steps={steps}",
    ]


@pytest.mark.slow
def test_resume_after_the_hf_directory_is_deleted_equals_the_uninterrupted_run(tmp_path):
    hf = write_tiny_hf(tmp_path / "hf")
    full, part = tmp_path / "full", tmp_path / "part"
    rc, _, err = finish(start(full, _args(hf, 4)))
    assert rc == 0, err[-3000:]
    rc, _, err = finish(start(part, _args(hf, 2)))
    assert rc == 0, err[-3000:]
    assert (part / "model_files" / "config.json").is_file()
    assert not list((part / "model_files").glob("*.safetensors"))  # never the weights
    shutil.rmtree(hf)
    rc, out, err = finish(start(part, _args(hf, 4)))
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err
    assert "resumed from checkpoint step 2" in out
    assert [r["step"] for r in read_metrics(full / "metrics.jsonl")] == [1, 2, 3, 4]
    assert_same_run(full, part, 4)
