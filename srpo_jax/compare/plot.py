"""curves.png of a method comparison: one line per method, the seeds' range shaded.

Per-step training metrics are noisy (a handful of prompts per step), so those panels show a
5-step moving mean; evaluation accuracy is drawn as measured.
"""

from __future__ import annotations

import pathlib

import numpy as np

from srpo_jax.compare.report import ACC, ELAPSED, ENTROPY, Report, series

# (metric key, title, x axis "step" | "minutes", smoothing window in steps)
PANELS = (
    (ACC, "eval accuracy avg@k", "step", 1),
    (ACC, "eval accuracy avg@k vs training time", "minutes", 1),
    ("reward/accuracy", "train accuracy (5-step mean)", "step", 5),
    ("route/sdpo_frac", "fraction routed to SDPO (5-step mean)", "step", 5),
    (ENTROPY, "teacher entropy, nats (5-step mean)", "step", 5),
    ("rollout/response_len_mean", "response length, tokens (5-step mean)", "step", 5),
    ("time/step_s", "seconds per step", "step", 1),
    (ELAPSED, "training minutes (evaluation excluded)", "step", 1),
)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < 2:
        return values
    # np.convolve's "same" output has the longer input's length: keep the kernel shorter.
    kernel = np.ones(min(window, len(values)))
    # Normalise by the number of points under the window so the ends are not pulled to 0.
    num = np.convolve(values, kernel, mode="same")
    den = np.convolve(np.ones_like(values), kernel, mode="same")
    return num / den


def _aligned(report: Report, method: str, key: str, window: int):
    """Steps present in every seed, and the [seeds, steps] matrix of smoothed values."""
    per_seed = [series(recs, key) for _, recs in sorted(report.records[method].items())]
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    if not steps:
        return np.array([]), np.zeros((0, 0))
    mat = np.array([_smooth(np.array([s[k] for k in steps]), window) for s in per_seed])
    return np.array(steps), mat


def plot(report: Report, out_png: str | pathlib.Path) -> pathlib.Path:
    """One line per method (mean over seeds), the seeds' min-max range shaded."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 2, figsize=(12, 13), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title, xaxis, window) in zip(axes.flat, PANELS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training minutes" if xaxis == "minutes" else "step")
        drawn = False
        for i, method in enumerate(report.records):
            steps, mat = _aligned(report, method, key, window)
            if not len(steps):
                continue
            if key == ELAPSED:
                mat = mat / 60.0  # logged in seconds, drawn in minutes
            if xaxis == "minutes":
                t_steps, t_mat = _aligned(report, method, ELAPSED, 1)
                if not len(t_steps):  # no timed training steps logged
                    continue
                at = dict(zip(t_steps.tolist(), t_mat.mean(0).tolist(), strict=True))
                keep = [j for j, s in enumerate(steps) if s == 0 or s in at]
                xs = np.array([at.get(int(steps[j]), 0.0) / 60.0 for j in keep])
                mat = mat[:, keep]
            else:
                xs = steps
            color = colors[i % len(colors)]
            ax.plot(xs, mat.mean(0), color=color, label=method, linewidth=1.3)
            if mat.shape[0] > 1:
                ax.fill_between(xs, mat.min(0), mat.max(0), color=color, alpha=0.15)
            drawn = True
        if drawn:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(
        f"{', '.join(report.records)}: mean over seeds {list(report.plan.seeds)}, "
        "shaded = min-max over seeds",
        fontsize=10,
    )
    fig.tight_layout()
    out_png = pathlib.Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
