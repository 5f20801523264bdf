"""The run configuration tree: ml_collections ConfigDict -> one `Config` of section dataclasses.

Each section's frozen dataclass lives in, and is validated by, the module it configures:

    model       srpo_jax.model.config.ModelConfig       (architecture(): the one Qwen3Config)
    tokenizer   srpo_jax.data.datasets.TokenizerConfig
    mesh        srpo_jax.sharding.MeshConfig
    data        srpo_jax.data.datasets.DataConfig
    algo        srpo_jax.algo.config.AlgoConfig         (method: a name in algo/methods.py)
    optim       srpo_jax.learner.train_step.OptimConfig
    train       srpo_jax.learner.train_step.TrainConfig
    warmup      srpo_jax.trainer.warmup.WarmupConfig               (supervised warm-up; demo only)
    rollout     srpo_jax.rollout.config.RolloutConfig   (rollout.sglang: SGLangConfig)
    eval        srpo_jax.trainer.evaluation.EvalConfig
    checkpoint  srpo_jax.trainer.checkpoint.CheckpointConfig
    log         srpo_jax.trainer.metrics.LogConfig

This module only assembles the tree from a ConfigDict and checks the rules that span
sections. Every message names the dotted key and the bad value ("config.optim.lr must be
> 0, got -1.0", srpo_jax/config_checks.py); unknown (misspelt) keys fail with their dotted
name and the closest valid keys. Only this module, main.py and cli.py know about
ConfigDict; the rest of the library receives the section dataclasses.

Method-dependent defaults (SPEC section 10): `optim.lr` and `train.mini_batch_prompts` may
be None, meaning "the value in config.algo.method's record" (algo/methods.py); `Config`
resolves them. `tokenizer.path` "" resolves to `model.hf_path` (the tokenizer ships with the
weights) or, when that is empty too, to the tiny tokenizer the demo builds into the workdir.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any

from srpo_jax.algo import methods
from srpo_jax.algo.config import AlgoConfig
from srpo_jax.config_checks import ConfigError, one_of, require
from srpo_jax.data.buckets import worst_case_lengths
from srpo_jax.data.datasets import DataConfig, TokenizerConfig
from srpo_jax.learner.config import OptimConfig, TrainConfig
from srpo_jax.model.config import ModelConfig
from srpo_jax.rollout.config import RolloutConfig, SGLangConfig
from srpo_jax.sharding import MeshConfig
from srpo_jax.trainer.config import CheckpointConfig, EvalConfig, LogConfig, WarmupConfig

if typing.TYPE_CHECKING:
    import ml_collections

__all__ = [
    "AlgoConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "SGLangConfig",
    "TokenizerConfig",
    "TrainConfig",
    "WarmupConfig",
    "check_mesh",
    "check_model",
    "from_config_dict",
    "load_config_file",
    "to_dict",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run. Cross-section checks and method-default resolution live here."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    algo: AlgoConfig = dataclasses.field(default_factory=AlgoConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    warmup: WarmupConfig = dataclasses.field(default_factory=WarmupConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    def __post_init__(self):
        method = self.algo.method_record
        # Frozen: resolve "method default" placeholders by replacing the sub-configs once here.
        if self.optim.lr is None:
            object.__setattr__(self, "optim", dataclasses.replace(self.optim, lr=method.lr))
        if self.train.mini_batch_prompts is None:
            mb = min(method.mini_batch_prompts, self.train.prompts_per_step)
            object.__setattr__(
                self, "train", dataclasses.replace(self.train, mini_batch_prompts=mb)
            )
        if not self.tokenizer.path and self.model.hf_path:
            object.__setattr__(self, "tokenizer", TokenizerConfig(path=self.model.hf_path))
        for axis in ("data", "fsdp", "tensor"):
            require(getattr(self.mesh, axis) >= 1, f"mesh.{axis}", ">= 1", getattr(self.mesh, axis))

        t = self.train
        if t.prompts_per_step % t.mini_batch_prompts:
            raise ConfigError(
                f"config.train.mini_batch_prompts must divide config.train.prompts_per_step "
                f"({t.prompts_per_step}), got {t.mini_batch_prompts}"
            )
        mini_rows = t.mini_batch_prompts * self.algo.group_size
        if t.micro_batch_rows and mini_rows % t.micro_batch_rows:
            raise ConfigError(
                f"config.train.micro_batch_rows must divide the mini-batch rows "
                f"(mini_batch_prompts * group_size = {mini_rows}), got {t.micro_batch_rows}"
            )
        # Rows are sharded over the data and fsdp mesh axes: a micro-batch must split evenly.
        batch_shards = self.mesh.data * self.mesh.fsdp
        rows = t.micro_batch_rows or mini_rows
        if rows % batch_shards:
            raise ConfigError(
                f"config.train.micro_batch_rows (rows per micro-batch = {rows}) must be divisible "
                f"by mesh.data * mesh.fsdp = {batch_shards}"
            )
        self._check_packing()

    def _check_packing(self) -> None:
        """train.packed: resolve pack_len (0 = the longest padded row, student or teacher) and
        check that every row fits one stream and a micro-batch holds at least one stream."""
        t, d, a = self.train, self.data, self.algo
        if not t.packed:
            if t.micro_batch_tokens or t.pack_len:
                raise ConfigError(
                    "config.train.micro_batch_tokens and config.train.pack_len are read only "
                    "with config.train.packed=True"
                )
            return
        if not t.pack_len:
            object.__setattr__(self, "train", dataclasses.replace(t, pack_len=pack_len_of(self)))
            t = self.train
        for name, longest in (
            ("data.max_prompt_len + config.data.max_response_len", d.max_prompt_len),
            ("algo.max_reprompt_len + config.data.max_response_len", a.max_reprompt_len),
        ):
            if longest + d.max_response_len > t.pack_len:
                raise ConfigError(
                    f"config.{name} = {longest + d.max_response_len} is longer than "
                    f"config.train.pack_len = {t.pack_len}: a row must fit one packed stream"
                )
        if t.micro_batch_tokens and t.micro_batch_tokens < t.pack_len:
            raise ConfigError(
                f"config.train.micro_batch_tokens = {t.micro_batch_tokens} is less than "
                f"config.train.pack_len = {t.pack_len}: a micro-batch must hold one stream"
            )
        # Streams are split over the batch axes (learner/packing.py): one per shard at least.
        shards = self.mesh.data * self.mesh.fsdp
        if t.micro_batch_tokens and t.micro_batch_tokens < t.pack_len * shards:
            raise ConfigError(
                f"config.train.micro_batch_tokens = {t.micro_batch_tokens} is less than "
                f"config.train.pack_len * mesh.data * mesh.fsdp = {t.pack_len * shards}: "
                "a micro-batch must hold one stream per batch shard"
            )

    @property
    def num_updates_per_step(self) -> int:
        return self.train.prompts_per_step // self.train.mini_batch_prompts


def pack_len_of(cfg: Config) -> int:
    """The default train.pack_len: the longest row the padded layout would hold, student
    (prompt + response buckets) or teacher (reprompt + response buckets)."""
    p, r, pt = worst_case_lengths(cfg)
    return max(p, pt) + r


def check_mesh(cfg: Config, num_devices: int) -> None:
    """Run-time check (device count is known only after jax.distributed.initialize)."""
    m = cfg.mesh
    if m.data * m.fsdp * m.tensor != num_devices:
        raise ConfigError(
            f"config.mesh data*fsdp*tensor = {m.data}*{m.fsdp}*{m.tensor} = "
            f"{m.data * m.fsdp * m.tensor} must equal the number of devices ({num_devices}); "
            f"e.g. {_mesh_hint(cfg, num_devices)}"
        )


def _mesh_hint(cfg: Config, num_devices: int) -> str:
    """The fewest axis changes that make a valid mesh on num_devices (the product, and rows
    that split over data*fsdp), as flags; fsdp=num_devices alone when none does."""
    m, t = cfg.mesh, cfg.train
    rows = t.micro_batch_rows or t.mini_batch_prompts * cfg.algo.group_size
    divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    options = [
        (data, num_devices // (data * tensor), tensor)
        for data in divisors
        for tensor in divisors
        if num_devices % (data * tensor) == 0 and rows % (num_devices // tensor) == 0
    ]
    if not options:
        return f"--config.mesh.fsdp={num_devices}"
    current = (m.data, m.fsdp, m.tensor)
    best = min(options, key=lambda o: sum(a != b for a, b in zip(o, current, strict=True)))
    names = ("data", "fsdp", "tensor")
    changed = [
        f"--config.mesh.{n}={v}" for n, v, c in zip(names, best, current, strict=True) if v != c
    ]
    return " ".join(changed)


def check_model(cfg: Config, vocab_size: int) -> None:
    """Run-time check against the model (its vocabulary is known once the architecture is
    resolved, from hf_path/config.json when weights are given)."""
    require(
        cfg.algo.topk <= vocab_size, "algo.topk", f"<= the vocab_size ({vocab_size})", cfg.algo.topk
    )
    top_k = cfg.rollout.top_k
    require(
        top_k <= vocab_size, "rollout.top_k", f"-1 (off) or <= the vocab_size ({vocab_size})", top_k
    )


# ---------------------------------------------------------------------------------------
# ConfigDict <-> dataclasses


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Checks one leaf against its annotation; returns it normalised (int->float, list->tuple)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):  # no setting means anything by inf or nan
            raise ConfigError(f"config.{key} must be finite, got {value!r}")
    elif annotation is str:
        ok = isinstance(value, str)
    elif annotation is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    elif origin is tuple:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - every field annotation is one of the above
        raise TypeError(f"unsupported annotation {annotation} for config.{key}")
    if not ok:
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"config.{key} must be of type {name}, got {value!r}")
    return value


def _build(cls, data: Mapping, prefix: str):
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            dotted = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hint = (
                f" (did you mean {', '.join('config.' + prefix + c for c in close)}?)"
                if close
                else ""
            )
            raise ConfigError(
                f"unknown config key config.{dotted}{hint}; valid keys: {', '.join(fields)}"
            )
    kwargs = {}
    for name, annotation in fields.items():
        if name not in data:
            continue
        value = data[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config.{prefix}{name} must be a section (dict), got {value!r}")
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, annotation)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # e.g. MeshConfig's own validation
        raise ConfigError(f"config.{prefix.rstrip('.')}: {e}") from e


def _to_plain(value: Any) -> Any:
    """ConfigDict/FieldReference/Mapping -> plain nested dicts (placeholders become None)."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    if hasattr(value, "get") and not isinstance(value, Mapping) and hasattr(value, "has_cycle"):
        value = value.get()  # a FieldReference
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def from_config_dict(config: Mapping) -> Config:
    """ConfigDict (or the plain dict `to_dict` wrote) -> validated Config; raises ConfigError."""
    plain = _to_plain(config)
    if not isinstance(plain, Mapping):  # e.g. a config file whose get_config returns a list
        raise ConfigError(f"the config must be a ConfigDict (a mapping), got {plain!r:.80}")
    return _build(Config, plain, "")


def to_dict(cfg: Config) -> dict:
    """The resolved config as JSON-ready nested dicts (for logs and checkpoint sidecars)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def default_config_dict() -> ml_collections.ConfigDict:
    """Every key of the tree with its default, as an unlocked ConfigDict: what config files
    start from (configs/base.py), so each default is written once, in its section's
    dataclass. Fields whose default is None (resolved later, e.g. optim.lr) become typed
    placeholders, so `--config.optim.lr=1e-5` still parses on the command line."""
    import ml_collections
    from ml_collections import config_dict

    def section(cls) -> dict[str, Any]:
        out = {}
        for name, annotation in _fields(cls).items():
            if dataclasses.is_dataclass(annotation):
                out[name] = section(annotation)
                continue
            default = getattr(cls(), name)  # a section's own default (not Config's resolution)
            if default is None:
                base = next(a for a in typing.get_args(annotation) if a is not type(None))
                out[name] = config_dict.placeholder(base)
            else:
                out[name] = default
        return out

    return ml_collections.ConfigDict(section(Config))


def _exec_config_module(path: str | pathlib.Path, prefix: str) -> types.ModuleType:
    """The one config-file loader: runs a configs/*.py file by path (not as a package, so
    `import base` would not depend on the working directory). OSError when it is missing."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"{prefix}_{path.stem}", path)
    if spec is None:
        raise FileNotFoundError(f"config file {str(path)!r} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of a config-file argument "path/to/file.py[:arg]" (as --config takes)."""
    path, _, arg = spec.partition(":")
    module = _exec_config_module(path, "srpo_config")
    return module.get_config(arg) if arg else module.get_config()


def load_config_module(config_file: str, sibling: str) -> types.ModuleType:
    """Loads configs/<sibling> beside `config_file` (e.g. base.py beside a benchmark file)."""
    return _exec_config_module(pathlib.Path(config_file).with_name(sibling), "srpo_configs")


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Parses a config-file argument "k=v,k2=v2" (e.g. "method=srpo") against known keys."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(
                f"config argument {item!r} must look like key=value, e.g. method=srpo"
            )
        if key not in out:
            close = difflib.get_close_matches(key, list(out), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown config argument {key!r}{hint}; valid: {', '.join(out)}")
        out[key] = type(defaults[key])(value)
    if "method" in out:
        one_of("algo.method (config argument method=)", out["method"], methods.names())
    return out
