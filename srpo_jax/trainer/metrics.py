"""Run metrics: a JSON-lines log (the record of truth), optional TensorBoard and Weights &
Biases, plots.

workdir/metrics.jsonl holds one object per line: {"step": int, "<name>": float, ...}. Every
line is built first and then written whole and fsynced (srpo_jax/disk.py), so a killed run
loses at most the line being written; readers skip such a torn last line, and the next
writer cuts it off before appending. Non-finite values are written as JSON NaN/Infinity
(Python's json reads them back).

One line per step after a resume. A resumed run passes `resume_step` (its checkpoint's
step) and every line of a later step is dropped, torn last line included, before the first
new line is written: the re-run of a step replaces the line the killed run wrote, so the
log reads like one uninterrupted run (a training line per step, plus an evaluation line on
evaluation steps). tests/e2e/test_resume.py checks this after a kill -9.

A full disk. A line that does not fit is truncated away and the run stops with
disk.DiskFullError naming metrics.jsonl and the line's bytes (one `error:` line, exit 1);
so do TensorBoard's flush (bytes unknown) and curves.png (rendered in memory first, so its
bytes are known; the old plot stays until the new one is written whole).

Weights & Biases (config.log.wandb, off by default; `pip install srpo_jax[wandb]`) gets the
same finite scalars. Its mode comes from the environment as wandb defines it: WANDB_MODE=
offline writes workdir/wandb/offline-run-*/ for a later `wandb sync`, and an online run
needs WANDB_API_KEY or `wandb login`. The run id is kept in workdir/wandb_run_id, so a
resumed run continues the same W&B run; steps it already received (metrics.jsonl held them
before the resume truncated it) are not sent again, since W&B refuses steps that go back
and exact resume reproduces the same values anyway.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from srpo_jax import disk
from srpo_jax.trainer.config import LogConfig  # noqa: F401

FILENAME = "metrics.jsonl"
EVAL_SCORES = "eval_scores.jsonl"  # one line per evaluation: the per-question avg@k
WANDB_ID_FILENAME = "wandb_run_id"


class MetricsError(RuntimeError):
    """A metrics sink could not start (e.g. W&B online without credentials); says why."""


# Panels of curves.png: (metric key, title). Each is drawn against steps and against
# training wall-clock (evaluation time excluded), the paper's budget axis.
CURVES = (
    ("eval/avg_at_k", "eval accuracy (avg@k)"),
    ("route/sdpo_frac", "fraction routed to SDPO"),
    ("teacher/entropy_mean", "teacher entropy (nats)"),
    ("rollout/response_len_mean", "mean response length (tokens)"),
)
ELAPSED_KEY = "time/train_elapsed_s"


def _scalar(name: str, value: Any) -> float:
    try:
        return float(value)  # numpy / jax scalars and 0-d arrays
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {name!r} must be a number, got {value!r}") from e


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All complete records of a metrics.jsonl, in file order; a torn line is skipped."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill mid-write
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


class MetricsWriter:
    """Appends metrics to workdir/metrics.jsonl (and TensorBoard); no-op when not enabled.

    Only one process should write: pass enabled=(jax.process_index() == 0).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        tensorboard: bool = False,
        resume_step: int | None = None,
        enabled: bool = True,
        wandb_project: str | None = None,
        run_config: Mapping[str, Any] | None = None,
    ):
        self.path = pathlib.Path(workdir) / FILENAME
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        already_sent = max((r["step"] for r in read_metrics(self.path)), default=-1)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        else:
            _cut_torn_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
        if wandb_project is not None:
            # A fresh run (resume_step -1) starts a fresh W&B history too.
            self._wandb_sent = already_sent if resume_step != -1 else -1
            self._wandb = _start_wandb(
                pathlib.Path(workdir), wandb_project, run_config, fresh=resume_step == -1
            )

    def _truncate_after(self, step: int) -> None:
        """Keeps the complete lines of steps <= `step`; a torn line goes as well."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        # Atomic: a crash (or a full disk) here leaves the old file or the new one.
        disk.write_atomic(self.path, text.encode())

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        values = {name: _scalar(name, v) for name, v in metrics.items() if name != "step"}
        line = json.dumps({"step": int(step), **values}) + "\n"
        disk.write_whole(self._fd, line.encode(), self.path)  # whole line, or none of it
        if self._tb is not None:
            for name, v in values.items():
                if math.isfinite(v):
                    self._tb.add_scalar(name, v, global_step=int(step))
            with disk.guard(pathlib.Path(self._tb.logdir), None):
                self._tb.flush()
        if self._wandb is not None and step > self._wandb_sent:
            self._wandb.log({k: v for k, v in values.items() if math.isfinite(v)}, step=int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        os.close(self._fd)
        if self._tb is not None:
            with disk.guard(pathlib.Path(self._tb.logdir), None):
                self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cut_torn_tail(path: pathlib.Path) -> None:
    """Drops a last line without its newline (a kill mid-write), so the next line starts on
    a line of its own instead of gluing onto the torn one."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _start_wandb(workdir: pathlib.Path, project: str, run_config, *, fresh: bool):
    import wandb

    id_file = workdir / WANDB_ID_FILENAME
    resume = id_file.exists() and not fresh
    run_id = id_file.read_text().strip() if resume else uuid.uuid4().hex[:8]
    id_file.write_text(run_id + "\n")
    try:
        return wandb.init(
            project=project,
            dir=str(workdir),
            id=run_id,
            resume="allow",
            name=workdir.name,
            config=dict(run_config or {}),
            # console="off": W&B must not wrap stdout, which the progress bar writes to.
            settings=wandb.Settings(console="off", silent=True),
        )
    except Exception as e:  # wandb raises several types (usage, auth, network)
        raise MetricsError(
            f"could not start Weights & Biases (config.log.wandb=True): {type(e).__name__}: "
            f"{e}; set WANDB_MODE=offline to log to {workdir / 'wandb'} only, or WANDB_API_KEY"
        ) from e


def _series(records: Iterable[dict], key: str, elapsed_at: dict[int, float]):
    steps, times, values = [], [], []
    for r in records:
        if key in r and r[key] is not None and math.isfinite(r[key]):
            steps.append(r["step"])
            values.append(r[key])
            times.append(elapsed_at.get(r["step"], math.nan) / 3600.0)
    return steps, times, values


def plot_curves(metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> pathlib.Path:
    """Writes curves.png: each CURVES metric against step (left) and training hours (right).

    A metric absent from the log gets a panel that says "no data" rather than failing, so
    the plot works for every method (GRPO routes nothing and has no teacher entropy).
    """
    import matplotlib.pyplot as plt

    fig = curves_figure(read_metrics(metrics_jsonl_path))
    out_png = pathlib.Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()  # in memory first: a full disk then knows the bytes it needed
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return disk.write_atomic(out_png, png.getvalue())


def curves_figure(records: list[dict]):
    """The matplotlib Figure behind plot_curves (rows: CURVES; columns: step, hours)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt

    # Eval records may lack the elapsed time: take it from the step's training record.
    elapsed_at = {r["step"]: r[ELAPSED_KEY] for r in records if ELAPSED_KEY in r}
    fig, axes = plt.subplots(len(CURVES), 2, figsize=(11, 3.0 * len(CURVES)), squeeze=False)
    for row, (key, title) in enumerate(CURVES):
        steps, hours, values = _series(records, key, elapsed_at)
        for col, (xs, xlabel) in enumerate(((steps, "step"), (hours, "training time (h)"))):
            ax = axes[row][col]
            ax.set_title(f"{title} [{key}]", fontsize=9)
            ax.set_xlabel(xlabel)
            points = [(x, v) for x, v in zip(xs, values, strict=True) if math.isfinite(x)]
            if not points:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
