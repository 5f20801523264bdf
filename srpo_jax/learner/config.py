"""The device step's config sections (`optim`, `train`) and StepSettings, which holds the
sections the jitted train step reads. Imports no jax: the config tree is built from these.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from srpo_jax.algo import methods
from srpo_jax.algo.config import AlgoConfig
from srpo_jax.config_checks import in_unit, one_of, require
from srpo_jax.kernels import options as kernel_options


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The run config's `optim` section: AdamW, its schedule, clipping, non-finite skips."""

    lr: float | None = None  # None = the method's SPEC 10 value (algo/methods.py)
    warmup_steps: int = 10  # linear warm-up, then constant; advances once per training step
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # global grad-norm clip; a non-finite norm skips the update
    max_consecutive_skips: int = 10  # abort the run after this many non-finite steps in a row

    def __post_init__(self):
        require(self.lr is None or self.lr > 0, "optim.lr", "> 0", self.lr)
        require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
        in_unit("optim.b1", self.b1, high_open=True)
        in_unit("optim.b2", self.b2, high_open=True)
        require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        require(self.grad_clip > 0, "optim.grad_clip", "> 0", self.grad_clip)
        require(
            self.max_consecutive_skips >= 1,
            "optim.max_consecutive_skips",
            ">= 1",
            self.max_consecutive_skips,
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The run config's `train` section: batch geometry, loss implementation, run length.

    The learner reads the batch geometry and the loss implementation; the trainer the run
    length, seed, time budget and the supervised warm-up.
    """

    prompts_per_step: int = 32
    mini_batch_prompts: int | None = None  # None = the method's SPEC 10 value
    micro_batch_rows: int = 0  # padded layout: rows per micro-batch; 0 = whole mini-batch
    # Packed layout (learner/packing.py): rows end to end in streams of pack_len tokens
    # (0 = the longest padded row), micro-batches of at most micro_batch_tokens stream
    # tokens (0 = one micro-batch per mini-batch); micro_batch_rows is then not read.
    packed: bool = False
    pack_len: int = 0
    micro_batch_tokens: int = 0
    num_steps: int = 1000
    seed: int = 0
    fused_implementation: str = "auto"
    fused_grad_mode: str = "auto"  # where the fused kernel contracts its gradient
    chunk_size: int = 1024  # tokens per chunk of the fused distillation kernel
    time_budget_hours: float = 10.0  # training wall-clock (eval excluded); 0 = no budget

    def __post_init__(self):
        require(self.prompts_per_step >= 1, "train.prompts_per_step", ">= 1", self.prompts_per_step)
        mb = self.mini_batch_prompts
        require(mb is None or mb >= 1, "train.mini_batch_prompts", ">= 1", mb)
        require(self.micro_batch_rows >= 0, "train.micro_batch_rows", ">= 0", self.micro_batch_rows)
        require(self.pack_len >= 0, "train.pack_len", ">= 0", self.pack_len)
        require(
            self.micro_batch_tokens >= 0,
            "train.micro_batch_tokens",
            ">= 0",
            self.micro_batch_tokens,
        )
        require(self.num_steps >= 1, "train.num_steps", ">= 1", self.num_steps)
        one_of(
            "train.fused_implementation", self.fused_implementation, kernel_options.IMPLEMENTATIONS
        )
        one_of("train.fused_grad_mode", self.fused_grad_mode, kernel_options.GRAD_MODES)
        require(self.chunk_size >= 1, "train.chunk_size", ">= 1", self.chunk_size)
        require(
            self.time_budget_hours >= 0, "train.time_budget_hours", ">= 0", self.time_budget_hours
        )


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The config sections the train step reads, held whole (no field is copied).

    temperature: the rollout engine's sampling temperature (log-probs are taken at the
    temperature the rollouts were sampled with; 0, greedy, scores at 1).
    """

    algo: AlgoConfig = dataclasses.field(default_factory=AlgoConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=5.5e-6))
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    temperature: float = 1.0

    def __post_init__(self):
        require(self.optim.lr is not None, "optim.lr", "resolved (a float)", self.optim.lr)

    @classmethod
    def from_config(cls, cfg: Any) -> StepSettings:
        """The learner's settings of the run `cfg`, a srpo_jax.config.Config (not imported:
        that module is built from this one's sections), whose optim.lr is already resolved to
        the method's value when unset; log-probs at the sampling temperature (greedy: 1)."""
        return cls(
            algo=cfg.algo,
            optim=cfg.optim,
            train=cfg.train,
            temperature=cfg.rollout.temperature or 1.0,
        )

    @classmethod
    def of(cls, temperature: float = 1.0, **fields: Any) -> StepSettings:
        """Section defaults with `fields` replaced, each name routed to the one section that
        has it (algo, optim or train); optim.lr None takes the method's SPEC 10 value."""
        sections = {"algo": AlgoConfig, "optim": OptimConfig, "train": TrainConfig}
        kwargs: dict[str, dict] = {name: {} for name in sections}
        for key, value in fields.items():
            owner = [n for n, c in sections.items() if key in _field_names(c)]
            if not owner:
                raise TypeError(f"StepSettings.of: no section has a field {key!r}")
            kwargs[owner[0]][key] = value
        algo = AlgoConfig(**kwargs["algo"])
        optim = OptimConfig(**kwargs["optim"])
        if optim.lr is None:
            optim = dataclasses.replace(optim, lr=algo.method_record.lr)
        return cls(algo, optim, TrainConfig(**kwargs["train"]), temperature)

    @property
    def method(self) -> methods.Method:
        return self.algo.method_record

    @property
    def effective_tau(self) -> float:
        """The fused kernel's tau: inf (u = 1, Z = |S|) for methods without entropy weights."""
        return self.algo.tau if self.method.entropy_weights else math.inf


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
