"""reference.py (the kernel's spec) equals algo/losses.py (the learner's naive path).

The two are written by different hands from SPEC 5-6; on [N, V] logits they must give the
same per-token divergence, teacher entropy and gradient wrt the student logits. Logits of
moderate scale, so SPEC's literal tail form (used by losses.py) is well conditioned in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srpo_jax.kernels.fused_distill import reference

losses = pytest.importorskip("srpo_jax.algo.losses")


@pytest.mark.parametrize("alpha,add_tail", [(0.5, True), (0.0, True), (1.0, False), (0.3, True)])
def test_reference_equals_algo_losses(alpha, add_tail):
    rng = np.random.default_rng(1)
    zs = jnp.asarray(rng.normal(size=(41, 500)) * 2.0, jnp.float32)
    zt = zs + jnp.asarray(rng.normal(size=(41, 500)), jnp.float32)
    weights = jnp.asarray(rng.uniform(size=41), jnp.float32)
    kw = dict(topk=100, alpha=alpha, add_tail=add_tail)

    def ours(zs):
        div, ent = reference.divergence_from_logits(zs, zt, entropy_over="vocab", **kw)
        return jnp.sum(weights * div), (div, ent)

    def theirs(zs):
        div = losses.sdpo_token_divergence(zs, zt, **kw)
        return jnp.sum(weights * div), (div, losses.teacher_entropy(zt))

    (_, (div_a, ent_a)), g_a = jax.value_and_grad(ours, has_aux=True)(zs)
    (_, (div_b, ent_b)), g_b = jax.value_and_grad(theirs, has_aux=True)(zs)
    for a, b in ((div_a, div_b), (ent_a, ent_b), (g_a, g_b)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))
