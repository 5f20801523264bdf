"""A soak: the CPU demo run for many RL steps, with evaluation and checkpoints on, sampled
every few steps for what grows over a long run.

    python benchmarks/soak.py --steps=2000 --every=50 --out=docs/soak/soak   # ~25 min idle
    python benchmarks/soak.py --retable --out=docs/soak/soak   # goals and plot from OUT.md

It trains configs/demo.py in this process through `trainer.setup.run` (the same path as
`python -m srpo_jax.main`) and, every --every steps, records:
- rss_mb: this process's resident memory (VmRSS in /proc/self/status);
- live_buffers / live_mb: the jax arrays alive on the devices (jax.live_arrays());
- compiles: XLA compilations so far (jax's backend-compile events), so a cache that keeps
  growing shows as a count that keeps climbing;
- step_s: the median step time over the window (time/step_s from the metrics);
- s_per_kslot: the median of each step's time per 1000 decode slots (rollout/rows x
  rollout/response_len_max: the embedded engine decodes every row until the longest one
  stops), the step time with the workload divided out, since the policy's response lengths
  move over a run and the step time with them;
- accuracy, routed_frac, teacher_rows, truncated_frac: window means of the step's training
  accuracy, fraction of rows routed to the teacher, teacher prompts built and rows cut at
  max_response_len, which show that every path of the step (routing, the teacher pass, the
  GRPO rows) stayed busy;
- heap_used_mb, heap_free_mb, py_blocks: glibc's heap in use and the free memory it keeps,
  and Python's allocated blocks (heap_stats), which say which part of RSS moves.

It writes the table to OUT.md as it goes (a soak cut short keeps its table), with the goals
checked after the first --settle steps (RSS and live bytes grow < 5%, the compile count is
constant, the step time drifts < 10%) and the slopes of RSS and its parts, and plots the
series to OUT.png. The warm-up is the demo's; the RL steps run at lr 3e-4 with
data.score_truncated off (LR, SCORE_TRUNCATED: the demo's own 1e-3 with cut responses
scored collapses after ~235 steps). --trim calls malloc_trim(0) after each sample: the
experiment that showed where the RSS growth came from (srpo_jax/trainer/host_memory.py).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.monitoring
import numpy as np

from srpo_jax.config import from_config_dict, load_config_file
from srpo_jax.trainer import progress as progress_lib
from srpo_jax.trainer import setup as trainer_setup

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRENDS = ("rss_mb", "live_mb", "step_s", "s_per_kslot")
# The soak's own learning rate and reward setting (configs/demo.py keeps its figures): at the
# demo's 1e-3, with cut responses scored, the policy stops ending its responses after ~200
# steps and every rollout fails from step ~235 (docs/performance.md), so the routing and
# teacher paths would run in the first tenth of the soak only.
LR = 3e-4
SCORE_TRUNCATED = False
TRIMMED = ", malloc_trim(0) after each sample"


@dataclasses.dataclass
class Sample:
    step: int
    rss_mb: float
    live_buffers: int
    live_mb: float
    compiles: int
    step_s: float
    load_1m: float = float("nan")  # the machine's load average: other work slows the steps
    # Window means of the step's own metrics, which show that every path of the step ran:
    # the training accuracy, the rows routed to the teacher (SDPO rows), the teacher prompts
    # built and the rows cut at max_response_len. nan in tables that predate them.
    accuracy: float = float("nan")
    routed_frac: float = float("nan")
    teacher_rows: float = float("nan")
    truncated_frac: float = float("nan")
    # Where the host memory is (heap_stats): the C heap's bytes in use and the free bytes it
    # keeps, and the blocks Python's own allocator holds.
    heap_used_mb: float = float("nan")
    heap_free_mb: float = float("nan")
    py_blocks: float = float("nan")
    s_per_kslot: float = float("nan")  # step seconds per 1000 decode slots (the docstring)


# Sample field <- the step metric it averages over the window.
PATH_METRICS = {
    "accuracy": "reward/accuracy",
    "routed_frac": "route/sdpo_frac",
    "truncated_frac": "rollout/truncated_frac",
}


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc >= 2.33), totals over every arena."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2


def heap_stats() -> dict[str, float]:
    """heap_used_mb: what malloc has handed out and not got back (uordblks + hblkhd, the
    mmapped blocks); heap_free_mb: free bytes it keeps inside its arenas (fordblks). A leak in
    C or C++ code (XLA, the checkpointer) grows the first; free memory the allocator does not
    give back to the kernel grows the second with the first flat. py_blocks: Python's own."""
    m = LIBC.mallinfo2()
    return {
        "heap_used_mb": (m.uordblks + m.hblkhd) / 2**20,
        "heap_free_mb": m.fordblks / 2**20,
        "py_blocks": float(sys.getallocatedblocks()),
    }


def rss_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("no VmRSS in /proc/self/status")


class SoakView(progress_lib.Progress):
    """The console view of the run, which also samples the process every `every` steps."""

    def __init__(self, every: int, compiles: list[int], report, trim: bool = False):
        super().__init__(log_every=every, bar=False)
        self.every, self.compiles, self.report, self.trim = every, compiles, report, trim
        self.samples: list[Sample] = []
        self._window: list[dict[str, float]] = []

    def update(self, step: int, metrics) -> None:
        super().update(step, metrics)
        if "time/step_s" in metrics:  # an RL step (the warm-up reports its loss only)
            keys = ("time/step_s", "rollout/rows", "rollout/response_len_max")
            keys += ("route/teacher_frac", *PATH_METRICS.values())
            self._window.append({k: float(metrics.get(k, np.nan)) for k in keys})
            if step % self.every == 0:
                self._sample(step)

    def _sample(self, step: int) -> None:
        arrays = jax.live_arrays()
        w = self._window
        paths = {f: float(np.mean([m[k] for m in w])) for f, k in PATH_METRICS.items()}
        teacher = float(np.mean([m["route/teacher_frac"] * m["rollout/rows"] for m in w]))
        self.samples.append(
            Sample(
                step=step,
                rss_mb=rss_mb(),
                live_buffers=len(arrays),
                live_mb=sum(a.nbytes for a in arrays) / 2**20,
                compiles=self.compiles[0],
                step_s=statistics.median(m["time/step_s"] for m in w),
                s_per_kslot=statistics.median(
                    1000 * m["time/step_s"] / (m["rollout/rows"] * m["rollout/response_len_max"])
                    for m in w
                ),
                load_1m=os.getloadavg()[0],
                teacher_rows=teacher,
                **paths,
                **heap_stats(),
            )
        )
        self._window = []
        if self.trim:  # the allocator experiment: free arena memory back to the kernel
            LIBC.malloc_trim(0)
        self.report(self.samples)  # written as it goes: a long soak cut short keeps its table


def trend_growth(steps: list[int], values: list[float]) -> float:
    """The least-squares line's change over the span, relative to its value at the start.

    One sample of RSS or step time moves by several percent with the allocator and with
    whatever else the machine runs; the fitted line over every sample shows a leak (a steady
    climb) without reading that noise as growth."""
    x, y = np.asarray(steps, float), np.asarray(values, float)
    slope, intercept = np.polyfit(x, y, 1)
    start = intercept + slope * x[0]
    return float(slope * (x[-1] - x[0]) / start) if start else 0.0


def goals(samples: list[Sample], settle: int) -> list[tuple[str, float, str, bool]]:
    """(goal, measured, limit, met) over the samples from step `settle` on: the trend of RSS,
    live bytes and step time (`trend_growth`), and the compiles added."""
    after = [s for s in samples if s.step >= settle]
    if len(after) < 3:
        return []
    steps = [s.step for s in after]
    series = {f: [getattr(s, f) for s in after] for f in TRENDS}
    # A column an older table lacks (nan) has no trend.
    trend = {f: np.nan if np.isnan(v).any() else trend_growth(steps, v) for f, v in series.items()}
    added = after[-1].compiles - after[0].compiles
    return [
        ("RSS growth (trend)", trend["rss_mb"], "< 5%", trend["rss_mb"] < 0.05),
        ("live bytes growth (trend)", trend["live_mb"], "< 5%", trend["live_mb"] < 0.05),
        ("compiles added", added, "0", added == 0),
        ("step time drift (trend)", trend["step_s"], "< 10%", abs(trend["step_s"]) < 0.10),
        *_per_slot_goal(trend["s_per_kslot"]),
    ]


def _per_slot_goal(drift: float) -> list[tuple[str, float, str, bool]]:
    """The step-time goal again with the workload divided out (none for older tables)."""
    if np.isnan(drift):
        return []
    return [("step time per decode slot drift (trend)", drift, "< 10%", abs(drift) < 0.10)]


# Where host memory goes: (label, Sample field, unit) of the slopes table.
MEMORY_SPLIT = (
    ("RSS", "rss_mb", "MB"),
    ("C heap in use", "heap_used_mb", "MB"),
    ("C heap free, kept", "heap_free_mb", "MB"),
    ("Python blocks", "py_blocks", "blocks"),
)


def slope_per_1000(steps: list[int], values: list[float]) -> tuple[float, float]:
    """The least-squares slope per 1000 steps and the half-width of its 95% interval."""
    from scipy import stats

    x, y = np.asarray(steps, float), np.asarray(values, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    # The slope's standard error from the residuals (linregress's is nan for a flat series).
    stderr = np.sqrt(residual @ residual / (len(x) - 2) / np.sum((x - x.mean()) ** 2))
    return 1000 * float(slope), 1000 * float(stats.t.ppf(0.975, len(x) - 2) * stderr)


def memory_split(samples: list[Sample], settle: int) -> list[str]:
    """Table lines: the slope of RSS and of its parts from step `settle` on (none for tables
    without the heap columns)."""
    after = [s for s in samples if s.step >= settle and not np.isnan(s.heap_used_mb)]
    if len(after) < 3:
        return []
    lines = ["", f"Host memory, slopes from step {settle} on:", ""]
    lines += ["| series | mean | per 1000 steps (95% interval) |", "|---|---:|---:|"]
    steps = [s.step for s in after]
    for label, field, unit in MEMORY_SPLIT:
        values = [getattr(s, field) for s in after]
        slope, half = slope_per_1000(steps, values)
        lines.append(f"| {label} | {np.mean(values):.0f} {unit} | {slope:+.0f} ± {half:.0f} |")
    return lines


def table(samples: list[Sample], settle: int) -> str:
    lines = [
        "| step | RSS MB | live buffers | live MB | compiles | median step s | load 1 min "
        "| accuracy | routed frac | teacher rows | truncated frac | heap used MB | heap free MB "
        "| py blocks | step s per 1k slots |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(value: float, fmt: str) -> str:
        return "-" if np.isnan(value) else format(value, fmt)

    for s in samples:
        lines.append(
            f"| {s.step} | {s.rss_mb:.1f} | {s.live_buffers} | {s.live_mb:.2f} | "
            f"{s.compiles} | {s.step_s:.3f} | {cell(s.load_1m, '.1f')} | "
            f"{cell(s.accuracy, '.3f')} | {cell(s.routed_frac, '.3f')} | "
            f"{cell(s.teacher_rows, '.1f')} | {cell(s.truncated_frac, '.3f')} | "
            f"{cell(s.heap_used_mb, '.1f')} | {cell(s.heap_free_mb, '.1f')} | "
            f"{cell(s.py_blocks, '.0f')} | {cell(s.s_per_kslot, '.4f')} |"
        )
    lines += ["", f"Goals, from step {settle} on:", "", "| goal | measured | limit | met |"]
    lines.append("|---|---:|---|---|")
    for name, value, limit, met in goals(samples, settle):
        shown = f"{value:+.1%}" if "%" in limit else f"{value:.0f}"
        lines.append(f"| {name} | {shown} | {limit} | {'yes' if met else 'NO'} |")
    lines += memory_split(samples, settle)
    return "\n".join(lines) + "\n"


def plot(samples: list[Sample], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s.step for s in samples]
    fig, axes = plt.subplots(2, 3, figsize=(15, 6.4))
    panels = [  # (title, fields): one line per field
        ("RSS and C heap, MB", ("rss_mb", "heap_used_mb", "heap_free_mb")),
        ("live jax MB", ("live_mb",)),
        ("compiles", ("compiles",)),
        ("median step s, and per 1k decode slots", ("step_s", "s_per_kslot")),
        ("paths (window means)", ("accuracy", "routed_frac", "truncated_frac")),
        ("teacher rows per step", ("teacher_rows",)),
    ]
    for ax, (title, fields) in zip(axes.flat, panels, strict=True):
        for field in fields:
            ax.plot(steps, [getattr(s, field) for s in samples], marker=".", label=field)
        if len(fields) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)  # the soak measures its own RSS: no figure may pile up


def read_table(path: pathlib.Path) -> tuple[str, list[Sample]]:
    """(the header paragraph, the samples) of a table this script wrote."""
    text = path.read_text()
    samples = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit() and len(cells) >= 6:
            step, rss, bufs, live, comp, sec = cells[:6]
            rest = [float("nan") if c == "-" else float(c) for c in cells[6:15]]
            rest += [float("nan")] * (9 - len(rest))  # older tables lack these columns
            samples.append(
                Sample(int(step), float(rss), int(bufs), float(live), int(comp), float(sec), *rest)
            )
    return text.split("\n\n")[0], samples


def soak_config(args):
    """configs/demo.py with the soak's steps, warm-up, learning rate and reward setting."""
    root = pathlib.Path(__file__).resolve().parents[1]
    config = load_config_file(str(root / "configs/demo.py"))
    with config.unlocked():
        config.train.num_steps = args.steps
        config.warmup.steps = args.warmup
        config.optim.lr = args.lr or config.optim.lr
        config.data.score_truncated = args.score_truncated
        config.eval.max_examples = 64  # evaluation every 10 steps stays a small part
        config.log.progress = False
    return from_config_dict(config)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--settle", type=int, default=200)
    p.add_argument("--warmup", type=int, default=400)  # the demo's: rollouts succeed
    p.add_argument("--workdir", default="")
    p.add_argument("--out", default="soak")
    p.add_argument("--retable", action="store_true", help="recompute OUT.md's goals only")
    p.add_argument("--lr", type=float, default=LR, help="0: the demo's own")
    p.add_argument(
        "--score-truncated",
        action=argparse.BooleanOptionalAction,
        default=SCORE_TRUNCATED,
        help="data.score_truncated: whether a response cut at max_response_len is scored",
    )
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) after every sample")
    return p


def main() -> None:
    args = parser().parse_args()
    out = pathlib.Path(args.out)
    if args.retable:
        head, samples = read_table(out.with_suffix(".md"))
        out.with_suffix(".md").write_text(head + "\n\n" + table(samples, args.settle))
        plot(samples, out.with_suffix(".png"))
        return

    compiles = [0]

    def on_event(event: str, duration_s: float, **_) -> None:
        if event == COMPILE_EVENT:
            compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)
    cfg = soak_config(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def report(samples: list[Sample]) -> None:
        head = (
            f"Soak of configs/demo.py, {samples[-1].step} of {args.steps} RL steps (warm-up "
            f"{args.warmup}, lr {cfg.optim.lr:g}, data.score_truncated "
            f"{cfg.data.score_truncated}{TRIMMED if args.trim else ''}, eval every "
            f"{cfg.eval.every_steps} steps on {cfg.eval.max_examples} questions, checkpoints every "
            f"{cfg.checkpoint.every_steps}), {datetime.date.today()}, {platform.node()} "
            f"({jax.devices()[0].platform}), {(time.perf_counter() - t0) / 60:.1f} min of "
            "wall time.\n\n"
        )
        out.with_suffix(".md").write_text(head + table(samples, args.settle))
        plot(samples, out.with_suffix(".png"))

    view = SoakView(args.every, compiles, report, trim=args.trim)
    workdir = args.workdir or tempfile.mkdtemp(prefix="srpo_soak_")
    trainer_setup.run(cfg, workdir, progress=view)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
