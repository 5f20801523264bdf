"""The arithmetic and the table of benchmarks/soak.py against hand-made samples (no run)."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
_spec = importlib.util.spec_from_file_location("soak", PATH)
soak = importlib.util.module_from_spec(_spec)
sys.modules["soak"] = soak  # dataclasses look their module up there
_spec.loader.exec_module(soak)


def _sample(step: int, rss: float, **kw) -> "soak.Sample":
    fields = dict(live_buffers=69, live_mb=2.0, compiles=25, step_s=1.0, load_1m=3.0)
    fields.update(accuracy=0.5, routed_frac=0.25, teacher_rows=32.0, truncated_frac=0.125)
    fields.update(heap_used_mb=300.0, heap_free_mb=40.5, py_blocks=123456.0, s_per_kslot=1.25)
    fields.update(kw)
    return soak.Sample(step=step, rss_mb=rss, **fields)


def test_trend_growth_is_the_fitted_line_change_over_its_start():
    steps = [200, 400, 600, 800]
    # y = 1000 + 0.1 * (step - 200): the line rises 60 over the span from 1000 at its start.
    assert soak.trend_growth(steps, [1000.0, 1020.0, 1040.0, 1060.0]) == pytest.approx(0.06)
    # Noise around a flat line reads as no growth: +10, -10, -10, +10 has slope 0.
    assert soak.trend_growth(steps, [1010.0, 990.0, 990.0, 1010.0]) == pytest.approx(0.0)


def test_goals_count_from_settle_and_flag_what_grows():
    samples = [_sample(100, 5000.0, compiles=20)]  # before settle: neither RSS nor compiles
    samples += [_sample(s, 1000.0 + 0.5 * (s - 200)) for s in (200, 300, 400, 500)]
    samples[-1].compiles = 26
    got = {name: (value, met) for name, value, _, met in soak.goals(samples, settle=200)}
    assert got["RSS growth (trend)"] == (pytest.approx(0.15), False)
    assert got["live bytes growth (trend)"] == (pytest.approx(0.0), True)
    assert got["compiles added"] == (1, False)
    assert got["step time drift (trend)"] == (pytest.approx(0.0), True)


def test_step_time_per_decode_slot_divides_the_workload_out():
    # The step time doubles because the responses got twice as long: the plain drift is
    # +100%, per decode slot it is 0. A table without the column has no per-slot line.
    steps = (200, 400, 600, 800)
    samples = [_sample(s, 1000.0, step_s=1 + (s - 200) / 600, s_per_kslot=2.0) for s in steps]
    got = {name: (value, met) for name, value, _, met in soak.goals(samples, settle=200)}
    assert got["step time drift (trend)"] == (pytest.approx(1.0), False)
    assert got["step time per decode slot drift (trend)"] == (pytest.approx(0.0), True)
    old = [_sample(s, 1000.0, s_per_kslot=np.nan) for s in steps]
    assert "step time per decode slot drift (trend)" not in {g[0] for g in soak.goals(old, 200)}


def test_the_table_reads_back_as_written(tmp_path):
    samples = [_sample(s, 1500.0 + s / 100) for s in (50, 100, 150, 200)]
    path = tmp_path / "soak.md"
    path.write_text("the header\n\n" + soak.table(samples, settle=50))
    head, back = soak.read_table(path)
    assert head == "the header"
    assert back == samples


def test_a_table_from_before_the_path_and_heap_columns_still_reads(tmp_path):
    path = tmp_path / "old.md"
    path.write_text(
        "old\n\n| step | RSS MB | live buffers | live MB | compiles | median step s |\n"
        "|---:|---:|---:|---:|---:|---:|\n| 50 | 1445.9 | 69 | 2.13 | 24 | 2.573 |\n"
    )
    (s,) = soak.read_table(path)[1]
    assert (s.step, s.rss_mb, s.compiles, s.step_s) == (50, 1445.9, 24, 2.573)
    assert np.isnan(s.load_1m) and np.isnan(s.accuracy) and np.isnan(s.heap_used_mb)


def test_the_memory_split_gives_each_part_its_slope_per_1000_steps():
    samples = [
        _sample(s, 1500.0 + 0.05 * s, heap_used_mb=300.0, heap_free_mb=500.0 + 0.05 * s)
        for s in (200, 400, 600, 800)
    ]
    lines = soak.memory_split(samples, settle=200)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert rows["RSS"].endswith("| +50 ± 0 |")  # 0.05 MB per step, exactly on the line
    assert rows["C heap in use"].endswith("| +0 ± 0 |")
    assert rows["C heap free, kept"].endswith("| +50 ± 0 |")
    slope, half = soak.slope_per_1000([0, 100, 200, 300], [1.0, 2.0, 1.0, 2.0])
    assert slope == pytest.approx(2.0) and half > abs(slope)  # noise: an interval over 0
    assert (
        soak.memory_split([_sample(s, 1.0, heap_used_mb=np.nan) for s in (200, 400, 600)], 200)
        == []
    )
