"""Group-relative advantages and correctness (SPEC sections 1 and 4).

Rollouts arrive grouped: rows [g * G, (g + 1) * G) of a batch are the G samples of prompt g.
The GRPO advantage is the reward minus the group mean, with no division by the group standard
deviation (Dr.GRPO-style, as SRPO's GRPO baseline). Pure jnp: usable on host arrays and inside
jit alike.
"""

import jax.numpy as jnp


def _check_grouping(rewards_B: jnp.ndarray, group_size: int) -> None:
    if rewards_B.ndim != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {rewards_B.shape}")
    if group_size < 1 or rewards_B.shape[0] % group_size != 0:
        raise ValueError(
            f"batch of {rewards_B.shape[0]} rollouts is not a whole number of groups of "
            f"group_size={group_size}"
        )


def group_advantages(rewards, group_size: int) -> jnp.ndarray:
    """A_i = r_i - mean_j r_j over each group; [B] -> [B] float32.

    A group whose rewards are all equal gets exactly 0: the mean of G equal floats need not
    round back to the same float (e.g. 3 x 0.1), so equality is tested explicitly rather than
    trusting the subtraction.
    """
    rewards_B = jnp.asarray(rewards, dtype=jnp.float32)
    _check_grouping(rewards_B, group_size)
    rewards_BG = rewards_B.reshape(-1, group_size)
    mean_B1 = jnp.mean(rewards_BG, axis=-1, keepdims=True)
    all_equal_B1 = jnp.max(rewards_BG, axis=-1, keepdims=True) == jnp.min(
        rewards_BG, axis=-1, keepdims=True
    )
    adv_BG = jnp.where(all_equal_B1, 0.0, rewards_BG - mean_B1)
    return adv_BG.reshape(-1)


def correctness(rewards, success_threshold: float = 0.5) -> jnp.ndarray:
    """c_i = 1 iff r_i >= success_threshold (SPEC 1); [B] bool."""
    return jnp.asarray(rewards) >= success_threshold
