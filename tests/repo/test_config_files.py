"""Every configs/*.py round-trips through the config tree, and its docstring says what it sets.

Each file's ConfigDict becomes a Config, whose to_dict becomes the same Config again; each
`python -m srpo_jax.main ...` command in a docstring is parsed by the real flag parser
(absl + ml_collections config_flags, as main does) into a valid Config; and the numbers a
benchmark file's docstring states (mesh, rows per micro-batch, prompts x rollouts, sampling,
eval cadence, checkpoints kept) are the ones it sets.
"""

import pathlib
import re
import shlex
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from srpo_jax import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(CONFIGS.glob("*.py"))


def _doc(path: pathlib.Path) -> str:
    import ast

    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _commands(doc: str) -> list[list[str]]:
    """The argv of every `python -m srpo_jax.main` command (with \\ continuations)."""
    joined = re.sub(r"\\\n\s*", " ", doc)
    return [
        shlex.split(line.strip())[3:]
        for line in joined.splitlines()
        if line.strip().startswith("python -m srpo_jax.main ")
    ]


def _parse(argv: list[str], monkeypatch) -> config_lib.Config:
    # config_flags reads its --config.a.b=v overrides from sys.argv, as in main.
    monkeypatch.setattr(sys, "argv", ["main", *argv])
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
    for name in ("workdir",):
        flags.DEFINE_string(name, None, "", flag_values=fv)
    flags.DEFINE_bool("print_config", False, "", flag_values=fv)
    fv(["main", *argv])
    return config_lib.from_config_dict(fv.config)


def _load(spec: str) -> config_lib.Config:
    cd = config_lib.load_config_file(spec)
    # The benchmark files refuse to run without weights; no weights are read here.
    cd.model.hf_path = cd.model.hf_path or "/path/to/weights"
    return config_lib.from_config_dict(cd)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_config_file_round_trips_through_the_tree(path):
    cfg = _load(str(path))
    assert config_lib.from_config_dict(config_lib.to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_docstring_commands_parse(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # the commands are written from the repository root
    commands = _commands(_doc(path))
    assert commands, f"{path.name}: its docstring shows no python -m srpo_jax.main command"
    for argv in commands:
        cfg = _parse(argv, monkeypatch)
        spec = next(a for a in argv if a.startswith("--config="))[len("--config=") :]
        assert cfg.algo.method == (spec.partition(":method=")[2] or "srpo")
        resolved = config_lib.to_dict(cfg)
        for flag in argv:  # each --config.a.b=v of the command reached the tree
            if flag.startswith("--config."):
                key, _, value = flag[len("--config.") :].partition("=")
                node = resolved
                for part in key.split("."):
                    node = node[part]
                assert str(node) == value, flag


@pytest.mark.parametrize(
    "path", [p for p in FILES if p.name.startswith("qwen3_")], ids=lambda p: p.name
)
def test_benchmark_docstring_states_what_the_file_sets(path):
    doc = " ".join(_doc(path).split())
    cfg = _load(f"{path}:method=srpo")
    preset = re.match(r"Qwen3-(\d+)B", doc).group(1)
    assert cfg.model.preset == f"qwen3_{preset}b" and cfg.model.remat and "remat on" in doc
    tensor, rows = re.search(r"tensor=(\d+), (\d+) rows per micro-batch", doc).groups()
    assert (cfg.mesh.tensor, cfg.train.micro_batch_rows) == (int(tensor), int(rows))
    prompts, group = re.search(r"(\d+) prompts x (\d+) rollouts per step", doc).groups()
    assert (cfg.train.prompts_per_step, cfg.algo.group_size) == (int(prompts), int(group))
    assert f"T = {cfg.rollout.temperature}" in doc
    assert f"up to {cfg.data.max_response_len} tokens" in doc
    assert f"avg@{cfg.eval.num_samples}" in doc and f"every {cfg.eval.every_steps} steps" in doc
    assert f"(last {cfg.checkpoint.keep})" in doc
    assert f"{cfg.train.time_budget_hours:g}-hour" in doc
