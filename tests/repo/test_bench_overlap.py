"""The arithmetic of benchmarks/bench_overlap.py against hand-computed examples (no run)."""

import dataclasses
import importlib.util
import pathlib
import sys

import pytest

PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_overlap.py"
_spec = importlib.util.spec_from_file_location("bench_overlap", PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_overlap"] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def _step(step_s, rollout_s, learner_s):
    return {"time/step_s": step_s, "time/rollout_s": rollout_s, "time/learner_s": learner_s}


def test_summary_busy_fractions_are_sums_over_wall():
    runs = [
        {"overlap": 0, "load": 1.0, "steps": [_step(4.0, 2.0, 1.5), _step(6.0, 3.0, 2.5)]},
        {"overlap": 0, "load": 3.0, "steps": [_step(5.0, 2.0, 2.0)]},
        {"overlap": 1, "load": 2.0, "steps": [_step(3.0, 2.4, 2.7), _step(2.0, 1.6, 1.8)]},
    ]
    s = bench.summarize(runs)
    assert (s[0]["n"], s[0]["median"], s[0]["min"], s[0]["max"]) == (3, 5.0, 4.0, 6.0)
    assert s[0]["pool_busy"] == pytest.approx(7.0 / 15.0)
    assert s[0]["learner_busy"] == pytest.approx(6.0 / 15.0)
    assert s[0]["load"] == 2.0
    assert s[1]["median"] == 2.5 and s[1]["pool_busy"] == pytest.approx(4.0 / 5.0)
    assert s[1]["profile"]["learner_s"] == pytest.approx(2.25)
    assert s[1]["profile"]["sync_s"] != s[1]["profile"]["sync_s"]  # not logged: nan


def test_estimate_against_hand_counts():
    # Qwen3-8B: per layer 4096*128*(2*32 + 2*8) + 3*4096*12288 = 192_937_984 matmul params;
    # x36 plus the 151936 x 4096 head: 7_568_097_280.
    from srpo_jax.model.config import PRESETS

    cfg = PRESETS["qwen3_8b"]()
    assert bench._layer_params(cfg) == 192_937_984
    # One forward over 10 tokens of 1000-token sequences: 2*7_568_097_280 per token for the
    # matmuls, 4 * 500 * 32 * 128 * 36 for attention.
    per_token = 2 * 7_568_097_280 + 4 * 500 * 32 * 128 * 36
    assert bench._flops(cfg, 10, 1000, 1) == pytest.approx(10 * per_token)
    s = dataclasses.replace(bench.PaperSetting(), sync_s=2.0)
    e = bench.estimate(s)
    assert e["serial_s"] == pytest.approx(e["roll_s"] + e["learn_s"] + 2.0)
    assert e["overlap_s"] == pytest.approx(max(e["roll_s"], e["learn_s"]) + 2.0)
    # The decode floor: 4000 tokens x 2 bytes x (36 layers + embedding and head) / 2.4 TB/s.
    weights = 2 * (36 * 192_937_984 + 2 * 151936 * 4096)
    assert e["floor_s"] == pytest.approx(4000 * weights / (4.0e12 * 0.6))
