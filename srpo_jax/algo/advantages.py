"""Group-relative advantages and correctness (SPEC sections 1 and 4).

Rollouts arrive grouped: rows [g * G, (g + 1) * G) of a batch are the G samples of prompt g.
The GRPO advantage is the reward minus the group mean, with no division by the group standard
deviation (Dr.GRPO-style, as SRPO's GRPO baseline). Array-generic: NumPy in, NumPy out on
the host (the trainer's per-step path, no device round trip); jax arrays and tracers in,
jnp out (inside jit).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def check_grouping(rewards_B, group_size: int) -> None:
    """ValueError unless rewards_B is [B] with B a whole number of groups."""
    if rewards_B.ndim != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {rewards_B.shape}")
    if group_size < 1 or rewards_B.shape[0] % group_size != 0:
        raise ValueError(
            f"batch of {rewards_B.shape[0]} rollouts is not a whole number of groups of "
            f"group_size={group_size}"
        )


def group_advantages(rewards, group_size: int):
    """A_i = r_i - mean_j r_j over each group; [B] -> [B] float32.

    A group whose rewards are all equal gets exactly 0: the mean of G equal floats need not
    round back to the same float (e.g. 3 x 0.1), so equality is tested explicitly rather than
    trusting the subtraction.
    """
    xp = _xp(rewards)
    rewards_B = xp.asarray(rewards, dtype=xp.float32)
    check_grouping(rewards_B, group_size)
    rewards_BG = rewards_B.reshape(-1, group_size)
    mean_B1 = xp.mean(rewards_BG, axis=-1, keepdims=True)
    all_equal_B1 = xp.max(rewards_BG, axis=-1, keepdims=True) == xp.min(
        rewards_BG, axis=-1, keepdims=True
    )
    adv_BG = xp.where(all_equal_B1, xp.float32(0.0), rewards_BG - mean_B1)
    return adv_BG.reshape(-1)


def correctness(rewards, success_threshold: float = 0.5):
    """c_i = 1 iff r_i >= success_threshold (SPEC 1); [B] bool."""
    xp = _xp(rewards)
    return xp.asarray(rewards) >= success_threshold
