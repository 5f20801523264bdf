"""Comparison arms (srpo_jax.compare.arms): `method@section.key=value` labels set config keys
for that arm's runs only; a malformed arm is one `error:` line and exit 2; the report
compares each arm with overrides against its method on the accuracy table's replicates."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from srpo_jax import config as config_lib
from srpo_jax.compare import arms
from srpo_jax.compare import intervals as compare_ci
from srpo_jax.compare import run as compare

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py")


def test_arm_labels_parse_to_method_and_overrides():
    arm = arms.parse(
        "srpo@rollout.temperature=0.5@eval.num_samples=2@train.fused_implementation=xla"
    )
    assert arm == arms.Arm(
        "srpo",
        (
            ("rollout.temperature", 0.5),
            ("eval.num_samples", 2),
            ("train.fused_implementation", "xla"),
        ),
    )
    assert arms.parse("grpo") == arms.Arm("grpo")
    assert arms.base_label("srpo@rollout.temperature=0.5") == "srpo"


def test_arm_overrides_apply_to_that_arm_only_and_after_the_plans():
    plan, *_ = compare.parse_args(
        [
            f"--config={CONFIG}",
            "--methods=grpo,grpo@rollout.overlap=1@eval.num_samples=3@rollout.temperature=0.5",
            "--config.eval.num_samples=2",
        ]
    )
    plain = config_lib.from_config_dict(compare.run_config_dict(plan, plan.methods[0], 1))
    armed = config_lib.from_config_dict(compare.run_config_dict(plan, plan.methods[1], 1))
    assert (plain.algo.method, armed.algo.method) == ("grpo", "grpo")
    assert (plain.eval.num_samples, armed.eval.num_samples) == (2, 3)
    assert (plain.rollout.overlap, armed.rollout.overlap) == (0, 1)
    assert armed.rollout.temperature == 0.5
    assert (
        plain.rollout.temperature
        == config_lib.from_config_dict(
            config_lib.load_config_file(f"{CONFIG}:method=grpo")
        ).rollout.temperature
    )
    # Everything else, seed and budget included, is the same run.
    assert armed.train == plain.train and armed.optim == plain.optim


@pytest.mark.parametrize(
    "arm, named",
    [
        ("srpo@overlap1", "'overlap1'"),  # no section.key=value
        ("srpo@rollout.overlap=", "'rollout.overlap='"),  # no value
        ("@rollout.overlap=1", "'@rollout.overlap=1'"),  # no method
        ("dpo@rollout.overlap=1", "'dpo'"),  # unknown method
    ],
)
def test_malformed_arm_is_one_error_line(arm, named, capsys):
    with pytest.raises(SystemExit) as e:
        compare.parse_args([f"--methods=srpo,{arm}"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: --methods") and named in err, err


@pytest.mark.parametrize(
    "arm, named",
    [("srpo@rollout.no_such_key=1", "no_such_key"), ("srpo@rollout.overlap=2", "rollout.overlap")],
)
def test_arm_override_the_config_refuses_stops_before_training(arm, named, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main([f"--config={CONFIG}", f"--methods=srpo,{arm}"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err


def test_arm_against_its_method_on_the_tables_replicates():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.0, 1.0, (5, 3, 64))  # [seeds, evaluations, questions]
    scores = {"grpo": base, "grpo@a.b=1": base.copy(), "grpo@a.b=2": base + 0.3}
    draws = compare_ci._draws(5, 64, np.random.default_rng(0))
    lines = compare_ci._arms_vs_method(scores, [0, 10, 20], draws)
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| grpo@")}
    reps = compare_ci.boot_acc(base, draws)[:, 2]
    lo, hi = np.percentile(reps, [2.5, 97.5])
    mean = base[:, 2].mean()
    # The same scores: no difference and inside; +30 points: outside, paired difference 30.
    assert rows["grpo@a.b=1"].count("0.0 [0.0, 0.0]") == 3
    assert rows["grpo@a.b=1"].endswith(
        f"yes: {mean * 100:.1f} vs grpo [{lo * 100:.1f}, {hi * 100:.1f}] |"
    )
    assert rows["grpo@a.b=2"].count("30.0 [30.0, 30.0]") == 3
    assert rows["grpo@a.b=2"].endswith(
        f"no: {(mean + 0.3) * 100:.1f} vs grpo [{lo * 100:.1f}, {hi * 100:.1f}] |"
    )
    # No arm with overrides: the section is absent and plain comparisons keep their table.
    assert compare_ci._arms_vs_method({"grpo": base, "srpo": base}, [0, 10, 20], draws) == []
