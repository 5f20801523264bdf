"""The soak over a real sglang-jax server: the learner's and the server's memory over many
RL steps with the weights reaching the server through the disk.

    python benchmarks/soak_sglang.py --steps=500 --every=25 --out=docs/soak/sglang
    python benchmarks/soak_sglang.py --steps=6 --every=2 --out=/tmp/probe   # a step's time

The learner runs in this process (`trainer.setup.run`, the path of `python -m
srpo_jax.main`) on configs/demo.py with rollout.engine=sglang: it exports its weights as an
HF checkpoint under workdir/export and launches the server on it itself (the cached
sglang-jax venv of tests/rollout/sglang_env.py, one process: --enable-single-process).

The disk route on sglang-jax is `rollout.sglang.sync=restart`: sglang-jax 0.1.0rc0 has no
weight-update route at all (no /update_weights_from_disk; docs/rollout.md), so after each
step the new weights are exported to disk and the server is relaunched on them. The server
process therefore lives one step; what can grow over the run is the learner (one Popen, one
log file and one export per step) and each new server's footprint. --sync=none instead keeps
one server for the whole run (it serves the initial weights throughout; nothing is exported
after the start): what a long-lived server's memory does over many steps, which the disk
route on sglang-jax cannot show. A thread polls the
server processes' RSS (VmRSS of every process in the launched server's session, from
/proc) twice a second; each sample reports the largest a server reached in its window.

Every --every steps it records soak.py's learner figures (RSS, live jax buffers and bytes,
compiles, median step time, load) plus the server's peak RSS and how many server processes
the window saw, writes OUT.md (table and goals: the learner's as in soak.py, and the
server's peak RSS trend < 5%) and OUT.png as it goes, so a run cut short keeps its table.

What differs from the demo, and why (all else is configs/demo.py):
- the model is the tests' sglang-jax-friendly random 2-layer Qwen3 (hidden 128, head_dim
  128, 2 q / 1 kv heads; sglang_env.write_tiny_checkpoint): sglang-jax's CPU attention
  wants head_dim 128, the demo's is 16;
- --prompts prompts per step (default 4, the demo 16) and --eval_examples questions every
  --eval_every steps (default 16 every 50; the demo 256 every 10): each step's time is
  mostly the relaunch and the new server's compiles, and every row more adds to it;
- no warm-up by default (the demo's 400 steps): at this width it took some 14 min on the
  loaded 2-core machine, a fifth of the soak. Without it no rollout scores, so SRPO routes
  no row to a teacher and the learner runs its no-teacher variant; the learner's own
  long-run memory, teacher path included, is benchmarks/soak.py's subject.
docs/performance.md has the measured step time that set these.

--budget_min stops the run cleanly (checkpoint, servers stopped) after that many minutes of
RL steps (train.time_budget_hours), so a run that cannot reach --steps still ends with its
table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "rollout"))  # sglang_env: venv, checkpoint, config
sys.path.insert(0, str(REPO / "benchmarks"))  # soak: Sample, SoakView, goals
# The learner sees one CPU device, like the server (which is launched with this environment).
os.environ.update(JAX_PLATFORMS="cpu", XLA_FLAGS="")

import jax  # noqa: E402
import jax.monitoring  # noqa: E402
import sglang_env  # noqa: E402
import soak  # noqa: E402

from srpo_jax.config import from_config_dict, load_config_file  # noqa: E402
from srpo_jax.data.tokenizer import build_tiny_tokenizer  # noqa: E402
from srpo_jax.trainer import setup as trainer_setup  # noqa: E402

ROUTE = {"restart": ", the disk route", "none": ": one server, weights never synced"}


@dataclasses.dataclass
class ServerSample(soak.Sample):
    server_peak_mb: float = float("nan")  # the largest RSS a server reached in the window
    servers_seen: int = 0  # distinct server processes polled in the window


def proc_rss_mb(pid: int) -> float:
    """VmRSS of process `pid` in MB, 0.0 when it is gone or has none (a zombie)."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _session(pid: int) -> int | None:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # after "(comm)": state ppid pgrp session


def server_sessions(export_dir: pathlib.Path) -> dict[int, float]:
    """{server session id: RSS MB summed over its processes} for the servers launched on an
    export under `export_dir` (each runs in its own session: sglang_server.ServerProcess)."""
    pids = [int(p.name) for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()]
    leaders = set()
    for pid in pids:
        try:
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"launch_server" in cmd and str(export_dir).encode() in cmd:
            leaders.add(_session(pid))
    out: dict[int, float] = {}
    for pid in pids:
        sid = _session(pid)
        if sid in leaders:
            out[sid] = out.get(sid, 0.0) + proc_rss_mb(pid)
    return out


class ServerPoll(threading.Thread):
    """Polls the servers' RSS; `window()` returns (peak MB, sessions seen) since the last call."""

    def __init__(self, export_dir: pathlib.Path, period_s: float = 0.5):
        super().__init__(daemon=True)
        self.export_dir, self.period_s = export_dir, period_s
        self._lock = threading.Lock()
        self._peak, self._seen = 0.0, set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            found = server_sessions(self.export_dir)
            with self._lock:
                self._seen |= set(found)
                self._peak = max([self._peak, *found.values()])

    def window(self) -> tuple[float, int]:
        with self._lock:
            out = (self._peak, len(self._seen))
            self._peak, self._seen = 0.0, set()
        return out


class ServerSoakView(soak.SoakView):
    def __init__(self, every, compiles, report, poll: ServerPoll):
        super().__init__(every, compiles, report)
        self.poll = poll

    def _sample(self, step: int) -> None:
        report = self.report
        self.report = lambda samples: None  # the base records; we add the server, then report
        try:
            super()._sample(step)
        finally:
            self.report = report
        peak, seen = self.poll.window()
        self.samples[-1] = ServerSample(**dataclasses.asdict(self.samples[-1]),
                                        server_peak_mb=peak, servers_seen=seen)  # fmt: skip
        report(self.samples)


def server_goal(samples: list[ServerSample], settle: int):
    after = [s for s in samples if s.step >= settle and s.server_peak_mb > 0]
    if len(after) < 3:
        return []
    g = soak.trend_growth([s.step for s in after], [s.server_peak_mb for s in after])
    return [("server peak RSS growth (trend)", g, "< 5%", g < 0.05)]


def table(samples: list[ServerSample], settle: int) -> str:
    lines = [
        "| step | learner RSS MB | server peak RSS MB | servers in window | live buffers "
        "| live MB | compiles | median step s | load 1 min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s.step} | {s.rss_mb:.1f} | {s.server_peak_mb:.1f} | {s.servers_seen} | "
            f"{s.live_buffers} | {s.live_mb:.2f} | {s.compiles} | {s.step_s:.3f} | "
            f"{s.load_1m:.1f} |"
        )
    lines += ["", f"Goals, from step {settle} on:", "", "| goal | measured | limit | met |"]
    lines.append("|---|---:|---|---|")
    for name, value, limit, met in soak.goals(samples, settle) + server_goal(samples, settle):
        shown = f"{value:+.1%}" if "%" in limit else f"{value:.0f}"
        lines.append(f"| {name} | {shown} | {limit} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def plot(samples: list[ServerSample], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s.step for s in samples]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    series = [("learner RSS MB", "rss_mb"), ("server peak RSS MB", "server_peak_mb"),
              ("live MB", "live_mb"), ("median step s", "step_s")]  # fmt: skip
    for ax, (title, field) in zip(axes, series, strict=True):
        ax.plot(steps, [getattr(s, field) for s in samples], marker=".")
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)  # the learner's RSS is measured in this process: no figure may pile up


def write_config(args, root: pathlib.Path) -> pathlib.Path:
    ckpt = sglang_env.write_tiny_checkpoint(root / "tiny", seed=0)
    build_tiny_tokenizer(root / "tokenizer")  # 512 ids: the checkpoint's vocabulary
    python = sglang_env.ensure_venv(sglang_env.find_python312())
    settings = {
        # The demo's, where sglang_env.RUN_SETTINGS (the tests' short runs) changed them.
        "data.synthetic_train_size": 512,
        "data.synthetic_test_size": 256,
        "algo.group_size": 8,
        "checkpoint.every_steps": 10,
        "train.num_steps": args.steps,
        "train.prompts_per_step": args.prompts,
        "train.mini_batch_prompts": args.prompts,
        "data.max_response_len": args.response_len,
        "warmup.steps": args.warmup,
        # A run that cannot finish in time stops cleanly (checkpoint, servers stopped).
        "train.time_budget_hours": args.budget_min / 60.0,
        "eval.every_steps": args.eval_every,
        "eval.max_examples": args.eval_examples,
        "log.progress": False,
        "rollout.engine": "sglang",
        "rollout.sglang.sync": args.sync,
        "rollout.sglang.base_port": 0,
        "rollout.sglang.launch_env": dict(sglang_env.server_env()),
        "rollout.sglang.launch_command": sglang_env.launch_template(python)
        + " --enable-single-process",
    }
    return sglang_env.write_run_config(
        root / "run.py", tokenizer=root / "tokenizer", ckpt=ckpt, settings=settings
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--settle", type=int, default=100)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--response_len", type=int, default=16)  # the demo's
    p.add_argument("--warmup", type=int, default=0)  # the demo: 400, see the docstring
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--eval_examples", type=int, default=16)
    p.add_argument("--sync", default="restart", choices=("restart", "none"))
    p.add_argument("--budget_min", type=float, default=0.0, help="RL minutes; 0: no limit")
    p.add_argument("--workdir", default="")
    p.add_argument("--out", default="soak_sglang")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiles = [0]

    def on_event(event: str, duration_s: float, **_) -> None:
        if event == soak.COMPILE_EVENT:
            compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)
    root = pathlib.Path(tempfile.mkdtemp(prefix="srpo_soak_sglang_"))
    cfg = from_config_dict(load_config_file(str(write_config(args, root))))
    workdir = pathlib.Path(args.workdir or root / "run")
    poll = ServerPoll((workdir / "export").resolve())
    poll.start()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]

    def report(samples: list[ServerSample]) -> None:
        head = (
            f"Soak over a real sglang-jax server (sync={args.sync}{ROUTE[args.sync]}), "
            f"{samples[-1].step} of {args.steps} RL steps: configs/demo.py with "
            f"{args.prompts} prompts x {cfg.algo.group_size} rollouts per step, responses up "
            f"to {args.response_len} tokens, warm-up {args.warmup}, eval every "
            f"{args.eval_every} steps on {args.eval_examples} questions, checkpoints every "
            f"{cfg.checkpoint.every_steps}; {datetime.date.today()}, {platform.node()} "
            f"({os.cpu_count()} cores), load {load0:.1f} at the start, "
            f"{(time.perf_counter() - t0) / 60:.1f} min of wall time."
        )
        out.with_suffix(".md").write_text(head + "\n\n" + table(samples, args.settle))
        plot(samples, out.with_suffix(".png"))

    view = ServerSoakView(args.every, compiles, report, poll)
    try:
        trainer_setup.run(cfg, str(workdir), progress=view)
    finally:
        poll.stop.set()
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
