"""The run config's `algo` section (SPEC sections 1-9): method name and its hyper-parameters.

The method's switches and SPEC 10 defaults are its record in algo/methods.py; this section
names the method and holds the numbers the SPEC leaves to the run. Defaults are the SPEC's.
"""

from __future__ import annotations

import dataclasses

from srpo_jax.algo import methods
from srpo_jax.config_checks import in_unit, one_of, require


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    """SPEC sections 1-9. Names follow the SPEC; defaults are the SPEC defaults."""

    method: str = "srpo"
    group_size: int = 8
    success_threshold: float = 0.5
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    tis_cap: float = 2.0  # truncated IS cap between trainer and rollout engine
    is_clip: float = 2.0  # SDPO upper ratio clip
    topk: int = 100
    alpha: float = 0.5  # generalised JSD interpolation
    tau: float = 1.0  # entropy-weight temperature
    add_tail: bool = True
    entropy_over: str = "vocab"
    loss_agg: str = "token-mean"
    adv_mix_lambda: float = 0.1
    ema_rate: float = 0.05
    max_reprompt_len: int = 10240
    demo_seed: int = 0  # seeds the fixed order in which a correct sibling is picked

    def __post_init__(self):
        one_of("algo.method", self.method, methods.names())
        # A group of one has no siblings: no advantage signal and no teacher.
        require(self.group_size >= 2, "algo.group_size", ">= 2", self.group_size)
        in_unit("algo.success_threshold", self.success_threshold, low_open=True)
        in_unit("algo.clip_low", self.clip_low, high_open=True)
        require(self.clip_high >= 0, "algo.clip_high", ">= 0", self.clip_high)
        require(self.dual_clip > 1, "algo.dual_clip", "> 1", self.dual_clip)
        for k in ("tis_cap", "is_clip", "tau"):
            require(getattr(self, k) > 0, f"algo.{k}", "> 0", getattr(self, k))
        require(self.topk >= 1, "algo.topk", ">= 1", self.topk)
        in_unit("algo.alpha", self.alpha)
        one_of("algo.entropy_over", self.entropy_over, ("vocab", "buckets"))
        one_of("algo.loss_agg", self.loss_agg, ("token-mean", "seq-mean-token-mean"))
        require(self.adv_mix_lambda >= 0, "algo.adv_mix_lambda", ">= 0", self.adv_mix_lambda)
        in_unit("algo.ema_rate", self.ema_rate, low_open=True)
        require(self.max_reprompt_len >= 1, "algo.max_reprompt_len", ">= 1", self.max_reprompt_len)

    @property
    def method_record(self) -> methods.Method:
        """The method's switches (algo/methods.py)."""
        return methods.get(self.method)
