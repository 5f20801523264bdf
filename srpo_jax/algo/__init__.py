"""SRPO algorithm pieces: advantages, routing and teacher prompts, losses, objective, EMA.

advantages and routing run host-side between rollouts and the learner; losses, objective and
ema are pure jnp functions the jitted learner calls on per-token arrays.
"""

from srpo_jax.algo import advantages, ema, losses, methods, objective, routing
from srpo_jax.algo.advantages import correctness, group_advantages
from srpo_jax.algo.ema import ema_update
from srpo_jax.algo.losses import (
    entropy_weight_terms,
    entropy_weights,
    grpo_token_loss,
    sdpo_token_divergence,
    teacher_entropy,
)
from srpo_jax.algo.methods import METHODS, Method
from srpo_jax.algo.objective import ObjectiveParts, combine, objective_parts, srpo_objective
from srpo_jax.algo.routing import (
    build_teacher_messages,
    render_teacher_prompt,
    route,
    strip_think,
    teacher_info,
)

__all__ = [
    "METHODS",
    "Method",
    "ObjectiveParts",
    "advantages",
    "build_teacher_messages",
    "combine",
    "correctness",
    "ema",
    "ema_update",
    "entropy_weight_terms",
    "entropy_weights",
    "group_advantages",
    "grpo_token_loss",
    "losses",
    "methods",
    "objective",
    "objective_parts",
    "render_teacher_prompt",
    "route",
    "routing",
    "sdpo_token_divergence",
    "srpo_objective",
    "strip_think",
    "teacher_entropy",
    "teacher_info",
]
