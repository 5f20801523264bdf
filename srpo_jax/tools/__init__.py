"""Tools built on the library, not part of it: the AOT memory plan and the method comparison.

    python -m srpo_jax.tools.plan --config=configs/qwen3_8b_chem.py:method=srpo --topology=h20x8
    python -m srpo_jax.tools.compare --config=configs/demo.py --out=compare

Imports nothing: the plan must set XLA_FLAGS before JAX is first imported.
"""
