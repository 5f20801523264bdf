"""The host step: its metric names (each quantity is logged under one name) and the rewards
of finished, cut and aborted rows."""

import pathlib

import numpy as np
import pytest

from srpo_jax.config import from_config_dict, load_config_file
from srpo_jax.data import synthetic
from srpo_jax.data import tokenizer as tokmod
from srpo_jax.rollout.engine import Rollouts
from srpo_jax.trainer import step

DEMO = pathlib.Path(__file__).resolve().parents[2] / "configs/demo.py"


def _device(tokens: float) -> dict:
    return {
        "loss": 0.5,
        "loss/grpo_clip_high_frac": 0.1,
        "loss/grpo_clip_low_frac": 0.2,
        "loss/grpo_clip_dual_frac": 0.0,
        "loss/teacher_entropy_mean": 1.5,
        "loss/sdpo_weight_std": 0.25,
        "loss/sdpo_weight_max": 2.0,
        "loss/sdpo_weight_min": 0.5,
        "sdpo/tokens": tokens,
    }


def test_device_metrics_have_one_name_each():
    m = step.public_names(_device(tokens=12.0))
    assert m["grpo/clip_high_frac"] == 0.1 and m["grpo/clip_low_frac"] == 0.2
    assert m["teacher/entropy_mean"] == 1.5 and m["sdpo/weight_std"] == 0.25
    assert m["sdpo/weight_spread"] == 1.5
    for old in step._RENAMED:
        assert old not in m, old
    assert m["loss"] == 0.5 and m["loss/sdpo_weight_max"] == 2.0


def test_routed_token_statistics_only_on_routed_steps():
    m = step.public_names(_device(tokens=0.0))
    for k in ("teacher/entropy_mean", "sdpo/weight_std", "sdpo/weight_spread"):
        assert k not in m, k
    assert "grpo/clip_high_frac" in m


@pytest.mark.parametrize("score_truncated", [True, False])
def test_a_cut_response_scores_by_its_text_or_zero_per_data_score_truncated(
    tmp_path, score_truncated
):
    """The same gold text scores 1 when it ended (stop) and 0 when the engine gave up (abort);
    cut at max_response_len (length), it scores 1 by the verifier (SPEC 1) unless
    data.score_truncated is off, which refuses responses that never ended."""
    config = load_config_file(str(DEMO))
    with config.unlocked():
        config.algo.group_size = 4
        config.data.score_truncated = score_truncated
    cfg = from_config_dict(config)
    tok = tokmod.load_tokenizer(tokmod.build_tiny_tokenizer(tmp_path / "tok"))
    (example,) = synthetic.make_synthetic_split(1, seed=0)
    gold = tok.encode(synthetic.answer_text(example.answer), add_special_tokens=False)
    filler = gold + tok.encode(" owl owl", add_special_tokens=False)  # an answer, then more
    rows = [gold, filler, gold, tok.encode("<answer> x </answer>", add_special_tokens=False)]
    width = max(map(len, rows))
    ro = Rollouts(
        token_ids_BR=np.array([r + [0] * (width - len(r)) for r in rows], np.int32),
        logprobs_BR=np.zeros((4, width), np.float32),
        lengths_B=np.array([len(r) for r in rows], np.int32),
        finish_reasons=("stop", "length", "abort", "length"),
        weight_version=0,
        prompt_index_B=np.zeros(4, np.int32),
    )
    texts, rew = step._scores(cfg, ro, [example], tok)
    assert texts[1].startswith(synthetic.answer_text(example.answer))
    assert rew.tolist() == [1.0, 1.0 if score_truncated else 0.0, 0.0, 0.0]
