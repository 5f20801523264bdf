"""The one method table: every training method as a record of orthogonal switches.

A method is not a name that modules compare; it is a `Method` record, and every module reads
the switch it needs (routing reads `distil` and `teacher_advantage`, the objective reads
`grpo`, `entropy_weights` and `teacher_advantage`, the learner reads `uses_teacher` and
`entropy_weights`, the config reads `lr` and `mini_batch_prompts`). Adding a method is one
entry in `METHODS` (tests/algo/test_methods.py adds one inside a test and trains with it).

    name           distil   grpo   entropy_weights  teacher_advantage  lr      mini-batch
    grpo           none     on     off              off                1e-6    8
    sdpo           all      off    off              off                1e-5    32
    srpo           failed   on     on               off                5.5e-6  32
    srpo_no_dw     failed   on     off              off                5.5e-6  32
    advantage_mix  none     on     off              on                 5.5e-6  32

distil: which rollouts (of those with a correct sibling, SPEC 2) are routed to the SDPO term:
"failed" = the incorrect ones (SRPO 3.1), "all" = every one (SDPO), "none" = no routing.
grpo: the GRPO term on the rollouts not routed to SDPO (SPEC 4). entropy_weights: w_t from
the teacher's entropy (SPEC 6); off means w_t = 1. teacher_advantage: GRPO's advantage
A_i + lambda * sg(log pi_phi - log pi_theta) for rollouts with a teacher (SPEC 8; lambda is
config.algo.adv_mix_lambda). lr and mini_batch_prompts: SPEC 10's values; SRPO takes the
halfway learning rate and its ablations inherit SRPO's settings.
"""

from __future__ import annotations

import dataclasses

DISTIL = ("none", "failed", "all")


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method (see the module docstring for the meaning of each switch)."""

    name: str
    distil: str  # "none" | "failed" | "all"
    grpo: bool
    entropy_weights: bool
    teacher_advantage: bool
    lr: float  # SPEC 10 default learning rate (config.optim.lr None)
    mini_batch_prompts: int  # SPEC 10 default mini-batch (config.train.mini_batch_prompts None)

    def __post_init__(self):
        if self.distil not in DISTIL:
            raise ValueError(f"Method.distil must be one of {DISTIL}, got {self.distil!r}")
        if self.entropy_weights and self.distil == "none":
            raise ValueError(f"method {self.name!r}: entropy weights need an SDPO term (distil)")

    @property
    def sdpo(self) -> bool:
        """Some rollouts are routed to the SDPO (self-distillation) term."""
        return self.distil != "none"

    @property
    def uses_teacher(self) -> bool:
        """The EMA teacher is read: a teacher forward runs on some rollouts."""
        return self.sdpo or self.teacher_advantage


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("grpo", "none", True, False, False, lr=1e-6, mini_batch_prompts=8),
        Method("sdpo", "all", False, False, False, lr=1e-5, mini_batch_prompts=32),
        Method("srpo", "failed", True, True, False, lr=5.5e-6, mini_batch_prompts=32),
        Method("srpo_no_dw", "failed", True, False, False, lr=5.5e-6, mini_batch_prompts=32),
        Method("advantage_mix", "none", True, False, True, lr=5.5e-6, mini_batch_prompts=32),
    )
}


def names() -> tuple[str, ...]:
    """The method names, in table order (read at call time, so added entries count)."""
    return tuple(METHODS)


def get(method: str | Method) -> Method:
    """The record of `method` (a name or already a record); ValueError for an unknown name."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {names()}")
    return METHODS[method]
