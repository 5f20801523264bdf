"""What a person sees while it trains: a live bar in a terminal, plain lines elsewhere.

One `Progress` per run (process 0 only; the others pass enabled=False and print nothing).
It runs through phases, "warm-up" then "rl", each a count of steps:

- In a terminal (stdout is a TTY and config.log.progress is on) each phase is a tqdm bar
  showing step/total, rate, ETA and the step's key metrics (reward, train accuracy, routed
  fraction, teacher entropy, seconds per step). `write` prints a line above the bar, so
  evaluation results and notices scroll while the bar stays at the bottom.
- Anywhere else (CI, `| tee`, a log file) a bar would fill the file with carriage
  returns, so it prints one plain line every `log_every` steps and at the phase's last
  step, with the same metrics and an ETA from the rate since the previous line:

      rl 20/40 | reward 0.250 | acc 0.250 | routed 0.562 | H_teacher 0.812 | 1.31 s/step | eta 0:26

Every message goes to stdout once (no second copy through absl logging). The wall-clock
each phase took (setup before the first phase, then each phase) is kept for the
end-of-run summary (srpo_jax/trainer/report.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

# (metric key in metrics.jsonl, short label, format). Keys a step lacks are left out: GRPO
# routes nothing, and teacher entropy exists only on steps that routed tokens.
RL_METRICS: tuple[tuple[str, str, str], ...] = (
    ("reward/mean", "reward", ".3f"),
    ("reward/accuracy", "acc", ".3f"),
    ("route/sdpo_frac", "routed", ".3f"),
    ("teacher/entropy_mean", "H_teacher", ".3f"),
)
WARMUP_METRICS: tuple[tuple[str, str, str], ...] = (("loss", "loss", ".4f"),)
STEP_SECONDS_KEY = "time/step_s"


def format_duration(seconds: float) -> str:
    """H:MM:SS (or M:SS under an hour), the way tqdm prints its ETA."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def metric_fields(metrics: Mapping[str, float], shown: Sequence[tuple[str, str, str]]) -> list:
    return [f"{label} {metrics[key]:{fmt}}" for key, label, fmt in shown if key in metrics]


class Progress:
    """Bars (or plain lines) for the run's phases, plus `write` for one-off messages."""

    def __init__(
        self,
        *,
        log_every: int = 10,
        enabled: bool = True,
        bar: bool = True,
        stream: TextIO | None = None,
    ):
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.log_every = log_every
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bar and isatty is not None and isatty()
        self.phase_seconds: dict[str, float] = {}
        self._phase = "setup"
        self._phase_start = time.perf_counter()
        self._bar = None
        self._total, self._shown = 0, RL_METRICS
        self._last_line = (self._phase_start, 0)  # (time, step) of the last plain line

    # -- phases

    def start(
        self,
        name: str,
        total: int,
        *,
        initial: int = 0,
        shown: Sequence[tuple[str, str, str]] = RL_METRICS,
    ) -> None:
        """Ends the current phase (timing it) and starts counting `name` from `initial`."""
        self._end_phase()
        self._phase, self._phase_start = name, time.perf_counter()
        self._total, self._shown = total, shown
        self._last_line = (self._phase_start, initial)
        if self.enabled and self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=name, file=self.stream, dynamic_ncols=True
            )

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        """`step` (1-based, of `total`) is done, with these metrics."""
        if not self.enabled:
            return
        fields = metric_fields(metrics, self._shown)
        if STEP_SECONDS_KEY in metrics:
            fields.append(f"{metrics[STEP_SECONDS_KEY]:.2f} s/step")
        if self._bar is not None:
            self._bar.set_postfix_str(" | ".join(fields), refresh=False)
            self._bar.update(step - self._bar.n)
        elif step % self.log_every == 0 or step == self._total:
            # The rate since the previous line: the first steps' compiles do not stay in it.
            now = time.perf_counter()
            (t_prev, step_prev), self._last_line = self._last_line, (now, step)
            eta = (now - t_prev) / max(step - step_prev, 1) * (self._total - step)
            line = " | ".join([f"{self._phase} {step}/{self._total}", *fields])
            self._print(f"{line} | eta {format_duration(eta)}")

    def close(self) -> None:
        """Ends the last phase; the bar stays on screen at its final state."""
        self._end_phase()
        self._phase, self._phase_start = "", time.perf_counter()

    def _end_phase(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._phase:
            elapsed = time.perf_counter() - self._phase_start
            self.phase_seconds[self._phase] = self.phase_seconds.get(self._phase, 0.0) + elapsed

    # -- messages

    def write(self, message: str) -> None:
        """Prints `message` once, above the bar when one is showing."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self._print(message)

    def _print(self, message: str) -> None:
        print(message, file=self.stream, flush=True)
