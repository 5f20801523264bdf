"""Which library log records reach the console: warnings always, INFO only when asked.

absl's app.run routes Python logging through its handler at the level of `--verbosity`
(default 0 = INFO), so every library's INFO chatter reaches stderr: orbax writes about
twenty lines per checkpoint, jax reports each backend it probes and cannot open ("Unable
to initialize backend 'tpu'"). The trainer's own messages go to stdout through
srpo_jax/trainer/progress.py, so by default nothing below WARNING is needed on the console.

    --verbosity=0 (default, or below)  WARNING and up from every library
    --verbosity=1                      INFO back (what absl alone would show)
    --verbosity=2 and up               absl's own mapping (DEBUG and finer)

Python `warnings` are untouched. At the default verbosity transformers' advisory warnings
(TRANSFORMERS_NO_ADVISORY_WARNINGS) are off too: without torch installed it warns on import
that models are unavailable, and only its tokenizers are used here.
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging


def apply(verbosity: int) -> None:
    """Sets the console threshold for `verbosity` (absl's --verbosity flag value)."""
    if verbosity >= 2:
        return  # absl has already set DEBUG - (verbosity - 1), which is what was asked
    level = logging.INFO if verbosity == 1 else logging.WARNING
    if verbosity <= 0:
        # transformers' advisory "PyTorch was not found. Models won't be available" on import:
        # by design, only its tokenizers are used here. Read when transformers is imported.
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # absl propagates to the root logger once its handler is installed (app.run does so);
    # before that (e.g. under pytest) its own logger holds the level, so set both.
    logging.getLogger().setLevel(level)
    absl_logging.get_absl_logger().setLevel(level)
