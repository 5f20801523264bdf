"""The host step's metric names: each quantity is logged under one name."""

from srpo_jax.trainer import step


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
