"""metrics.jsonl writing/resuming, TensorBoard events, and curves.png."""

import json
import math
import pathlib
import struct
import time

import numpy as np
import pytest

from srpo_jax.trainer import metrics


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


def _wandb_history(run_file: pathlib.Path, timeout_s: float = 60.0) -> dict[int, dict]:
    """{step: {key: value}} from an offline .wandb file, read with the W&B record protos only.

    W&B's service process may still be writing when `finish()` returns: the file is whole
    once it holds the run's exit record, so it is re-read until then.

    The file is W&B's 7-byte header (":W&B", magic, version) then a LevelDB-style log: 32 KiB
    blocks of chunks [crc32c u32 | length u16 | type u8 | data], type 1 a whole record, 2/3/4
    its first/middle/last pieces; a block's last < 7 bytes are padding.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        history, complete = _read_wandb_file(run_file)
        if complete or time.monotonic() > deadline:
            assert complete, f"{run_file} has no exit record after {timeout_s} s"
            return history
        time.sleep(0.2)


def _read_wandb_file(run_file: pathlib.Path) -> tuple[dict[int, dict], bool]:
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, history = 7, 32768, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break  # zero fill after the last record
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        if record.WhichOneof("record_type") == "exit":
            return history, True
        if record.WhichOneof("record_type") == "history":
            row = history.setdefault(record.history.step.num, {})
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    row[key] = json.loads(item.value_json)
    return history, False


def test_wandb_offline_gets_the_finite_metrics_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra (in the test extra) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with metrics.MetricsWriter(tmp_path, wandb_project="p", run_config={"a": {"b": 1}}) as w:
        w.write(1, {"reward/mean": 0.25, "bad": math.nan})
        w.write(2, {"reward/mean": 0.5})
        w.write(2, {"eval/avg_at_k": 0.75})  # the eval record of the same step merges in
        w.write(3, {"reward/mean": 1.0})
    run_id = (tmp_path / metrics.WANDB_ID_FILENAME).read_text().strip()
    (first,) = tmp_path.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    assert _wandb_history(first) == {
        1: {"reward/mean": 0.25},
        2: {"reward/mean": 0.5, "eval/avg_at_k": 0.75},
        3: {"reward/mean": 1.0},
    }
    # Resume from the checkpoint of step 2: step 3 comes again (W&B has it), then step 4.
    with metrics.MetricsWriter(tmp_path, wandb_project="p", resume_step=2) as w:
        w.write(3, {"reward/mean": 1.0})
        w.write(4, {"reward/mean": 2.0})
    assert (tmp_path / metrics.WANDB_ID_FILENAME).read_text().strip() == run_id
    # A session that starts in the same second as the last one gets a "-1" suffix on its folder.
    runs = set(tmp_path.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb")) - {first}
    assert len(runs) == 1  # the second session's offline file, to sync into the same run
    assert _wandb_history(runs.pop()) == {4: {"reward/mean": 2.0}}
