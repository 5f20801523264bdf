"""`python -m srpo_jax.plan`: the memory plan's short name (srpo_jax.aot.plan).

    python -m srpo_jax.plan --topology=h20x8      # Qwen3-8B SRPO unless --config says

Runs srpo_jax.aot.plan as the main module, so the CPU device count is still forced
before JAX is imported when the plan falls back to the CPU estimate.
"""

import runpy


def run() -> None:
    """The `srpo-plan` command."""
    runpy.run_module("srpo_jax.aot.plan", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run()
