"""The method study: every method from one warm start, over seeds, with intervals.

    run.py        python -m srpo_jax.compare.run --config=configs/demo.py --out=compare
    arms.py       an arm: a method with optional config overrides (srpo@rollout.overlap=1)
    report.py     reads the runs back into tables; intervals.py bootstrap intervals
    plot.py       the curves

Nothing is imported here: the runner sets XLA_FLAGS before JAX starts.
"""
