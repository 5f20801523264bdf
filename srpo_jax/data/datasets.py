"""Benchmark rows, split loading, chat messages, tokenized prompt sets and a resumable sampler.

Data layout (SPEC section 11, benchmarks/README.md beside this file): JSON Lines, one object
per line with fields idx, kind ("mcq" | "tooluse"), dataset, prompt, system (str or null),
answer. Other fields (description, tests, elo, embedding) are ignored.
A malformed line, a missing or mistyped field, an unknown kind or an empty split raises
`DataError` naming the file and 1-based line (main prints it as one line, exit 2).

    <dir>/sciknoweval/{chemistry,physics,biology,material}/{train,test}.json
    <dir>/tooluse/{train,test}.json

Where a split is read from (`find_split`), first match wins:
  1. `data.data_dir` when set, else the user data folder `user_data_dir()`
     ($XDG_CACHE_HOME/srpo_jax/data, by default ~/.cache/srpo_jax/data);
  2. the package's own copy, `PACKAGED_DATA_DIR` (every split but tooluse/train.json).
So the default (data_dir "") needs no data at all for SciKnowEval and the ToolUse test
split; `python -m srpo_jax.data.fetch` downloads tooluse/train.json into the user data
folder (or `--out=DIR`, then pass `--config.data.data_dir=DIR`), since the installed package
may be read-only. A folder given as data_dir may hold only some splits (say, a fetched
tooluse/train.json, or a replacement chemistry split); the others come from the package.

`PromptSet` renders each example with the chat template (generation prompt, thinking
disabled, SPEC section 10), drops prompts longer than `max_prompt_len` and counts them.
`EpochSampler` walks the kept examples in a fresh seeded permutation per epoch; its whole
state is the cursor (seed, epoch, position), so checkpointing the cursor gives exact resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
from collections.abc import Sequence
from typing import Any

from srpo_jax.data.config import BENCHMARK_DIRS, TASKS, DataConfig, TokenizerConfig  # noqa: F401

KINDS = ("mcq", "tooluse")
REQUIRED_FIELDS = ("idx", "kind", "dataset", "prompt", "system", "answer")
SPLITS = ("train", "test")
PACKAGED_DATA_DIR = pathlib.Path(__file__).resolve().parent / "benchmarks"
TOOLUSE_TRAIN_HELP = (
    "tooluse/train.json (4 MiB) is not shipped with the package. Download it with "
    "`python -m srpo_jax.data.fetch` (into the user data folder, read when data.data_dir is "
    "empty) or `python -m srpo_jax.data.fetch --out=DIR` (then --config.data.data_dir=DIR); it "
    "fetches datasets/tooluse/train.json from https://github.com/lasgroup/SDPO at commit "
    "0e6d5106abe69f578c63bf38a9394e22905c8773 and checks its `git hash-object` is "
    "b3f1449172a9a98389c03d38f83ab2795426d7f8."
)


class DataError(ValueError):
    """A data file or split is unusable; the message names the file (and line)."""


class SplitNotFoundError(DataError, FileNotFoundError):
    """A split file does not exist (also a FileNotFoundError, for callers that expect one)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One benchmark row. `answer` is a letter (mcq) or a JSON list string (tooluse)."""

    idx: int
    kind: str
    dataset: str
    prompt: str
    system: str | None
    answer: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Example {self.idx}: kind must be one of {KINDS}, got {self.kind!r}")


def _example_from_row(row: Any, where: str) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    if row["kind"] not in KINDS:
        raise DataError(f"{where}: unknown kind {row['kind']!r}, expected one of {KINDS}")
    checks = (
        ("idx", isinstance(row["idx"], int) and not isinstance(row["idx"], bool)),
        ("dataset", isinstance(row["dataset"], str)),
        ("prompt", isinstance(row["prompt"], str)),
        ("system", row["system"] is None or isinstance(row["system"], str)),
        ("answer", isinstance(row["answer"], str)),
    )
    for name, ok in checks:
        if not ok:
            raise DataError(f"{where}: field {name!r} has the wrong type: {row[name]!r:.80}")
    return Example(
        idx=row["idx"],
        kind=row["kind"],
        dataset=row["dataset"],
        prompt=row["prompt"],
        system=row["system"],
        answer=row["answer"],
    )


def load_jsonl(path: str | pathlib.Path) -> list[Example]:
    """Reads a JSON Lines split; every error names the file and the 1-based line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SplitNotFoundError(f"split file not found: {path}")
    examples = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{where}: not UTF-8 (byte {raw[e.start]:#04x} at {e.start})"
                ) from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
            examples.append(_example_from_row(row, where))
    if not examples:
        raise DataError(f"{path}: empty split (no rows)")
    return examples


def user_data_dir() -> pathlib.Path:
    """The per-user data folder: fetch's default --out, read first when data_dir is ""."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "srpo_jax" / "data"


def data_dirs(data_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The folders a split is looked up in, in order (see the module docstring)."""
    first = user_data_dir() if isinstance(data_dir, str) and not data_dir else data_dir
    return pathlib.Path(first), PACKAGED_DATA_DIR


def _checked_rel(benchmark: str, split: str) -> pathlib.Path:
    if benchmark not in BENCHMARK_DIRS:
        raise ValueError(f"unknown benchmark {benchmark!r}, expected one of {list(BENCHMARK_DIRS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    return pathlib.Path(BENCHMARK_DIRS[benchmark]) / f"{split}.json"


def split_path(data_dir: str | pathlib.Path, benchmark: str, split: str) -> pathlib.Path:
    """The split's path in data_dir itself (the user data folder when ""), never the package's:
    where a split is written (fetch, tests); `find_split` is where one is read."""
    return data_dirs(data_dir)[0] / _checked_rel(benchmark, split)


def find_split(data_dir: str | pathlib.Path, benchmark: str, split: str) -> pathlib.Path:
    """The first of data_dirs(data_dir) holding the split; split_path's answer when none does."""
    rel = _checked_rel(benchmark, split)
    dirs = data_dirs(data_dir)
    return next((d / rel for d in dirs if (d / rel).is_file()), dirs[0] / rel)


def load_split(data_dir: str | pathlib.Path, benchmark: str, split: str) -> list[Example]:
    """Loads one benchmark split (data_dir's copy, else the package's; module docstring)."""
    if data_dir and not pathlib.Path(data_dir).is_dir():  # else the shipped splits would be read
        raise DataError(f"config.data.data_dir {str(data_dir)!r} is not a directory")
    path = find_split(data_dir, benchmark, split)
    if benchmark == "tooluse" and split == "train" and not path.is_file():
        raise SplitNotFoundError(f"{path} is missing. {TOOLUSE_TRAIN_HELP}")
    return load_jsonl(path)


def messages(example: Example) -> list[dict[str, str]]:
    """Chat messages: a system message only when the row has one, then the user prompt."""
    msgs = []
    if example.system is not None:
        msgs.append({"role": "system", "content": example.system})
    msgs.append({"role": "user", "content": example.prompt})
    return msgs


def render_prompt(tokenizer: Any, msgs: Sequence[dict[str, str]]) -> str:
    """The chat-template text the policy sees: generation prompt on, thinking off."""
    return tokenizer.apply_chat_template(
        list(msgs), tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def encode_prompt(tokenizer: Any, msgs: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of render_prompt; the template already holds every special token."""
    return list(tokenizer.encode(render_prompt(tokenizer, msgs), add_special_tokens=False))


class PromptSet:
    """Examples tokenized with the chat template; prompts over max_prompt_len are dropped.

    `examples[i]` and `prompt_ids[i]` are aligned over the kept examples; `num_filtered`
    counts the dropped ones (SPEC section 10: longer prompts are filtered out) and
    `filtered_idx` names them.
    """

    def __init__(self, examples: Sequence[Example], tokenizer: Any, max_prompt_len: int):
        if max_prompt_len < 1:
            raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")
        self.max_prompt_len = max_prompt_len
        self.examples: list[Example] = []
        self.prompt_ids: list[list[int]] = []
        self.filtered_idx: list[int] = []
        for ex in examples:
            ids = encode_prompt(tokenizer, messages(ex))
            if len(ids) > max_prompt_len:
                self.filtered_idx.append(ex.idx)
                continue
            self.examples.append(ex)
            self.prompt_ids.append(ids)
        if not self.examples:
            raise DataError(
                f"PromptSet: all {len(self.filtered_idx)} prompts exceed max_prompt_len="
                f"{max_prompt_len}; nothing left to train or evaluate on"
            )

    @property
    def num_filtered(self) -> int:
        return len(self.filtered_idx)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[Example, list[int]]:
        return self.examples[i], self.prompt_ids[i]


@dataclasses.dataclass(frozen=True)
class SamplerCursor:
    """Everything the sampler needs to continue exactly: save it in the checkpoint."""

    seed: int
    epoch: int = 0
    position: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplerCursor:
        missing = {"seed", "epoch", "position"} - set(d)
        if missing:
            raise ValueError(f"sampler cursor dict is missing {sorted(missing)}: {d}")
        return cls(seed=int(d["seed"]), epoch=int(d["epoch"]), position=int(d["position"]))


class EpochSampler:
    """Deterministic epoch-shuffled indices into a dataset of `size` items.

    Epoch e visits every index once in the permutation drawn from (seed, e); a batch that
    crosses the epoch end continues in the next epoch's permutation. The order is a pure
    function of the cursor, so restoring a saved cursor reproduces the rest of the sequence.
    """

    def __init__(self, size: int, cursor: SamplerCursor | int):
        if size < 1:
            raise ValueError(f"EpochSampler: dataset size must be >= 1, got {size}")
        self.size = size
        self.cursor = cursor if isinstance(cursor, SamplerCursor) else SamplerCursor(seed=cursor)
        if not 0 <= self.cursor.position < size:
            raise ValueError(
                f"EpochSampler: cursor position {self.cursor.position} outside [0, {size})"
            )
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            # String seeds hash deterministically across processes (unlike tuple hashing).
            self._perm = list(range(self.size))
            random.Random(f"srpo_jax-sampler-{self.cursor.seed}-{epoch}").shuffle(self._perm)
            self._perm_epoch = epoch
        return self._perm

    def next_indices(self, n: int) -> list[int]:
        """The next n indices; advances the cursor."""
        if n < 1:
            raise ValueError(f"EpochSampler.next_indices: n must be >= 1, got {n}")
        seed, epoch, pos = self.cursor.seed, self.cursor.epoch, self.cursor.position
        out = []
        for _ in range(n):
            out.append(self._permutation(epoch)[pos])
            pos += 1
            if pos == self.size:
                epoch, pos = epoch + 1, 0
        self.cursor = SamplerCursor(seed=seed, epoch=epoch, position=pos)
        return out

    def state_dict(self) -> dict[str, int]:
        return self.cursor.to_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        cursor = SamplerCursor.from_dict(d)
        if not 0 <= cursor.position < self.size:
            raise ValueError(
                f"EpochSampler: cursor position {cursor.position} outside [0, {self.size})"
            )
        self.cursor = cursor
