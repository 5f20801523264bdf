"""Fault injection for the reliability tests: kills, non-finite steps, rollout failures.

Read from the environment and never from the config, so a restarted run with the same
command line does not fault again (the tests restart without the variable):

  SRPO_DEBUG_KILL=mid_step:N          SIGKILL the trainer during step N (1-based, the step
                                      number of metrics.jsonl), after its rollouts, before
                                      training (once any asynchronous checkpoint write is done)
  SRPO_DEBUG_KILL=after_checkpoint:N  SIGKILL the trainer once the checkpoint of step N is
                                      finalised, before step N+1 starts
  SRPO_DEBUG_NAN_STEPS=3,4            poison steps 3 and 4's batches (NaN advantages and
                                      rollout log-probs) so their gradient norm is NaN
  SRPO_DEBUG_ROLLOUT_FAILS=N:k        the first k engine calls of step N raise
  SRPO_DEBUG_KILL_SERVER=N            during step N's first generation attempt, SIGKILL the
                                      first launched SGLang server (its whole process group)
                                      as soon as one of its requests has come back: the batch
                                      is partly generated when the server dies

Nothing here runs unless its variable is set.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

import numpy as np

from srpo_jax.rollout.engine import RolloutError


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """The faults of the module docstring, parsed from the environment."""

    kill_point: str = ""  # "mid_step" | "after_checkpoint" | "" (off)
    kill_step: int = 0  # 1-based step number
    nan_steps: frozenset[int] = frozenset()
    rollout_fail_step: int = 0
    rollout_fails: int = 0
    server_kill_step: int = 0  # 1-based; 0 = off

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FaultInjection:
        env = os.environ if env is None else env
        kwargs: dict[str, Any] = {}
        kill = env.get("SRPO_DEBUG_KILL", "")
        if kill:
            point, _, n = kill.partition(":")
            if point not in ("mid_step", "after_checkpoint") or not n.isdigit():
                raise ValueError(
                    f"SRPO_DEBUG_KILL must be mid_step:N or after_checkpoint:N, got {kill!r}"
                )
            kwargs.update(kill_point=point, kill_step=int(n))
        nan = env.get("SRPO_DEBUG_NAN_STEPS", "")
        if nan:
            try:
                kwargs["nan_steps"] = frozenset(int(x) for x in nan.split(","))
            except ValueError:
                raise ValueError(f"SRPO_DEBUG_NAN_STEPS must be like 3,4,5, got {nan!r}") from None
        fails = env.get("SRPO_DEBUG_ROLLOUT_FAILS", "")
        if fails:
            n, _, k = fails.partition(":")
            if not (n.isdigit() and k.isdigit()):
                raise ValueError(f"SRPO_DEBUG_ROLLOUT_FAILS must be N:k, got {fails!r}")
            kwargs.update(rollout_fail_step=int(n), rollout_fails=int(k))
        server = env.get("SRPO_DEBUG_KILL_SERVER", "")
        if server:
            if not server.isdigit() or int(server) < 1:
                raise ValueError(
                    f"SRPO_DEBUG_KILL_SERVER must be a step number >= 1, got {server!r}"
                )
            kwargs["server_kill_step"] = int(server)
        return cls(**kwargs)

    def maybe_kill(self, point: str, step: int) -> None:
        if self.kill_point == point and self.kill_step == step:
            print(f"SRPO_DEBUG_KILL: SIGKILL at {point}:{step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def before_generate(self, step: int, attempt: int, engine: Any = None) -> None:
        """Called before each generation attempt of training step `step` (0-based)."""
        if step + 1 == self.rollout_fail_step and attempt < self.rollout_fails:
            raise RolloutError(f"injected rollout failure {attempt + 1} (SRPO_DEBUG_ROLLOUT_FAILS)")
        if step + 1 == self.server_kill_step and attempt == 0:
            _arm_server_kill(engine, step)


def _arm_server_kill(engine: Any, step: int) -> None:
    if getattr(engine, "engine", ...) is None:  # a LeaderEngine off process 0: no servers here
        return
    servers = getattr(engine, "servers", ())
    if not servers:
        raise ValueError(
            "SRPO_DEBUG_KILL_SERVER needs the sglang engine with launched servers "
            "(config.rollout.sglang.launch_command)"
        )
    victim = servers[0]
    fired = []

    def kill_after_first_answer(url: str, request_step: int) -> None:
        if fired or request_step != step or url != victim.url:
            return
        fired.append(url)
        print(f"SRPO_DEBUG_KILL_SERVER: SIGKILL {url} (pid {victim.proc.pid})", flush=True)
        os.killpg(victim.proc.pid, signal.SIGKILL)  # the server is its process group's leader

    engine.on_request_done = kill_after_first_answer


def poison(batch):
    """SRPO_DEBUG_NAN_STEPS: NaN advantages and rollout log-probs -> non-finite gradients.
    `batch` is a batching.TrainBatch or packing.PackedBatch (not imported: this module
    stays free of JAX); its rollout log-probs field is [.., R] or [.., N] by layout."""
    lp = "rollout_logprobs_BR" if hasattr(batch, "rollout_logprobs_BR") else "rollout_logprobs_N"
    return batch.replace(
        advantages_B=np.full_like(batch.advantages_B, np.nan),
        **{lp: np.full_like(getattr(batch, lp), np.nan)},
    )
