"""metrics.jsonl writing/resuming, TensorBoard events, and curves.png."""

import json
import math

import numpy as np
import pytest

from srpo_jax import metrics


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_one_object_per_line_and_append_on_reopen(tmp_path):
    with metrics.MetricsWriter(tmp_path) as w:
        w.write(1, {"loss": np.float32(0.5), "route/sdpo_frac": 0.25})
        w.write(2, {"loss": 0.25, "bad": float("nan")})
    with metrics.MetricsWriter(tmp_path) as w:  # a restart keeps appending
        w.write(3, {"loss": 1})
    lines = _lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert lines[0] == {"step": 1, "loss": 0.5, "route/sdpo_frac": 0.25}
    assert math.isnan(lines[1]["bad"]) and lines[2]["loss"] == 1.0


def test_resume_drops_lines_after_checkpoint_and_torn_line(tmp_path):
    with metrics.MetricsWriter(tmp_path) as w:
        for step in range(1, 6):
            w.write(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write
    assert [r["step"] for r in metrics.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    with metrics.MetricsWriter(tmp_path, resume_step=3) as w:
        w.write(4, {"loss": 40.0})
    lines = _lines(tmp_path / "metrics.jsonl")  # every line parses again
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_non_numeric_metric_is_named(tmp_path):
    with metrics.MetricsWriter(tmp_path) as w, pytest.raises(TypeError, match="'route'"):
        w.write(1, {"route": "abc"})


def test_disabled_writer_writes_nothing(tmp_path):
    w = metrics.MetricsWriter(tmp_path / "run", enabled=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()


def test_tensorboard_events_written(tmp_path):
    with metrics.MetricsWriter(tmp_path, tensorboard=True) as w:
        w.write(1, {"loss": 0.5})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_progress_bar_counts_from_initial():
    bar = metrics.progress_bar(10, initial=4)
    bar.update(2)
    assert bar.n == 6
    bar.close()


def test_plot_curves_writes_png_and_marks_missing_panels(tmp_path):
    with metrics.MetricsWriter(tmp_path) as w:
        for step in range(1, 11):
            w.write(
                step,
                {
                    "route/sdpo_frac": 1 / step,
                    "time/train_elapsed_s": 60.0 * step,
                    "rollout/response_len_mean": 100.0 + step,
                },
            )
            if step % 5 == 0:  # eval records carry no elapsed time of their own
                w.write(step, {"eval/avg_at_k": 0.1 * step})
    out = metrics.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = metrics.curves_figure(metrics.read_metrics(tmp_path / "metrics.jsonl"))
    axes = np.asarray(fig.axes).reshape(len(metrics.CURVES), 2)
    texts = {
        key: [t.get_text() for ax in axes[i] for t in ax.texts]
        for i, (key, _) in enumerate(metrics.CURVES)
    }
    assert texts["teacher/entropy_mean"] == ["no data", "no data"]
    assert texts["eval/avg_at_k"] == []
    # Eval accuracy against training time uses the step's elapsed seconds (5 and 10 min).
    hours = axes[0][1].lines[0].get_xdata()
    np.testing.assert_allclose(hours, [300 / 3600, 600 / 3600])
    np.testing.assert_allclose(axes[0][0].lines[0].get_ydata(), [0.5, 1.0])


def test_plot_curves_with_empty_log(tmp_path):
    out = metrics.plot_curves(tmp_path / "missing.jsonl", tmp_path / "plots" / "curves.png")
    assert out.exists()
