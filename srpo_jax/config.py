"""Typed, validated run configuration: ml_collections ConfigDict -> frozen dataclasses.

Config files (configs/*.py) build a ConfigDict; `from_config_dict` turns it into a `Config`
of frozen dataclasses, one per section, each validated in `__post_init__` with a message
naming the dotted key and the bad value ("config.optim.lr must be > 0, got -1.0"). Unknown
(misspelt) keys fail with their dotted name and the closest valid keys. Only this module and
main.py know about ConfigDict; the rest of the library receives these dataclasses.

Method-dependent defaults (SPEC section 10): `optim.lr` and `train.mini_batch_prompts` may
be None, meaning "the paper's value for config.algo.method"; `Config` resolves them.
`tokenizer.path` "" resolves to `model.hf_path` (the tokenizer ships with the weights) or,
when that is empty too, to the tiny tokenizer the demo builds into the workdir.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any

from srpo_jax.sharding import MeshConfig

PRESETS = ("tiny", "qwen3_0p6b", "qwen3_1p7b", "qwen3_4b", "qwen3_8b", "qwen3_14b", "qwen3_32b")
TASKS = ("synthetic", "chem", "phys", "bio", "materials", "tooluse")
METHODS = ("grpo", "sdpo", "srpo", "srpo_no_dw", "advantage_mix")
FUSED_IMPLEMENTATIONS = ("auto", "xla", "reference", "pallas_gpu", "pallas_tpu")
FUSED_GRAD_MODES = ("auto", "forward", "recompute")

# SPEC section 10: learning rate and optimisation mini-batch (prompts) per method. SRPO uses
# the halfway learning rate; its ablations inherit SRPO's settings.
METHOD_LR = {
    "grpo": 1e-6,
    "sdpo": 1e-5,
    "srpo": 5.5e-6,
    "srpo_no_dw": 5.5e-6,
    "advantage_mix": 5.5e-6,
}
METHOD_MINI_BATCH_PROMPTS = {
    "grpo": 8,
    "sdpo": 32,
    "srpo": 32,
    "srpo_no_dw": 32,
    "advantage_mix": 32,
}


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


def _require(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config.{key} must be {requirement}, got {value!r}")


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    _require(value in allowed, key, f"one of {', '.join(map(repr, allowed))}", value)


def _in_unit(key: str, value: float, *, low_open: bool = False, high_open: bool = False) -> None:
    lo = value > 0.0 if low_open else value >= 0.0
    hi = value < 1.0 if high_open else value <= 1.0
    req = f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    _require(lo and hi, key, req, value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and weights. preset names a Qwen3Config preset; hf_path a local HF dir."""

    preset: str = "tiny"  # "" = take the architecture from hf_path/config.json
    hf_path: str = ""  # local HF checkpoint dir (config.json + safetensors); "" = random init
    overrides: dict = dataclasses.field(default_factory=dict)  # Qwen3Config field -> value
    dtype: str = "bfloat16"  # compute dtype; params and EMA teacher stay fp32
    remat: bool = False
    attention_query_chunk: int = 1024  # queries per attention block; 0 = all at once
    attention_impl: str = "auto"  # auto | xla | cudnn | splash (srpo_jax.model.attention)
    # A full-size preset without weights trains a random network: refuse unless asked for
    # (throughput tests), so a forgotten hf_path cannot waste a 10-hour run.
    random_init: bool = False

    def __post_init__(self):
        _one_of("model.preset", self.preset, PRESETS + ("",))
        _require(
            bool(self.preset or self.hf_path),
            "model.hf_path",
            "set when model.preset is empty",
            self.hf_path,
        )
        _one_of("model.dtype", self.dtype, ("bfloat16", "float32"))
        _one_of("model.attention_impl", self.attention_impl, ("auto", "xla", "cudnn", "splash"))
        _require(
            self.attention_query_chunk >= 0,
            "model.attention_query_chunk",
            ">= 0 (0: no query blocks)",
            self.attention_query_chunk,
        )
        needs_weights = (
            self.preset not in ("tiny", "") and not self.hf_path and not self.random_init
        )
        if needs_weights:
            raise ConfigError(
                f"config.model.hf_path is empty for preset {self.preset!r}: pass the pretrained "
                "weights with --config.model.hf_path=/path/to/hf_dir (or set "
                "config.model.random_init=True to train a randomly initialised network)"
            )
        # Imported here: the model package pulls in flax, and config must stay light to import.
        from srpo_jax.model.config import Qwen3Config

        # dtype, remat and attention_query_chunk have their own keys; everything else in
        # Qwen3Config may be overridden.
        own_keys = ("dtype", "remat", "attention_query_chunk", "attention_impl")
        allowed = [f.name for f in dataclasses.fields(Qwen3Config) if f.name not in own_keys]
        for name in self.overrides:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=2)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(
                    f"unknown config key config.model.overrides.{name}{hint}; "
                    f"valid: {', '.join(allowed)}"
                )

    def architecture(self):
        """The Qwen3Config to build: hf_path/config.json when weights are given (checked
        against the preset, if one is named), else the preset; overrides applied to either."""
        from srpo_jax.model.config import PRESETS as MODEL_PRESETS
        from srpo_jax.model.config import Qwen3Config

        extra = {
            **self.overrides,
            "dtype": self.dtype,
            "remat": self.remat,
            "attention_query_chunk": self.attention_query_chunk,
            "attention_impl": self.attention_impl,
        }
        preset = MODEL_PRESETS[self.preset](**extra) if self.preset else None
        if not self.hf_path:
            return preset
        path = pathlib.Path(self.hf_path) / "config.json"
        if not path.is_file():
            raise ConfigError(f"config.model.hf_path has no config.json: {str(path)!r} not found")
        loaded = Qwen3Config.from_hf_dict(json.loads(path.read_text()), **extra)
        if preset is not None and preset != loaded:
            diffs = [
                f"{f.name} {getattr(loaded, f.name)!r} vs {getattr(preset, f.name)!r}"
                for f in dataclasses.fields(Qwen3Config)
                if getattr(loaded, f.name) != getattr(preset, f.name)
            ]
            raise ConfigError(
                f"config.model.hf_path {self.hf_path!r} does not hold config.model.preset "
                f"{self.preset!r} (config.json vs preset: {', '.join(diffs)}); fix one of them or "
                "set --config.model.preset='' to take the architecture from config.json"
            )
        return loaded


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    path: str = ""  # "" = model.hf_path, or the demo's tiny tokenizer when that is empty too


@dataclasses.dataclass(frozen=True)
class DataConfig:
    task: str = "synthetic"
    data_dir: str = "../shared/data"
    max_prompt_len: int = 2048  # longer prompts are filtered out (SPEC 10)
    max_response_len: int = 8192
    shuffle_seed: int = 0
    synthetic_train_size: int = 512
    synthetic_test_size: int = 64

    def __post_init__(self):
        _one_of("data.task", self.task, TASKS)
        for k in (
            "max_prompt_len",
            "max_response_len",
            "synthetic_train_size",
            "synthetic_test_size",
        ):
            _require(getattr(self, k) >= 1, f"data.{k}", ">= 1", getattr(self, k))


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    """SPEC sections 1-9. Names follow the SPEC; defaults are the SPEC defaults."""

    method: str = "srpo"
    group_size: int = 8
    success_threshold: float = 0.5
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    tis_cap: float = 2.0  # truncated IS cap between trainer and rollout engine
    is_clip: float = 2.0  # SDPO upper ratio clip
    topk: int = 100
    alpha: float = 0.5  # generalised JSD interpolation
    tau: float = 1.0  # entropy-weight temperature
    add_tail: bool = True
    entropy_over: str = "vocab"
    loss_agg: str = "token-mean"
    adv_mix_lambda: float = 0.1
    ema_rate: float = 0.05
    max_reprompt_len: int = 10240
    demo_seed: int = 0  # seeds the fixed order in which a correct sibling is picked

    def __post_init__(self):
        _one_of("algo.method", self.method, METHODS)
        # A group of one has no siblings: no advantage signal and no teacher.
        _require(self.group_size >= 2, "algo.group_size", ">= 2", self.group_size)
        _in_unit("algo.success_threshold", self.success_threshold, low_open=True)
        _in_unit("algo.clip_low", self.clip_low, high_open=True)
        _require(self.clip_high >= 0, "algo.clip_high", ">= 0", self.clip_high)
        _require(self.dual_clip > 1, "algo.dual_clip", "> 1", self.dual_clip)
        for k in ("tis_cap", "is_clip", "tau"):
            _require(getattr(self, k) > 0, f"algo.{k}", "> 0", getattr(self, k))
        _require(self.topk >= 1, "algo.topk", ">= 1", self.topk)
        _in_unit("algo.alpha", self.alpha)
        _one_of("algo.entropy_over", self.entropy_over, ("vocab", "buckets"))
        _one_of("algo.loss_agg", self.loss_agg, ("token-mean", "seq-mean-token-mean"))
        _require(self.adv_mix_lambda >= 0, "algo.adv_mix_lambda", ">= 0", self.adv_mix_lambda)
        _in_unit("algo.ema_rate", self.ema_rate, low_open=True)
        _require(self.max_reprompt_len >= 1, "algo.max_reprompt_len", ">= 1", self.max_reprompt_len)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float | None = None  # None = METHOD_LR[algo.method]
    warmup_steps: int = 10  # linear warm-up, then constant; advances once per training step
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # global grad-norm clip; a non-finite norm skips the update
    max_consecutive_skips: int = 10  # abort the run after this many non-finite steps in a row

    def __post_init__(self):
        _require(self.lr is None or self.lr > 0, "optim.lr", "> 0", self.lr)
        _require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
        _in_unit("optim.b1", self.b1, high_open=True)
        _in_unit("optim.b2", self.b2, high_open=True)
        _require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        _require(self.grad_clip > 0, "optim.grad_clip", "> 0", self.grad_clip)
        _require(
            self.max_consecutive_skips >= 1,
            "optim.max_consecutive_skips",
            ">= 1",
            self.max_consecutive_skips,
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    prompts_per_step: int = 32
    mini_batch_prompts: int | None = None  # None = METHOD_MINI_BATCH_PROMPTS[algo.method]
    micro_batch_rows: int = 0  # rows per gradient-accumulation micro-batch; 0 = whole mini-batch
    num_steps: int = 1000
    seed: int = 0
    loss_impl: str = "fused"
    fused_implementation: str = "auto"
    fused_grad_mode: str = "auto"  # where the fused kernel contracts its gradient
    chunk_size: int = 1024  # tokens per chunk of the fused distillation kernel
    time_budget_hours: float = 10.0  # training wall-clock (eval excluded); 0 = no budget
    sft_warmup_steps: int = 0  # supervised warm-up steps before RL (demo only)
    sft_lr: float = 1e-4

    def __post_init__(self):
        _require(
            self.prompts_per_step >= 1, "train.prompts_per_step", ">= 1", self.prompts_per_step
        )
        mb = self.mini_batch_prompts
        _require(mb is None or mb >= 1, "train.mini_batch_prompts", ">= 1", mb)
        _require(
            self.micro_batch_rows >= 0, "train.micro_batch_rows", ">= 0", self.micro_batch_rows
        )
        _require(self.num_steps >= 1, "train.num_steps", ">= 1", self.num_steps)
        _one_of("train.loss_impl", self.loss_impl, ("fused", "plain"))
        _one_of("train.fused_implementation", self.fused_implementation, FUSED_IMPLEMENTATIONS)
        _one_of("train.fused_grad_mode", self.fused_grad_mode, FUSED_GRAD_MODES)
        _require(self.chunk_size >= 1, "train.chunk_size", ">= 1", self.chunk_size)
        _require(
            self.time_budget_hours >= 0, "train.time_budget_hours", ">= 0", self.time_budget_hours
        )
        _require(
            self.sft_warmup_steps >= 0, "train.sft_warmup_steps", ">= 0", self.sft_warmup_steps
        )
        _require(self.sft_lr > 0, "train.sft_lr", "> 0", self.sft_lr)


@dataclasses.dataclass(frozen=True)
class SGLangConfig:
    urls: tuple[str, ...] = ()  # running servers; empty = launch num_servers with launch_command
    launch_command: str = ""
    num_servers: int = 1
    sync: str = "update_from_disk"  # how new weights reach the servers
    export_dir: str = ""  # shared-file-system dir for weight export; "" = workdir/export
    timeout_s: float = 600.0
    max_retries: int = 3
    max_restarts: int = 5  # relaunches of dead launched servers per run (then the run stops)
    rows_per_request: int = 64  # rollout rows per POST /generate
    max_concurrency: int = 8  # requests in flight at once (over all servers)

    def __post_init__(self):
        _require(self.num_servers >= 1, "rollout.sglang.num_servers", ">= 1", self.num_servers)
        _require(self.max_restarts >= 0, "rollout.sglang.max_restarts", ">= 0", self.max_restarts)
        for key in ("rows_per_request", "max_concurrency"):
            _require(getattr(self, key) >= 1, f"rollout.sglang.{key}", ">= 1", getattr(self, key))
        _one_of("rollout.sglang.sync", self.sync, ("update_from_disk", "restart"))
        _require(self.timeout_s > 0, "rollout.sglang.timeout_s", "> 0", self.timeout_s)
        _require(self.max_retries >= 0, "rollout.sglang.max_retries", ">= 0", self.max_retries)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    engine: str = "jax"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    # A failed engine call (any engine) is retried this many times before the run stops.
    max_retries: int = 2
    sglang: SGLangConfig = dataclasses.field(default_factory=SGLangConfig)

    def __post_init__(self):
        _one_of("rollout.engine", self.engine, ("jax", "sglang"))
        _require(self.temperature >= 0, "rollout.temperature", ">= 0", self.temperature)
        _require(0 < self.top_p <= 1, "rollout.top_p", "in (0, 1]", self.top_p)
        _require(
            self.top_k == -1 or self.top_k >= 1, "rollout.top_k", "-1 (off) or >= 1", self.top_k
        )
        _require(self.max_retries >= 0, "rollout.max_retries", ">= 0", self.max_retries)
        if self.engine == "sglang" and not (self.sglang.urls or self.sglang.launch_command):
            raise ConfigError(
                "config.rollout.sglang.urls is empty and config.rollout.sglang.launch_command is "
                "empty: the sglang engine needs running servers or a command to launch them"
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 5  # 0 = never
    num_samples: int = 16  # avg@k with k = num_samples
    temperature: float = 0.6
    top_p: float = 0.95
    max_examples: int = 0  # 0 = the whole test split

    def __post_init__(self):
        _require(self.every_steps >= 0, "eval.every_steps", ">= 0", self.every_steps)
        _require(self.num_samples >= 1, "eval.num_samples", ">= 1", self.num_samples)
        _require(self.temperature >= 0, "eval.temperature", ">= 0", self.temperature)
        _require(0 < self.top_p <= 1, "eval.top_p", "in (0, 1]", self.top_p)
        _require(self.max_examples >= 0, "eval.max_examples", ">= 0", self.max_examples)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 10  # 0 = only at the end of the run
    keep: int = 3

    def __post_init__(self):
        _require(self.every_steps >= 0, "checkpoint.every_steps", ">= 0", self.every_steps)
        _require(self.keep >= 1, "checkpoint.keep", ">= 1", self.keep)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = True
    progress: bool = True


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
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    def __post_init__(self):
        method = self.algo.method
        # Frozen: resolve "method default" placeholders by replacing the sub-configs once here.
        if self.optim.lr is None:
            object.__setattr__(self, "optim", dataclasses.replace(self.optim, lr=METHOD_LR[method]))
        if self.train.mini_batch_prompts is None:
            mb = min(METHOD_MINI_BATCH_PROMPTS[method], self.train.prompts_per_step)
            object.__setattr__(
                self, "train", dataclasses.replace(self.train, mini_batch_prompts=mb)
            )
        if not self.tokenizer.path and self.model.hf_path:
            object.__setattr__(self, "tokenizer", TokenizerConfig(path=self.model.hf_path))
        for axis in ("data", "fsdp", "tensor"):
            _require(
                getattr(self.mesh, axis) >= 1, f"mesh.{axis}", ">= 1", getattr(self.mesh, axis)
            )

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

    @property
    def num_updates_per_step(self) -> int:
        return self.train.prompts_per_step // self.train.mini_batch_prompts


def check_mesh(cfg: Config, num_devices: int) -> None:
    """Run-time check (device count is known only after jax.distributed.initialize)."""
    m = cfg.mesh
    if m.data * m.fsdp * m.tensor != num_devices:
        raise ConfigError(
            f"config.mesh data*fsdp*tensor = {m.data}*{m.fsdp}*{m.tensor} = "
            f"{m.data * m.fsdp * m.tensor} must equal the number of devices ({num_devices}); "
            f"e.g. --config.mesh.fsdp={num_devices // max(1, m.data * m.tensor)}"
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
    return _build(Config, _to_plain(config), "")


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


def load_config_module(config_file: str, sibling: str) -> types.ModuleType:
    """Loads configs/<sibling> beside `config_file` (config files are loaded by path, not as a
    package, so `import base` would depend on the working directory)."""
    path = pathlib.Path(config_file).with_name(sibling)
    spec = importlib.util.spec_from_file_location(f"srpo_configs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        _one_of("algo.method (config argument method=)", out["method"], METHODS)
    return out
