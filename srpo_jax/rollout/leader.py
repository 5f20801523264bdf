"""A single-controller engine (the SGLang client) in a multi-process run.

Only process 0 talks to the servers; every process gets the same Rollouts. Weight export
is collective (`hf_io.save_hf_params` gathers every shard; process 0 writes), so every
process exports, they meet at a barrier once the files are complete, and process 0 then
points the servers at the directory. A failure on process 0 reaches the other processes
through the broadcast (a status flag), so every process raises and retries together.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from srpo_jax import multihost
from srpo_jax.rollout import weight_sync
from srpo_jax.rollout.engine import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutError,
    Rollouts,
    SamplingParams,
)
from srpo_jax.rollout.weight_exports import WeightExports

_FINISH_CODES = (FINISH_STOP, FINISH_LENGTH, FINISH_ABORT)
_SPEC = {
    "status": (1, np.int32),  # [ok, weight_version]
    "tokens": (2, np.int32),
    "logprobs": (2, np.float32),
    "lengths": (1, np.int32),
    "finish": (1, np.int32),
    "prompt_index": (1, np.int32),
}


class LeaderEngine:
    """RolloutEngine facade: `engine` lives on process 0 (None elsewhere)."""

    runs_beside_learner = True  # the servers are other processes (rollout.overlap)

    def __init__(self, engine, exports: WeightExports, *, distributed=None, model_config=None):
        """exports: this process's view of the shared export folder (process 0 writes;
        a barrier with the others around each export). distributed: the SGLangConfig when
        sync="distributed" (every process then gathers the HF tensors of model_config)."""
        if multihost.is_leader() and engine is None:
            raise ValueError("LeaderEngine: process 0 needs the engine")
        self.engine = engine if multihost.is_leader() else None
        self.exports = exports
        self.export_dir = exports.root
        self.distributed = distributed
        self.model_config = model_config

    def generate(
        self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams, *, step: int = 0
    ) -> Rollouts:
        ro, error = None, None
        if self.engine is not None:
            try:
                ro = self.engine.generate(prompt_token_ids, n, sampling, step=step)
            except Exception as e:  # reported to every process by share, then raised here
                error = e
        return self.share(ro, error, step=step)

    def share(self, ro: Rollouts | None, error: Exception | None, *, step: int) -> Rollouts:
        """Process 0's rollouts (or its failure) on every process: a collective, so every
        process calls it at the same point of the main thread. rollout.overlap generates on
        process 0 in a worker thread and shares the result here once the train step is done
        (collectives may not run beside the train step's). Elsewhere ro and error are None."""
        if self.engine is None:
            arrays = None
        elif error is None:
            arrays = {
                "status": np.array([1, ro.weight_version], np.int32),
                "tokens": ro.token_ids_BR,
                "logprobs": ro.logprobs_BR,
                "lengths": ro.lengths_B,
                "finish": np.array([_FINISH_CODES.index(f) for f in ro.finish_reasons]),
                "prompt_index": ro.prompt_index_B,
            }
        else:
            arrays = {k: np.zeros((0,) * nd, dt) for k, (nd, dt) in _SPEC.items()}
            arrays["status"] = np.array([0, 0], np.int32)
        got = multihost.broadcast_from_leader(arrays, _SPEC)
        if error is not None:
            raise error
        if not got["status"][0]:
            raise RolloutError(f"step {step + 1}: generation failed on process 0 (see its log)")
        return Rollouts(
            token_ids_BR=got["tokens"],
            logprobs_BR=got["logprobs"],
            lengths_B=got["lengths"],
            finish_reasons=tuple(_FINISH_CODES[int(c)] for c in got["finish"]),
            weight_version=int(got["status"][1]),
            prompt_index_B=got["prompt_index"],
        )

    def update_weights(self, params: Any, version: int) -> dict[str, float]:
        if self.distributed is not None and not isinstance(params, (str, os.PathLike)):
            t0 = time.perf_counter()
            dist = self.engine.dist if self.engine is not None else None
            sent = weight_sync.push(self.distributed, dist, params, self.model_config, version)
            ok = np.array([sent is not None], np.int32)  # process 0's verdict, for everyone
            ok = multihost.broadcast_from_leader({"ok": ok}, {"ok": (1, np.int32)})["ok"][0]
            if ok:
                if self.engine is None:
                    return {}
                return self.engine.distributed_done(version, sent, time.perf_counter() - t0)
            if self.engine is not None:
                self.engine.sync_fallbacks += 1
        path = self.exports.write(params, version)  # collective: all gather, process 0 writes
        # Push before deleting older exports: a failed push leaves the served one in place.
        out = self.engine.update_weights(str(path), version) if self.engine is not None else {}
        self.exports.prune()
        return out

    # Fault injection and metrics read these; only process 0 has servers.
    @property
    def servers(self):
        return self.engine.servers if self.engine is not None else ()

    @property
    def num_restarts(self) -> int:
        return getattr(self.engine, "num_restarts", 0)

    @property
    def on_request_done(self):
        return getattr(self.engine, "on_request_done", None)

    @on_request_done.setter
    def on_request_done(self, hook) -> None:
        if self.engine is not None:
            self.engine.on_request_done = hook

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
