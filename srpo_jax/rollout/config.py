"""The run config's `rollout` section and its `rollout.sglang` sub-section.

Which engine generates the rollouts, how it samples, how often a failed generation is
retried, and (for SGLang) where the servers are and how weights reach them. `SGLangConfig` is
the one SGLang settings class: the run config's section and what `SGLangEngine` takes.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shlex

from srpo_jax.config_checks import ConfigError, one_of, require

SYNC_STRATEGIES = ("update_from_disk", "restart", "distributed", "none")
WEIGHTS_DTYPES = ("", "auto", "float32", "bfloat16", "float16")
# SGLang's /pause_generation modes that leave /flush_cache able to run: "in_place" keeps the
# running requests (and their KV) in the batch, and the server then refuses the flush the
# weight sync needs (managers/io_struct.py PauseGenerationReqInput in SGLang 0.5.23).
PAUSE_MODES = ("abort", "retract")
_KEY = "rollout.sglang"

# The server-wide flag that makes each server kind sample from `sampling_seed`; without it
# both ignore the seed (sampling/sampling_batch_info.py in SGLang 0.5.23 and in sglang-jax
# 0.1.0rc0 pass no seeds to the sampler unless it is set).
DETERMINISTIC_FLAGS = {
    "sglang": "--enable-deterministic-inference",
    "sglang-jax": "--enable-deterministic-sampling",
}


def server_kind(launch_command: str) -> str | None:
    """Which server a launch command template starts, from the module or program it runs:
    "sglang-jax" (sgl_jax.launch_server), "sglang" (sglang.launch_server, `sglang`) or None."""
    try:
        words = shlex.split(launch_command)
    except ValueError:  # unbalanced quotes: not a command we can read
        return None
    if any("sgl_jax" in w for w in words):
        return "sglang-jax"
    if any(w.startswith("sglang.") or pathlib.PurePath(w).name == "sglang" for w in words):
        return "sglang"
    return None


@dataclasses.dataclass(frozen=True)
class SGLangConfig:
    """Where the SGLang servers are (or how to launch them) and how to talk to them.

    Either `urls` names running servers, or `launch_command` (a template with `{model_path}`,
    `{host}`, `{port}`, `{index}`) starts `num_servers` local ones on `host`, ports
    base_port + i (base_port 0: free ports picked by the OS). `export_dir` must be readable by
    every server (a shared filesystem for remote ones); empty means workdir/export in a run
    (a fresh temp dir for an engine built directly). Each field is checked on construction;
    `check_servers` (the engine calls it) checks that there is exactly one way to reach a
    server, so the section can stay empty while rollout.engine is "jax".
    """

    urls: tuple[str, ...] = ()  # running servers; empty = launch num_servers with launch_command
    launch_command: str = ""
    num_servers: int = 1  # servers to launch (launch_command only)
    host: str = "127.0.0.1"
    base_port: int = 30000
    launch_env: dict = dataclasses.field(default_factory=dict)  # extra env of launched servers
    log_dir: str = ""  # server logs; empty: inside export_dir
    timeout_s: float = 600.0  # per HTTP request
    startup_timeout_s: float = 600.0  # per launch, until /health answers
    max_retries: int = 3  # per HTTP request
    backoff_s: float = 1.0  # first retry waits this, then doubles
    max_concurrency: int = 8  # requests in flight at once (over all servers)
    rows_per_request: int = 64  # rollout rows per POST /generate
    # How new weights reach the servers. "none": they keep the weights they started on, so
    # every rollout after the first step is off-policy; only for servers given by URL that
    # cannot load weights (sglang-jax has no update route), to check a launch end to end.
    sync: str = "update_from_disk"
    pause_mode: str = "abort"
    load_format: str | None = None
    export_dir: str = ""  # shared-file-system dir for weight export
    keep_exports: int = 2
    max_restarts: int = 5  # relaunches of dead launched servers per run (then the run stops)
    # Exact resume over SGLang: launched servers get their kind's flag that makes them honour
    # sampling_seed (SGLang: --enable-deterministic-inference, sglang-jax:
    # --enable-deterministic-sampling). Off by default: the seeded samplers trade faithful
    # samples for reproducible ones (docs/rollout.md).
    deterministic: bool = False
    # sync="distributed" (srpo_jax.rollout.weight_sync): learner process 0 is rank 0 of a
    # torch.distributed group with every server's tp ranks and broadcasts the weights in
    # buckets of about bucket_mb MiB (a tensor larger than that gets a bucket of its own).
    bucket_mb: float = 512.0
    # One uint8 buffer per bucket (SGLang's flattened_bucket), else one broadcast per tensor:
    # per tensor lets the next tensor's gather overlap this one's broadcast within one
    # bucket of host memory, 1.1-3.2x faster on CPU (docs/performance.md).
    bucket_flatten: bool = False
    group_master_address: str = ""  # how servers reach process 0; "" = the route to server 0
    group_port: int = 0  # 0: a free port, picked each time the group forms
    group_backend: str = "nccl"  # nccl between GPUs; gloo on CPU (the tests)
    group_timeout_s: float = 60.0  # forming the group and each broadcast; then disk fallback

    def __post_init__(self):
        require(not isinstance(self.urls, str), f"{_KEY}.urls", "a tuple of URLs", self.urls)
        for u in self.urls:
            ok = isinstance(u, str) and u.startswith(("http://", "https://"))
            require(ok, f"{_KEY}.urls", "http(s):// URLs", u)
        require(self.num_servers >= 0, f"{_KEY}.num_servers", ">= 0", self.num_servers)
        require(
            0 <= self.base_port <= 65535, f"{_KEY}.base_port", "0 or a TCP port", self.base_port
        )
        for key in ("timeout_s", "startup_timeout_s"):
            require(getattr(self, key) > 0, f"{_KEY}.{key}", "> 0", getattr(self, key))
        for key in ("max_retries", "max_restarts", "backoff_s"):
            require(getattr(self, key) >= 0, f"{_KEY}.{key}", ">= 0", getattr(self, key))
        for key in ("rows_per_request", "max_concurrency", "keep_exports"):
            require(getattr(self, key) >= 1, f"{_KEY}.{key}", ">= 1", getattr(self, key))
        one_of(f"{_KEY}.sync", self.sync, SYNC_STRATEGIES)
        require(self.bucket_mb > 0, f"{_KEY}.bucket_mb", "> 0", self.bucket_mb)
        require(
            0 <= self.group_port <= 65535, f"{_KEY}.group_port", "0 or a TCP port", self.group_port
        )
        require(self.group_timeout_s > 0, f"{_KEY}.group_timeout_s", "> 0", self.group_timeout_s)
        one_of(f"{_KEY}.group_backend", self.group_backend, ("nccl", "gloo"))
        one_of(f"{_KEY}.pause_mode", self.pause_mode, PAUSE_MODES)

    def check_servers(self) -> None:
        """ConfigError unless exactly one of urls / launch_command says where the servers are
        (and the launch and sync settings fit that choice)."""
        if not (self.urls or self.launch_command):
            raise ConfigError(
                f"config.{_KEY}.urls is empty and config.{_KEY}.launch_command is "
                "empty: the sglang engine needs running servers or a command to launch them"
            )
        if self.urls and self.launch_command:
            raise ConfigError(
                f"config.{_KEY}.launch_command must be empty when config.{_KEY}.urls names "
                "running servers (give one of them)"
            )
        if self.launch_command and self.num_servers < 1:
            raise ConfigError(
                f"config.{_KEY}.num_servers must be >= 1 with a launch_command, "
                f"got {self.num_servers}"
            )
        last_port = self.base_port + self.num_servers - 1
        if self.launch_command and self.base_port and last_port > 65535:
            raise ConfigError(
                f"config.{_KEY}.base_port + num_servers - 1 must be <= 65535, got {last_port}"
            )
        if self.deterministic and self.launch_command and not server_kind(self.launch_command):
            raise ConfigError(
                f"config.{_KEY}.deterministic needs a launch_command that runs "
                "sglang.launch_server or sgl_jax.launch_server (to know which flag makes it "
                f"honour sampling_seed), got {self.launch_command!r}"
            )
        if self.sync == "restart" and not self.launch_command:
            raise ConfigError(
                f"config.{_KEY}.sync 'restart' needs config.{_KEY}.launch_command (only "
                "launched servers can be relaunched)"
            )


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """The run config's `rollout` section: engine, sampling and retries."""

    engine: str = "jax"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    # A failed engine call (any engine) is retried this many times before the run stops.
    max_retries: int = 2
    # The dtype the embedded JAX engine samples from; "" or "auto": the model's compute dtype
    # (model.dtype), so a bf16 run samples from a bf16 copy, not from the fp32 master weights.
    weights_dtype: str = ""
    # 1: one step off-policy. Step n+1's rollout is generated (by SGLang, beside the learner)
    # while step n trains, so it samples from the weights one version behind; 0: on-policy,
    # the paper's loop (docs/architecture.md, "One step off-policy").
    overlap: int = 0
    sglang: SGLangConfig = dataclasses.field(default_factory=SGLangConfig)

    def __post_init__(self):
        one_of("rollout.engine", self.engine, ("jax", "sglang"))
        require(self.temperature >= 0, "rollout.temperature", ">= 0", self.temperature)
        require(0 < self.top_p <= 1, "rollout.top_p", "in (0, 1]", self.top_p)
        require(
            self.top_k == -1 or self.top_k >= 1, "rollout.top_k", "-1 (off) or >= 1", self.top_k
        )
        require(self.max_retries >= 0, "rollout.max_retries", ">= 0", self.max_retries)
        one_of("rollout.weights_dtype", self.weights_dtype, WEIGHTS_DTYPES)
        require(self.overlap in (0, 1), "rollout.overlap", "0 or 1", self.overlap)
        if self.engine == "sglang":
            self.sglang.check_servers()
        elif self.sglang.sync == "distributed":
            raise ConfigError(
                "config.rollout.sglang.sync 'distributed' needs rollout.engine 'sglang' "
                f"(got {self.engine!r}: the embedded engine shares the learner's arrays)"
            )


def engine_weights_dtype(rollout: RolloutConfig, model_dtype: str) -> str:
    """The dtype the embedded engine samples from: rollout.weights_dtype, or the model's
    compute dtype when it is "" or "auto"."""
    return model_dtype if rollout.weights_dtype in ("", "auto") else rollout.weights_dtype
