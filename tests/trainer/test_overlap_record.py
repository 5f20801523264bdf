"""The pending rollout that a rollout.overlap checkpoint carries survives its JSON record bit
for bit (the resumed run trains on exactly these arrays; tests/e2e/test_overlap.py runs it)."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from srpo_jax.rollout.engine import Rollouts
from srpo_jax.trainer import overlap
from srpo_jax.trainer.overlap import Pending


def test_the_record_round_trips_bit_exactly_through_json():
    rng = np.random.default_rng(0)
    logprobs = rng.standard_normal((6, 5)).astype(np.float32) * 10
    logprobs[0, :3] = [-0.0, np.float32(1e-45), -np.inf]  # sign, subnormal, infinity
    ro = Rollouts(
        token_ids_BR=rng.integers(0, 151_936, (6, 5), dtype=np.int32),
        logprobs_BR=logprobs,
        lengths_B=np.array([5, 1, 3, 5, 2, 4], np.int32),
        finish_reasons=("stop", "length", "abort", "stop", "stop", "length"),
        weight_version=7,
        prompt_index_B=np.repeat(np.arange(3, dtype=np.int32), 2),
    )
    pend = Pending(step=8, indices=(np.int64(3), 11, 0), rollouts=ro, rollout_s=1.25)
    back = Pending.from_record(json.loads(json.dumps(pend.record())))
    assert (back.step, back.indices, back.rollout_s) == (8, (3, 11, 0), 1.25)
    assert back.rollouts.finish_reasons == ro.finish_reasons
    assert back.rollouts.weight_version == 7
    for name in ("token_ids_BR", "logprobs_BR", "lengths_B", "prompt_index_B"):
        got, want = getattr(back.rollouts, name), getattr(ro, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name  # bit for bit, -0.0 included


def test_a_generation_in_flight_does_not_hold_the_process_at_exit():
    """A learner that fails while a threaded generation waits on a slow server must exit at
    once with its error, not after the HTTP timeouts (a thread pool would be joined)."""
    code = (
        "import time, sys\n"
        "from srpo_jax.trainer.overlap import _Job\n"
        "job = _Job(time.sleep, 120)\n"
        "sys.exit(3)\n"
    )
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == 3
    assert time.monotonic() - t0 < 30


def test_a_job_returns_its_value_and_raises_its_error_on_the_caller():
    assert overlap._Job(sorted, [3, 1, 2]).result() == [1, 2, 3]
    with pytest.raises(ZeroDivisionError):
        overlap._Job(divmod, 1, 0).result()
