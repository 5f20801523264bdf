"""The rollout-engine protocol shared by the embedded JAX sampler and the SGLang client.

An engine turns prompt token ids into sampled completions with the per-token log-probs
that the engine itself assigned (needed for the truncated importance-sampling correction
of SPEC section 4), and accepts new policy weights after every training step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np

FINISH_STOP = "stop"  # a stop token was sampled (it is included in the tokens)
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_ABORT = "abort"  # the engine gave up on this sample (never trained on)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature == 0 means greedy."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0  # base seed; engines fold in step and sample index

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k must be -1 (off) or >= 1, got {self.top_k}")


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """Completions for a batch of P prompts with n samples each, sample-major per prompt.

    Row r = p * n + j is sample j of prompt p. Arrays are right-padded to R = the longest
    completion; entries past `lengths[r]` are pad (token 0, log-prob 0).
    """

    token_ids_BR: np.ndarray  # int32 [P*n, R]
    logprobs_BR: np.ndarray  # float32 [P*n, R], engine log-prob of each sampled token
    lengths_B: np.ndarray  # int32 [P*n]
    finish_reasons: tuple[str, ...]  # len P*n
    weight_version: int  # version of the weights that produced every sample
    prompt_index_B: np.ndarray  # int32 [P*n], which prompt each row belongs to

    def __post_init__(self):
        b = self.token_ids_BR.shape[0]
        for name in ("logprobs_BR", "lengths_B", "prompt_index_B"):
            if getattr(self, name).shape[0] != b:
                raise ValueError(
                    f"Rollouts.{name} has {getattr(self, name).shape[0]} rows, token_ids_BR has {b}"
                )
        if len(self.finish_reasons) != b:
            raise ValueError(
                f"Rollouts.finish_reasons has {len(self.finish_reasons)} rows, expected {b}"
            )

    @property
    def num_rows(self) -> int:
        return int(self.token_ids_BR.shape[0])

    def completion(self, row: int) -> list[int]:
        return self.token_ids_BR[row, : self.lengths_B[row]].tolist()


class RolloutError(RuntimeError):
    """A generation request failed for good (after retries); names the server or cause."""


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that can sample completions and take new weights."""

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        sampling: SamplingParams,
        *,
        step: int = 0,
    ) -> Rollouts:
        """Samples n completions per prompt. `step` is folded into the sampling noise."""
        ...

    def update_weights(self, params: Any, version: int) -> dict[str, float]:
        """Installs new policy weights; returns timing/size metrics of the sync."""
        ...

    def close(self) -> None:
        """Releases servers or device buffers."""
        ...
