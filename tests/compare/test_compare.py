"""srpo_jax.compare.run: a shortened comparison runs end to end, writes its reports, and is
deterministic (same seeds -> the same table.md text); the report maths on hand-made logs."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from srpo_jax import config as config_lib
from srpo_jax.compare import plot as compare_plot
from srpo_jax.compare import report as compare_report
from srpo_jax.compare import run as compare

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py")


def _tiny_overrides() -> tuple[tuple[str, object], ...]:
    # conftest forces 8 CPU devices: rows (4 prompts x 2 rollouts) split 8 ways over "data".
    return (
        ("mesh.data", jax.device_count()),
        ("data.synthetic_train_size", 32),
        ("data.synthetic_test_size", 8),
        ("data.max_response_len", 12),
        ("algo.group_size", 2),
        ("train.prompts_per_step", 4),
        ("train.mini_batch_prompts", 4),
        ("warmup.steps", 2),
        ("eval.num_samples", 2),
        ("eval.max_examples", 4),
    )


@pytest.mark.slow
def test_short_comparison_writes_reports_and_is_deterministic(tmp_path):
    plan = compare.Plan(
        config_path=CONFIG,
        methods=("grpo", "srpo"),
        seeds=(0,),
        budget_steps=2,
        eval_every=1,
        overrides=_tiny_overrides(),
    )
    first = compare.run_all(plan, tmp_path / "a", log=lambda msg: None)
    table = first["table"].read_text()
    assert first["curves"].stat().st_size > 0
    assert "wall-clock" in first["timing"].read_text()
    # table.md: avg@k per evaluation step with bootstrap intervals, the copy probe of the
    # seed's warm-up, and the claims.
    header = next(line for line in table.splitlines() if line.startswith("| method | step 0"))
    assert header == "| method | step 0 | step 1 | step 2 |"
    assert "| 0 |" in table and "Copy probe at step 0" in table
    assert (tmp_path / "a" / "warmup" / "s0" / "probe.json").is_file()
    # Paper Table 1 layout in table_minmax.md: one row per method, a column per budget part.
    minmax = (tmp_path / "a" / "table_minmax.md").read_text()
    header = next(line for line in minmax.splitlines() if line.startswith("| method | step 0"))
    for col in ("best <= 1 steps (1/10)", "best <= 1 steps (5/10)", "best <= 2 steps (10/10)"):
        assert col in header
    assert "final" in header
    costs = json.loads((tmp_path / "a" / "costs.json").read_text())
    assert {"grpo_s0", "srpo_s0", "warmup_s0", "total"} <= set(costs)
    for method in ("grpo", "srpo"):
        assert any(line.startswith(f"| {method} |") for line in table.splitlines())
        assert (tmp_path / "a" / "runs" / f"{method}_s0" / "metrics.jsonl").is_file()
    # The warm-up ran once and both methods started from it: equal step-0 accuracy.
    runs = {m: compare_report.load_run(tmp_path / "a" / "runs" / f"{m}_s0") for m in plan.methods}
    init = {m: compare_report.series(r, compare_report.ACC)[0] for m, r in runs.items()}
    assert init["grpo"] == init["srpo"]

    second = compare.run_all(plan, tmp_path / "b", log=lambda msg: None)
    assert second["table"].read_text() == table


def _log(accs: dict[int, float], routed: list[float]) -> list[dict]:
    records = [{"step": s, "eval/avg_at_k": a} for s, a in accs.items()]
    for i, frac in enumerate(routed, start=1):
        records.append({"step": i, "route/sdpo_frac": frac, "reward/accuracy": 1.0 - frac})
    return sorted(records, key=lambda r: r["step"])


def test_budget_columns_take_best_eval_after_step_zero():
    # Evaluations every 2 of 10 steps: budgets 1, 5 and 10 steps.
    rec = _log({0: 0.9, 2: 0.3, 4: 0.5, 6: 0.4, 8: 0.7, 10: 0.6}, [0.5] * 10)
    assert compare_report.budget_steps(10) == [1, 5, 10]
    assert compare_report.best_within(rec, 1) is None  # step 0 does not count
    assert compare_report.best_within(rec, 5) == 0.5
    assert compare_report.best_within(rec, 10) == 0.7


def test_smoothing_keeps_length():
    for n in (1, 2, 4, 5, 9):
        values = np.arange(n, dtype=float)
        assert compare_plot._smooth(values, 5).shape == (n,)
    # Interior points: the plain 5-point mean.
    assert compare_plot._smooth(np.arange(9.0), 5)[4] == 4.0


def test_table_and_claims_on_handmade_logs(tmp_path):
    plan = compare.Plan(
        config_path=CONFIG, methods=("grpo", "sdpo", "srpo"), seeds=(0, 1), budget_steps=10
    )
    falling = [0.8 - 0.05 * i for i in range(10)]
    logs = {
        "grpo": {0: _log({0: 0.2, 1: 0.3, 5: 0.5, 10: 0.6}, [0.0] * 10)},
        "sdpo": {0: _log({0: 0.2, 1: 0.5, 5: 0.55, 10: 0.4}, [0.9] * 10)},
        "srpo": {0: _log({0: 0.2, 1: 0.5, 5: 0.6, 10: 0.7}, falling)},
    }
    # Second seed: everything 10 points higher.
    for runs in logs.values():
        runs[1] = [
            {k: (v + 0.1 if k == "eval/avg_at_k" else v) for k, v in r.items()} for r in runs[0]
        ]
    report = compare_report.Report(plan=plan, records=logs, costs={}, total_s=1.0)
    table = compare_report.table_md(report)
    # grpo, seeds 0 and 1: step 0 at 0.2 / 0.3, best within 1 step 0.3 / 0.4, within 5
    # steps 0.5 / 0.6, within 10 steps and final 0.6 / 0.7 -> mean [min, max] in %.
    row = "| grpo | 25.0 [20.0, 30.0] | 35.0 [30.0, 40.0] | 55.0 [50.0, 60.0] | 65.0 [60.0, 70.0]"
    assert row + " | 65.0 [60.0, 70.0] |" in table
    verdicts = {c.split(" (")[0]: v for c, v, _ in compare_report.claims(report)}
    assert verdicts["SDPO improves fastest early"] == "yes"  # +30 vs +10 points
    assert verdicts["SDPO stalls"] == "yes"  # final 45 < best 60 - 5
    assert verdicts["GRPO improves steadily"] == "yes"
    assert verdicts["SRPO ends above both"] == "yes"  # 75 > 65, 60
    assert verdicts["SRPO's routed fraction falls as accuracy rises"] == "yes"
    assert verdicts["Dynamic weighting adds late gains"] == "n/a"  # srpo_no_dw not run
    # Logs without timings still give a timing page and a plot (panels say "no data").
    assert "| srpo |" in compare_report.timing_md(report)
    assert compare_plot.plot(report, tmp_path / "curves.png").stat().st_size > 0


def test_losing_less_early_is_not_improving_fastest():
    # Both drop below step 0 at 1/10 of the budget; SDPO drops less. Not the paper's claim.
    plan = compare.Plan(
        config_path=CONFIG, methods=("grpo", "sdpo", "srpo"), seeds=(0,), budget_steps=10
    )
    logs = {
        "grpo": {0: _log({0: 0.4, 1: 0.3, 5: 0.5, 10: 0.6}, [0.0] * 10)},
        "sdpo": {0: _log({0: 0.4, 1: 0.35, 5: 0.4, 10: 0.4}, [0.5] * 10)},
        "srpo": {0: _log({0: 0.4, 1: 0.35, 5: 0.5, 10: 0.7}, [0.4] * 10)},
    }
    report = compare_report.Report(plan=plan, records=logs, costs={}, total_s=1.0)
    verdicts = {c.split(" (")[0]: v for c, v, _ in compare_report.claims(report)}
    assert verdicts["SDPO improves fastest early"] == "no"  # -5 vs -10 points


def test_cli_and_per_run_config():
    plan, out, report_only, verbosity = compare.parse_args(
        [
            f"--config={CONFIG}",
            "--methods=grpo,sdpo",
            "--seeds=3",
            "--budget_steps=30",
            "--out=x",
            "--config.eval.max_examples=16",
        ]
    )
    assert (plan.methods, plan.seeds, plan.eval_steps, out, report_only, verbosity) == (
        ("grpo", "sdpo"),
        (0, 1, 2),
        3,
        "x",
        False,
        0,
    )
    cfg = config_lib.from_config_dict(compare.run_config_dict(plan, "sdpo", 2))
    assert (cfg.algo.method, cfg.train.seed, cfg.train.num_steps) == ("sdpo", 2, 30)
    assert (cfg.eval.every_steps, cfg.eval.max_examples) == (3, 16)
    with pytest.raises(SystemExit):
        compare.parse_args(["--methods=grpo,dpo"])  # unknown method: argparse error, exit 2
