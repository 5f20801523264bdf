"""The trained model out as a Hugging Face checkpoint (`python -m srpo_jax.export`).

__main__.py is the command; workdir.py reads a training run's directory back (its config,
architecture, tokenizer, checkpoint steps, and one restored tree), shared with
srpo_jax.evaluate.
"""
