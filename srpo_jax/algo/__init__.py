"""SRPO algorithm pieces: advantages, routing and teacher prompts, losses, objective, EMA.

advantages and routing run host-side between rollouts and the learner; losses, objective and
ema are pure jnp functions the jitted learner calls on per-token arrays.

Names load on first use (PEP 562), so importing one submodule, such as the
package's config, does not import the others or jax.
"""

from srpo_jax.lazy_exports import resolver

_HOME = {
    "METHODS": "methods",
    "Method": "methods",
    "ObjectiveInputs": "objective",
    "ObjectiveOptions": "objective",
    "ObjectiveParts": "objective",
    "build_teacher_messages": "routing",
    "combine": "objective",
    "correctness": "advantages",
    "ema_update": "ema",
    "entropy_weight_terms": "losses",
    "entropy_weights": "losses",
    "group_advantages": "advantages",
    "grpo_token_loss": "losses",
    "objective_parts": "objective",
    "render_teacher_prompt": "routing",
    "route": "routing",
    "sdpo_token_divergence": "losses",
    "srpo_objective": "objective",
    "strip_think": "routing",
    "teacher_entropy": "losses",
    "teacher_info": "routing",
}
__all__ = [
    "METHODS",
    "Method",
    "ObjectiveInputs",
    "ObjectiveOptions",
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

__getattr__ = resolver(__name__, _HOME)
