"""The console view: plain lines off a terminal, a bar on one, phase times, log levels."""

import io
import logging
import os
import re

import pytest
from absl import logging as absl_logging

from srpo_jax import log_levels
from srpo_jax.trainer import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _rl_metrics(step):
    return {
        "reward/mean": step / 10,
        "reward/accuracy": step / 20,
        "route/sdpo_frac": 0.5,
        "teacher/entropy_mean": 1.25,
        "time/step_s": 0.5,
        "loss/total": 9.0,  # not one of the shown metrics
    }


def test_plain_lines_every_n_steps_and_at_the_last():
    out = io.StringIO()
    view = progress.Progress(log_every=3, stream=out)
    view.start("rl", 7)
    for step in range(1, 8):
        view.update(step, _rl_metrics(step))
        if step == 4:
            view.write("step 4: eval avg@4 = 0.500")
    view.close()
    lines = out.getvalue().splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == [
        "rl 3/7",
        "step 4: eval avg@4 = 0.500",
        "rl 6/7",
        "rl 7/7",
    ]
    fields = lines[0].split(" | ")
    assert fields[1:6] == [
        "reward 0.300",
        "acc 0.150",
        "routed 0.500",
        "H_teacher 1.250",
        "0.50 s/step",
    ]
    assert re.fullmatch(r"eta \d+:\d\d", fields[6])
    assert len(fields) == 7  # loss/total is not shown
    assert "\r" not in out.getvalue()  # no bar redraws in a log file


def test_plain_lines_count_from_a_resumed_step_and_skip_missing_metrics():
    out = io.StringIO()
    view = progress.Progress(log_every=2, stream=out)
    view.start("rl", 6, initial=3)
    for step in range(4, 7):
        view.update(step, {"reward/mean": 0.0, "reward/accuracy": 0.0, "time/step_s": 1.0})
    lines = out.getvalue().splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == ["rl 4/6", "rl 6/6"]
    assert "routed" not in lines[0] and "H_teacher" not in lines[0]  # GRPO has neither


def test_plain_eta_uses_the_rate_since_the_previous_line(monkeypatch):
    # Read at start and at each printed line (steps 2, 4, 6): the first step's 100 s
    # compile weighs on the first line's ETA only.
    times = {"start": 0.0, 2: 101.0, 4: 103.0, 6: 105.0}
    now = {"t": times["start"]}
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now["t"])
    out = io.StringIO()
    view = progress.Progress(log_every=2, stream=out)
    view.start("rl", 6)
    for step in range(1, 7):
        now["t"] = times.get(step, now["t"])
        view.update(step, {})
    etas = [ln.rsplit("eta ", 1)[1] for ln in out.getvalue().splitlines()]
    assert etas == ["3:22", "0:02", "0:00"]  # 101 s / 2 steps x 4 left; 2 s / 2 x 2; none left


def test_terminal_gets_a_bar_with_metrics_and_messages_above_it():
    out = _Terminal()
    view = progress.Progress(log_every=100, stream=out)
    assert view.interactive
    view.start("warm-up", 4, shown=progress.WARMUP_METRICS)
    for step in range(1, 5):
        view.update(step, {"loss": 2.0 / step})
    view.write("a message")
    view.close()
    text = out.getvalue()
    assert "warm-up: 100%" in text and "4/4" in text
    assert "loss 0.5000" in text  # the last step's loss in the bar's postfix
    assert text.count("a message\n") == 1


def test_bar_off_in_a_terminal_when_config_says_so():
    out = _Terminal()
    view = progress.Progress(log_every=1, stream=out, bar=False)
    view.start("rl", 1)
    view.update(1, {"reward/mean": 1.0})
    assert out.getvalue().startswith("rl 1/1 | reward 1.000 | eta")


def test_disabled_view_prints_nothing_but_still_times_phases():
    out = io.StringIO()
    view = progress.Progress(stream=out, enabled=False)
    view.start("rl", 2)
    view.update(2, {"reward/mean": 1.0})
    view.write("hidden")
    view.close()
    assert out.getvalue() == ""
    assert list(view.phase_seconds) == ["setup", "rl"]
    assert all(s >= 0 for s in view.phase_seconds.values())


def test_log_every_must_be_positive():
    with pytest.raises(ValueError, match="log_every must be >= 1, got 0"):
        progress.Progress(log_every=0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3723, "1:02:03")]
)
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def test_verbosity_hides_library_info_but_keeps_warnings(caplog, monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", raising=False)
    root, absl = logging.getLogger(), absl_logging.get_absl_logger()
    saved = root.level, absl.level
    try:
        caplog.set_level(logging.NOTSET)  # caplog's handler takes everything the loggers pass
        log_levels.apply(0)
        logging.getLogger("orbax.checkpoint").info("saving step 4")
        logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
        absl_logging.info("absl info from a library")
        logging.getLogger("orbax.checkpoint").warning("disk nearly full")
        absl_logging.warning("absl warning")
        assert [r.getMessage() for r in caplog.records] == ["disk nearly full", "absl warning"]
        assert os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] == "1"
        caplog.clear()
        log_levels.apply(1)
        logging.getLogger("orbax.checkpoint").info("saving step 4")
        absl_logging.info("absl info from a library")
        logging.getLogger("jax").debug("debug stays hidden at verbosity 1")
        assert [r.getMessage() for r in caplog.records] == [
            "saving step 4",
            "absl info from a library",
        ]
    finally:
        root.setLevel(saved[0])
        absl.setLevel(saved[1])


def test_aborted_run_ends_the_bar_line_before_the_error(monkeypatch, tmp_path):
    """trainer.run closes the view in a finally: main's `error:` line must not be glued to
    a bar that was still drawing (tqdm ends its line only on close)."""
    from srpo_jax import config as config_lib
    from srpo_jax.trainer import setup as trainer
    from srpo_jax.trainer.faults import FaultInjection

    out = _Terminal()
    view = progress.Progress(stream=out)

    def setup_that_aborts(cfg, wd, faults, v):
        v.start("warm-up", 10, shown=progress.WARMUP_METRICS)
        v.update(3, {"loss": 1.0})
        raise trainer.TrainingAborted("step 3: gave up")

    monkeypatch.setattr(trainer, "setup", setup_that_aborts)
    cfg = config_lib.from_config_dict(config_lib.default_config_dict())
    with pytest.raises(trainer.TrainingAborted):
        trainer.run(cfg, tmp_path, faults=FaultInjection(), progress=view)
    text = out.getvalue()
    assert text.endswith("\n"), repr(text[-80:])
    assert "3/10" in text.rstrip("\n").split("\n")[-1]
