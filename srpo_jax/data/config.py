"""The `data` and `tokenizer` sections: which task, where its files are, how lengths pad.

Imports no jax (nor transformers): the config tree is built and printed from these.
"""

from __future__ import annotations

import dataclasses

from srpo_jax.config_checks import one_of, require

BENCHMARK_DIRS = {
    "chem": "sciknoweval/chemistry",
    "phys": "sciknoweval/physics",
    "bio": "sciknoweval/biology",
    "materials": "sciknoweval/material",
    "tooluse": "tooluse",
}
TASKS = ("synthetic", *BENCHMARK_DIRS)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """The run config's `tokenizer` section (loaded by data/tokenizer.py)."""

    path: str = ""  # "" = model.hf_path, or the demo's tiny tokenizer when that is empty too


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The run config's `data` section: which task, where its files are, length filters, and
    how lengths are padded into shape buckets.

    length_buckets_per_octave: prompt, response and teacher-prompt lengths (learner and
    embedded engine) pad up to buckets with this many per doubling (buckets.bucket_length):
    1 is powers of two, the fewest compiled shapes but up to 2x padding; 4 pads under 25%
    (e.g. 48-token prompts stay 48 instead of 64) at up to 4x the shapes of a length that
    varies from step to step (the teacher prompt, mostly).
    """

    task: str = "synthetic"
    # "" = the splits shipped in the package, plus what `python -m srpo_jax.data.fetch` put in
    # the user data folder; a folder = its splits first, the shipped ones for the rest
    # (datasets.split_path resolves it).
    data_dir: str = ""
    max_prompt_len: int = 2048  # longer prompts are filtered out (SPEC 10)
    max_response_len: int = 8192
    shuffle_seed: int = 0
    synthetic_train_size: int = 512
    synthetic_test_size: int = 64
    synthetic_warmup_size: int = 2048  # SFT pairs of the synthetic warm-up (synthetic.py)
    length_buckets_per_octave: int = 1
    # False: a response cut at max_response_len (finish "length") scores 0 whatever the
    # verifier says. SPEC 1 scores the text as it is (True, the default); the demo's reward
    # reads `<answer> ... </answer>` and ignores what follows, so a policy that stops ending
    # its responses keeps its reward until the filler corrupts the answer, and at lr 1e-3 it
    # does exactly that after ~200 steps (docs/performance.md, the soak). A cut response
    # scoring 0 keeps the stop token rewarded; docs/deviations.md.
    score_truncated: bool = True

    def __post_init__(self):
        one_of("data.task", self.task, TASKS)
        for k in (
            "max_prompt_len",
            "max_response_len",
            "synthetic_train_size",
            "synthetic_test_size",
            "synthetic_warmup_size",
            "length_buckets_per_octave",
        ):
            require(getattr(self, k) >= 1, f"data.{k}", ">= 1", getattr(self, k))
