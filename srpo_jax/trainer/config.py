"""The host loop's config sections: `checkpoint`, `eval`, `log` and `warmup`.

Plain frozen dataclasses that validate themselves; this module imports no jax, so the
config tree (srpo_jax.config) can be built and printed before any backend starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util

from srpo_jax.config_checks import ConfigError, require


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """The run config's `checkpoint` section: how often the trainer saves, how many are kept."""

    every_steps: int = 10  # 0 = only at the end of the run
    keep: int = 3

    def __post_init__(self):
        require(self.every_steps >= 0, "checkpoint.every_steps", ">= 0", self.every_steps)
        require(self.keep >= 1, "checkpoint.keep", ">= 1", self.keep)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The run config's `eval` section: how often and how avg@k / maj@k are sampled."""

    every_steps: int = 5  # 0 = never
    num_samples: int = 16  # avg@k with k = num_samples
    temperature: float = 0.6
    top_p: float = 0.95
    max_examples: int = 0  # 0 = the whole test split

    def __post_init__(self):
        require(self.every_steps >= 0, "eval.every_steps", ">= 0", self.every_steps)
        require(self.num_samples >= 1, "eval.num_samples", ">= 1", self.num_samples)
        require(self.temperature >= 0, "eval.temperature", ">= 0", self.temperature)
        require(0 < self.top_p <= 1, "eval.top_p", "in (0, 1]", self.top_p)
        require(self.max_examples >= 0, "eval.max_examples", ">= 0", self.max_examples)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """The run config's `log` section: which writers the trainer opens, how progress shows."""

    tensorboard: bool = True
    progress: bool = True  # a live bar in a terminal; False = plain lines there too
    log_every: int = 10  # steps between plain progress lines when stdout is not a terminal
    wandb: bool = False  # also log to Weights & Biases (pip install srpo_jax[wandb])
    wandb_project: str = "srpo_jax"  # WANDB_MODE / WANDB_ENTITY etc. come from the environment

    def __post_init__(self):
        require(self.log_every >= 1, "log.log_every", ">= 1", self.log_every)
        require(bool(self.wandb_project), "log.wandb_project", "non-empty", self.wandb_project)
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "config.log.wandb=True needs the wandb package: pip install 'srpo_jax[wandb]'"
            )


@dataclasses.dataclass(frozen=True)
class WarmupConfig:
    """config.warmup: the supervised warm-up before RL (demo only; 0 steps = none)."""

    steps: int = 0  # Adam steps on (prompt, gold answer) pairs
    lr: float = 1e-4
    batch_size: int = 32  # pairs per step (all of them when the split is smaller)

    def __post_init__(self):
        require(self.steps >= 0, "warmup.steps", ">= 0", self.steps)
        require(self.lr > 0, "warmup.lr", "> 0", self.lr)
        require(self.batch_size >= 1, "warmup.batch_size", ">= 1", self.batch_size)
