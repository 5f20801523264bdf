"""avg@k and maj@k of a checkpoint or an HF model on test splits (`python -m srpo_jax.evaluate`).

__main__.py is the command; scores.py runs the trainer's own Evaluator per benchmark and
puts 95% bootstrap intervals over questions on the results.
"""
