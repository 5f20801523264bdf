"""EMA self-teacher update (SPEC 9): phi <- (1 - rate) phi + rate theta, only on finite steps.

phi is the fp32 teacher copy; it is never optimised. `finite` is a traced bool (the learner's
"this step applied a finite update" flag), so the update stays inside the jitted step with no
host sync; when it is False the teacher is returned unchanged. The blend itself is
optax.incremental_update (rate * theta + (1 - rate) * phi); the learner calls this.
"""

import jax
import jax.numpy as jnp
import optax


def ema_update(teacher, student, *, rate: float = 0.05, finite=True):
    """Blend pytrees leaf by leaf; leaves keep the teacher's dtype."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate={rate} must be in [0, 1]")
    if jax.tree.structure(teacher) != jax.tree.structure(student):
        raise ValueError("teacher and student pytrees have different structures")
    finite = jnp.asarray(finite, dtype=bool)

    student = jax.tree.map(
        lambda p, s: jnp.asarray(s).astype(jnp.asarray(p).dtype), teacher, student
    )
    new = optax.incremental_update(student, teacher, step_size=rate)
    return jax.tree.map(
        lambda n, phi: jnp.where(finite, n.astype(jnp.asarray(phi).dtype), phi), new, teacher
    )
