"""EMA self-teacher update (SPEC 9): phi <- (1 - rate) phi + rate theta, only on finite steps.

phi is the fp32 teacher copy; it is never optimised. `finite` is a traced bool (the learner's
"this step applied a finite update" flag), so the update stays inside the jitted step with no
host sync; when it is False the teacher is returned unchanged.
"""

import jax
import jax.numpy as jnp


def ema_update(teacher, student, *, rate: float = 0.05, finite=True):
    """Blend pytrees leaf by leaf; leaves keep the teacher's dtype."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate={rate} must be in [0, 1]")
    if jax.tree.structure(teacher) != jax.tree.structure(student):
        raise ValueError("teacher and student pytrees have different structures")
    finite = jnp.asarray(finite, dtype=bool)

    def blend(phi, theta):
        phi = jnp.asarray(phi)
        new = (1.0 - rate) * phi + rate * jnp.asarray(theta).astype(phi.dtype)
        return jnp.where(finite, new.astype(phi.dtype), phi)

    return jax.tree.map(blend, teacher, student)
