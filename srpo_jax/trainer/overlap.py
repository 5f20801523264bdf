"""Where each step's rollout comes from: generated in the step (rollout.overlap=0) or one step
ahead, beside the learner (rollout.overlap=1); docs/architecture.md, "One step off-policy".

`RolloutFeed.prepare(step)` returns step n's host batch (n = step + 1). With overlap=1 it
takes the pending rollout R_n, draws step n+1's prompts and submits R_{n+1} before it
scores and packs R_n; the loop's train step then runs while the engine generates, and
`wait()` (called by learn_and_sync between the train step and the weight sync) collects
R_{n+1} as the new pending rollout. So R_{n+1} samples from version n-1 (the engine's
weights until that sync), and the weight version lag of every step after the first is 1.

Engines. SGLang (and a multi-process LeaderEngine) generate in a worker thread; only the HTTP
part: the LeaderEngine's broadcast of the arrays is a collective and runs in `wait` on the
main thread, after the train step's collectives. The embedded JAX engine shares the
learner's devices, so it generates lazily in `wait` instead: the same staleness, no speed.

Exact resume: the checkpoint of step n carries the completed R_{n+1} (`record`), and the
sampler state after step n+1's draw, so a restored run trains exactly what the interrupted
one would have.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import time

import numpy as np

from srpo_jax.rollout.engine import Rollouts
from srpo_jax.rollout.leader import LeaderEngine
from srpo_jax.trainer.step import (
    HostStep,
    build_step,
    generate_whole,
    prepare_step,
    sampling_params,
)

_ARRAYS = ("token_ids_BR", "logprobs_BR", "lengths_B", "prompt_index_B")


@dataclasses.dataclass(frozen=True)
class Pending:
    """A generated rollout of step `step` (0-based) that no step has trained on yet."""

    step: int
    indices: tuple[int, ...]  # the sampler's prompt indices
    rollouts: Rollouts
    rollout_s: float  # wall time of its generation

    def record(self) -> dict:
        """JSON-able; the arrays as one base64 .npz (bit-exact round trip)."""
        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(self.rollouts, k) for k in _ARRAYS})
        return {
            "step": self.step,
            "indices": [int(i) for i in self.indices],
            "rollout_s": self.rollout_s,
            "weight_version": self.rollouts.weight_version,
            "finish_reasons": list(self.rollouts.finish_reasons),
            "arrays_npz_b64": base64.b64encode(buf.getvalue()).decode("ascii"),
        }

    @classmethod
    def from_record(cls, rec: dict) -> Pending:
        with np.load(io.BytesIO(base64.b64decode(rec["arrays_npz_b64"]))) as z:
            arrays = {k: z[k] for k in _ARRAYS}
        ro = Rollouts(
            finish_reasons=tuple(rec["finish_reasons"]),
            weight_version=int(rec["weight_version"]),
            **arrays,
        )
        return cls(int(rec["step"]), tuple(rec["indices"]), ro, float(rec["rollout_s"]))


# setup prints it once when overlap=1 meets an engine that cannot generate beside the learner.
LAGGED_ENGINE_NOTE = (
    "rollout.overlap=1 with the embedded jax engine: it shares the learner's devices, "
    "so each rollout samples from the weights one version behind after the train "
    "step (the same staleness as SGLang's overlap, without its speed-up)"
)


class _Job:
    """fn(*args) in a daemon thread. Not a ThreadPoolExecutor: the interpreter joins those
    at exit, so a run failing while a generation is in flight would wait out the HTTP
    timeouts and retries before its error line could end the process."""

    def __init__(self, fn, *args):
        self._out: tuple | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.name = "rollout"
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._out = (fn(*args), None)
        except BaseException as e:  # re-raised on the main thread by result()
            self._out = (None, e)

    def result(self):
        self._thread.join()
        value, error = self._out
        if error is not None:
            raise error
        return value


def concurrent_engine(engine) -> bool:
    """Whether the engine can generate while the learner trains (it runs elsewhere)."""
    return bool(getattr(engine, "runs_beside_learner", False))


class RolloutFeed:
    """Each step's rollout and host batch, on-policy or one step ahead (module docstring)."""

    def __init__(self, cfg, engine, train_set, sampler, tokenizer, faults, pending=None):
        self.cfg, self.engine, self.faults = cfg, engine, faults
        self.train_set, self.sampler, self.tokenizer = train_set, sampler, tokenizer
        self.overlap = cfg.rollout.overlap
        self.pending: Pending | None = None if pending is None else Pending.from_record(pending)
        self._submitted: tuple[int, tuple[int, ...]] | None = None  # (step, indices)
        self._future: _Job | None = None
        self._threaded = bool(self.overlap and concurrent_engine(engine))
        self.wait_s = 0.0  # the main loop's time blocked on rollouts in the current step

    def record(self) -> dict | None:
        """The pending rollout for the checkpoint (None: the next step generates its own)."""
        return None if self.pending is None else self.pending.record()

    def _generate(self, step: int, indices, engine) -> tuple[Rollouts, float]:
        t0 = time.perf_counter()
        prompts = [self.train_set.prompt_ids[i] for i in indices]
        ro = generate_whole(
            engine,
            prompts,
            self.cfg.algo.group_size,
            sampling_params(self.cfg, self.tokenizer),
            step=step,
            max_retries=self.cfg.rollout.max_retries,
            faults=self.faults,
        )
        return ro, time.perf_counter() - t0

    def prepare(self, step: int) -> HostStep:
        """Step `step`'s (0-based) host batch (step.build_step)."""
        cfg = self.cfg
        self.wait_s = 0.0
        t0 = time.perf_counter()
        resumed = self.pending is not None and self.pending.step == step
        if not self.overlap and not resumed:  # the on-policy loop, unchanged
            prepared = prepare_step(
                cfg, step, self.engine, self.train_set, self.sampler, self.tokenizer, self.faults
            )
            self.wait_s = prepared.metrics["time/rollout_s"]
            return prepared
        if resumed:  # (with overlap=0: a run resumed from an overlapped one, once)
            pend, self.pending = self.pending, None
            idx, ro, rollout_s = pend.indices, pend.rollouts, pend.rollout_s
        else:  # a run's first step, or a resume whose checkpoint holds no pending rollout
            self.pending = None
            idx = self.sampler.next_indices(cfg.train.prompts_per_step)
            ro, _ = self._generate(step, idx, self.engine)
            rollout_s = self.wait_s = time.perf_counter() - t0
        if self.overlap and step + 1 < cfg.train.num_steps:
            self._submit(step + 1)
        return build_step(cfg, step, ro, idx, self.train_set, self.tokenizer, rollout_s=rollout_s)

    def _submit(self, step: int) -> None:
        idx = tuple(self.sampler.next_indices(self.cfg.train.prompts_per_step))
        self._submitted = (step, idx)
        if not self._threaded:
            return  # the embedded engine generates in wait(), after the train step
        engine = self.engine.engine if isinstance(self.engine, LeaderEngine) else self.engine
        if engine is not None:  # None: a LeaderEngine off process 0 only joins the broadcast
            self._future = _Job(self._generate, step, idx, engine)

    def wait(self) -> None:
        """Collects the submitted rollout as the pending one (before the weights change)."""
        if self._submitted is None:
            return
        t0 = time.perf_counter()
        step, idx = self._submitted
        self._submitted = None
        if not self._threaded:
            ro, rollout_s = self._generate(step, idx, self.engine)
        else:
            ro, rollout_s, error = None, 0.0, None
            future, self._future = self._future, None
            if future is not None:
                try:
                    ro, rollout_s = future.result()
                except Exception as e:  # after its retries; a LeaderEngine tells everyone
                    error = e
            if isinstance(self.engine, LeaderEngine):
                ro = self.engine.share(ro, error, step=step)  # rollout_s: process 0's
            elif error is not None:
                raise error
        self.pending = Pending(step, idx, ro, rollout_s)
        self.wait_s += time.perf_counter() - t0

    def close(self) -> None:
        """Drops a rollout still in flight (its daemon thread ends with its HTTP call)."""
        self._future = None
