"""RolloutEngine backed by a pool of SGLang servers (the production rollout path).

Generation uses SGLang's native POST /generate with `input_ids` and per-row `sampling_params`
and `return_logprob: true`; each completion's tokens and engine log-probs come from
`meta_info.output_token_logprobs` (`[logprob, token_id, text]` per token), its end from
`meta_info.finish_reason`. Every (prompt p, sample j) pair is sent as its own row with n = 1
and its own `sampling_seed` (folded from seed, step, p, j) rather than as one prompt with
`n`: SGLang takes one seed per request, so this is the only way to give every sample its own
reproducible noise, and it makes the output order (row p*n+j) explicit instead of relying on
how the server expands `n`. The shared prompt is still computed once thanks to the server's
prefix cache. The servers draw from the seed only when launched with their deterministic flag
(rollout.sglang.deterministic, docs/rollout.md); otherwise they ignore it. Rows are chunked
into requests spread round-robin over the server URLs, with a bounded thread pool,
per-request timeouts, and retries with exponential backoff; a server that stays down raises
RolloutError naming its URL.

Weight sync after each training step (`update_weights`): the learner's params are exported as
an HF safetensors checkpoint (bf16 + config.json) under `export_dir/step_<version>`, then
either (sync="update_from_disk") every server gets pause_generation -> flush_cache ->
update_weights_from_disk {model_path, load_format, weight_version} -> continue_generation and
the version it reports (/model_info, or /get_weight_version on older servers) is checked, or
(sync="restart") the locally launched servers are relaunched on the new checkpoint, for
servers without an update route. Only the newest `keep_exports` checkpoints are kept.
sync="none" exports and pushes nothing: the servers keep their starting weights and the
rollouts report that version (a launch check over servers that cannot load weights).

Dead servers. A launched server whose process has exited (crash, OOM kill, SIGKILL) fails
its requests at once instead of after the retry back-off, so the generation in flight raises
RolloutError (the caller retries the whole batch; nothing partial is returned). The next
`generate` relaunches every dead launched server on the weights it last served, stamps the
current weight version on it (update_from_disk sync) and counts it in `num_restarts`; past
`max_restarts` per engine it raises RolloutError with the server's log tail instead. A
relaunch with sync="restart" that fails to come up is tried again from the same budget.
Servers given by URL are not ours to restart: their failures surface as RolloutError naming
the URL.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import requests
from absl import logging

from srpo_jax.rollout import sglang_server, weight_sync
from srpo_jax.rollout.config import DETERMINISTIC_FLAGS, SGLangConfig
from srpo_jax.rollout.engine import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutError,
    Rollouts,
    SamplingParams,
)
from srpo_jax.rollout.weight_exports import WeightExports

_FINISH = {"stop": FINISH_STOP, "length": FINISH_LENGTH, "abort": FINISH_ABORT}


def sample_seed(seed: int, step: int, prompt: int, sample: int) -> int:
    """Per-row sampling seed folded from (seed, step, prompt index, sample index), < 2**31
    because SGLang-family servers hold seeds in int32 arrays."""
    state = np.random.SeedSequence([seed, step, prompt, sample]).generate_state(1, np.uint32)
    return int(state[0] & 0x7FFFFFFF)


def default_exporter(model_config=None) -> Callable[[Any, pathlib.Path], None]:
    """Exports an nnx Qwen3 model (save_hf) or its params state (save_hf_params, needs the
    Qwen3Config) as an HF checkpoint in bf16, the dtype the servers run in."""

    def export(params, path: pathlib.Path) -> None:
        from flax import nnx

        from srpo_jax.model import hf_io

        if isinstance(params, nnx.Module):
            hf_io.save_hf(params, path, dtype="bfloat16")
        elif model_config is None:
            raise ValueError(
                "SGLangEngine needs model_config to export a params state; pass the Qwen3Config"
            )
        else:
            hf_io.save_hf_params(params, model_config, path, dtype="bfloat16")

    return export


_warned_unchecked = False


def _warn_unchecked_determinism(urls: tuple[str, ...]) -> None:
    """Once per process: servers given by URL were started by someone else, and whether they
    run with the deterministic flag cannot be told from their answers."""
    global _warned_unchecked
    if _warned_unchecked:
        return
    _warned_unchecked = True
    flags = " or ".join(f"{v} ({k})" for k, v in DETERMINISTIC_FLAGS.items())
    logging.warning(
        "rollout.sglang.deterministic is on but the servers %s were not launched here: check "
        "that they run with %s, or sampling_seed is ignored and a resumed run draws other samples",
        ", ".join(urls), flags,
    )  # fmt: skip


class SGLangEngine:
    """RolloutEngine over SGLang servers; see the module docstring for the protocol."""

    runs_beside_learner = True  # the servers are other processes (rollout.overlap)

    def __init__(
        self,
        config: SGLangConfig,
        *,
        model_path: str | os.PathLike | None = None,
        model_config=None,
        exporter: Callable[[Any, pathlib.Path], None] | None = None,
        initial_version: int = 0,
        initial_params: Any = None,
    ):
        config.check_servers()
        self.config = config
        self._version = initial_version
        self._synced = False  # servers report a version we set only after our first sync
        self.exports = WeightExports(
            config.export_dir, exporter or default_exporter(model_config), config.keep_exports
        )
        self.export_dir = self.exports.root
        self.log_dir = pathlib.Path(config.log_dir or self.export_dir / "logs")
        self._servers: list[sglang_server.ServerProcess] = []
        self._serving_path: pathlib.Path | None = None  # weights the servers last loaded
        self.num_restarts = 0  # dead launched servers relaunched so far
        # Called as on_request_done(url, step) after each /generate request that came back
        # whole (srpo_jax.trainer.faults uses it to kill a server mid-batch); None = nothing.
        self.on_request_done: Callable[[str, int], None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(config.max_concurrency)
        self._model_config = model_config
        self.sync_fallbacks = 0  # distributed syncs that fell back to the disk route
        self.dist: weight_sync.DistributedSync | None = None  # sync="distributed" only
        if config.launch_command:
            if model_path is None and initial_params is not None:
                # The servers start on one export of the initial weights (its version's).
                model_path = self.exports.write(initial_params, initial_version)
            if model_path is None:
                raise ValueError(
                    "SGLangEngine needs model_path or initial_params to launch servers"
                )
            ports = [
                config.base_port + i if config.base_port else sglang_server.free_port(config.host)
                for i in range(config.num_servers)
            ]
            self._servers = self._launch(str(model_path), ports)
            self._serving_path = pathlib.Path(model_path)
            self.urls = tuple(s.url for s in self._servers)
        else:
            self.urls = tuple(u.rstrip("/") for u in config.urls)
            if config.deterministic:
                _warn_unchecked_determinism(self.urls)
        if config.sync == "none":
            logging.warning(
                "rollout.sglang.sync='none': the SGLang servers keep the weights they started "
                "on; rollouts after the first step come from those, not from the learner"
            )
        if config.sync == "distributed":
            self.dist = weight_sync.DistributedSync(config, self.urls, "bfloat16")

    # ---------------------------------------------------------------- HTTP
    def _request(self, method: str, url: str, route: str, body=None, *, retry=True) -> Any:
        """One HTTP call with retries on connection errors, timeouts and 5xx; returns JSON
        (or None for an empty body). A 4xx is the caller's fault: raised at once."""
        cfg = self.config
        attempts = 1 + (cfg.max_retries if retry else 0)
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                r = requests.request(method, url + route, json=body, timeout=cfg.timeout_s)
            except requests.Timeout:
                last = f"no answer within timeout_s={cfg.timeout_s}"
                continue
            except requests.ConnectionError as e:
                last = f"connection failed ({type(e).__name__}: {e})"
                code = self._exit_code(url)
                if code is not None:  # our server is gone: waiting out the back-off is pointless
                    last = f"its server process exited with code {code} ({last})"
                    break
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:500]}"
                continue
            if r.status_code >= 400:
                raise RolloutError(
                    f"SGLang server {url}{route} answered HTTP {r.status_code}: {r.text[:500]}"
                )
            try:
                return r.json() if r.content else None
            except ValueError:  # some routes (/flush_cache) answer in plain text
                return r.text
        raise RolloutError(
            f"SGLang server {url} failed {method} {route} after {attempts} attempt(s): {last}"
        )

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        sampling: SamplingParams,
        *,
        step: int = 0,
    ) -> Rollouts:
        if n < 1:
            raise ValueError(f"SGLangEngine.generate: n must be >= 1, got {n}")
        if not prompt_token_ids:
            raise ValueError("SGLangEngine.generate: no prompts")
        for p, prompt in enumerate(prompt_token_ids):
            if len(prompt) == 0:
                raise ValueError(f"SGLangEngine.generate: prompt {p} is empty")
        self._revive_dead_servers()
        rows = [(p, j) for p in range(len(prompt_token_ids)) for j in range(n)]
        k = self.config.rows_per_request
        chunks = [rows[i : i + k] for i in range(0, len(rows), k)]
        futures = [
            self._pool.submit(
                self._generate_chunk,
                self.urls[c % len(self.urls)],
                chunk,
                prompt_token_ids,
                sampling,
                step,
            )
            for c, chunk in enumerate(chunks)
        ]
        results = []
        try:
            for f in futures:
                results.extend(f.result())
        except BaseException:
            for f in futures:  # do not keep loading servers for a batch that failed
                f.cancel()
            raise
        return self._pack(results, [p for p, _ in rows])

    def _sampling_dict(self, sampling: SamplingParams, seed: int) -> dict[str, Any]:
        d = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_new_tokens": sampling.max_new_tokens,
            "sampling_seed": seed,
            # The learner needs the stop token itself (it is trained on), so never trim it.
            "no_stop_trim": True,
        }
        if sampling.stop_token_ids:
            d["stop_token_ids"] = list(sampling.stop_token_ids)
        return d

    def _generate_chunk(self, url, chunk, prompts, sampling, step):
        body = {
            "input_ids": [list(map(int, prompts[p])) for p, _ in chunk],
            "sampling_params": [
                self._sampling_dict(sampling, sample_seed(sampling.seed, step, p, j))
                for p, j in chunk
            ],
            "return_logprob": True,
        }
        out = self._request("POST", url, "/generate", body)
        if isinstance(out, dict):  # a one-row batch may come back unwrapped
            out = [out]
        if not isinstance(out, list) or len(out) != len(chunk):
            got = len(out) if isinstance(out, list) else type(out).__name__
            raise RolloutError(
                f"SGLang server {url}/generate returned {got} results for {len(chunk)} rows"
            )
        if self.on_request_done is not None:
            self.on_request_done(url, step)
        return [
            self._parse_row(url, o, len(prompts[p])) for o, (p, _) in zip(out, chunk, strict=True)
        ]

    def _parse_row(self, url, out, prompt_len):
        meta = out.get("meta_info") or {}
        triples = meta.get("output_token_logprobs")
        if triples is None:
            raise RolloutError(f"SGLang server {url} returned no meta_info.output_token_logprobs")
        tokens = [int(t[1]) for t in triples]
        logprobs = [float(t[0]) for t in triples]
        if "output_ids" in out and list(out["output_ids"]) != tokens:
            raise RolloutError(
                f"SGLang server {url}: output_ids disagree with output_token_logprobs"
            )
        if meta.get("prompt_tokens", prompt_len) != prompt_len:
            raise RolloutError(
                f"SGLang server {url}: result for a {prompt_len}-token prompt reports "
                f"prompt_tokens={meta['prompt_tokens']} (rows out of order?)"
            )
        reported = meta.get("weight_version")
        if self._synced and reported is not None and str(reported) != str(self._version):
            raise RolloutError(
                f"SGLang server {url} sampled with weight_version {reported!r}, "
                f"expected {self._version} (weight sync did not take)"
            )
        fr = meta.get("finish_reason")
        finish = _FINISH.get(fr.get("type") if isinstance(fr, dict) else fr, FINISH_ABORT)
        return tokens, logprobs, finish

    def _pack(self, results, prompt_index) -> Rollouts:
        b = len(results)
        r = max(1, max(len(t) for t, _, _ in results))
        tokens_BR = np.zeros((b, r), np.int32)
        logprobs_BR = np.zeros((b, r), np.float32)
        lengths_B = np.zeros((b,), np.int32)
        for i, (t, lp, _) in enumerate(results):
            tokens_BR[i, : len(t)] = t
            logprobs_BR[i, : len(t)] = lp
            lengths_B[i] = len(t)
        return Rollouts(
            token_ids_BR=tokens_BR,
            logprobs_BR=logprobs_BR,
            lengths_B=lengths_B,
            finish_reasons=tuple(f for _, _, f in results),
            weight_version=self._version,
            prompt_index_B=np.asarray(prompt_index, np.int32),
        )

    # ---------------------------------------------------------------- weight sync
    def update_weights(self, params: Any, version: int) -> dict[str, float]:
        """Installs new weights. `params`: an nnx Qwen3, its params state, or the path of an
        HF checkpoint directory that is already written (used as is, never deleted).

        Single controller: the engine lives in one process. In a multi-process learner, export
        with hf_io.save_hf_params on every process (it gathers; process 0 writes) and pass
        the written directory here from process 0."""
        if self.config.sync == "none":  # the rollouts keep reporting the served version
            return weight_sync.metrics("none", 0.0, 0, self.sync_fallbacks) | {
                "sync/num_servers": float(len(self.urls))
            }
        t0 = time.perf_counter()
        if self.dist is not None and not isinstance(params, (str, os.PathLike)):
            # The network route; on failure (one warning said why) the disk route below.
            sent = weight_sync.push(self.config, self.dist, params, self._model_config, version)
            if sent is not None:
                return self.distributed_done(version, sent, time.perf_counter() - t0)
            self.sync_fallbacks += 1
        if isinstance(params, (str, os.PathLike)):
            path = pathlib.Path(params)
            if not (path / "config.json").is_file():
                raise ValueError(f"update_weights: {path} is not an HF checkpoint (no config.json)")
        else:
            path = self.exports.write(params, version)
        t1 = time.perf_counter()
        if self.config.sync == "restart":
            self._restart(path)
        else:
            list(self._pool.map(lambda u: self._update_from_disk(u, path, version), self.urls))
        t2 = time.perf_counter()
        self._version, self._synced = version, True
        self._serving_path = path
        self.exports.prune()  # after the push: a failed push leaves the served one in place
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        route = "restart" if self.config.sync == "restart" else "update_from_disk"
        return weight_sync.metrics(route, t2 - t0, size, self.sync_fallbacks) | {
            "sync/export_s": t1 - t0,
            "sync/load_s": t2 - t1,
            "sync/num_servers": float(len(self.urls)),
        }

    def distributed_done(self, version: int, sent: int, seconds: float) -> dict[str, float]:
        """Records a version the distributed route delivered; its metrics."""
        self._version, self._synced = version, True
        return weight_sync.metrics("distributed", seconds, sent, self.sync_fallbacks) | {
            "sync/num_servers": float(len(self.urls))
        }

    def _update_from_disk(self, url: str, path: pathlib.Path, version: int) -> None:
        # SGLang's documented order: stop scheduling, drop KV/prefix cache built with the old
        # weights, load, resume. continue_generation runs even if the load failed, so a bad
        # checkpoint does not leave the server paused forever.
        self._request("POST", url, "/pause_generation", {"mode": self.config.pause_mode})
        failure = None
        try:
            self._request("POST", url, "/flush_cache")
            body = {
                # Absolute: a relative path would be resolved in the server's working directory.
                "model_path": str(path.resolve()),
                "weight_version": str(version),
                "abort_all_requests": False,
            }
            if self.config.load_format:
                body["load_format"] = self.config.load_format
            out = self._request("POST", url, "/update_weights_from_disk", body)
            if not (isinstance(out, dict) and out.get("success")):
                raise RolloutError(f"SGLang server {url} refused the weights in {path}: {out!r}")
        except RolloutError as e:
            failure = e
        try:
            self._request("POST", url, "/continue_generation", {})
        except RolloutError:
            if failure is None:
                raise
        if failure is not None:  # the load error, not a later resume error, is the cause
            raise failure
        reported = self._reported_version(url)
        if reported is not None and reported != str(version):
            raise RolloutError(
                f"SGLang server {url} reports weight_version {reported!r} after loading {path}, "
                f"expected {version}"
            )

    def _reported_version(self, url: str) -> str | None:
        """The server's weight_version (/model_info, then the older /get_weight_version);
        None when it exposes neither."""
        for route in ("/model_info", "/get_weight_version"):
            try:
                out = self._request("GET", url, route, retry=False)
            except RolloutError:
                continue
            if isinstance(out, dict) and out.get("weight_version") is not None:
                return str(out["weight_version"])
        return None

    # ---------------------------------------------------------------- server lifecycle
    def _exit_code(self, url: str) -> int | None:
        """The exit code of the launched server serving `url`; None if running or not ours."""
        for s in self._servers:
            if s.url == url and s.proc is not None and s.proc.poll() is not None:
                return s.proc.returncode
        return None

    def _revive_dead_servers(self) -> None:
        for i in [i for i, s in enumerate(self._servers) if not s.alive()]:
            old = self._servers[i]
            code = old.proc.returncode if old.proc is not None else None
            if self.num_restarts >= self.config.max_restarts:
                raise RolloutError(
                    f"SGLang server {old.url} exited (code {code}) and the restart budget "
                    f"max_restarts={self.config.max_restarts} is spent; log {old.log_path} "
                    f"ends with:\n{old.log_tail()}"
                )
            logging.warning(
                "SGLang server %s exited (code %s); relaunching it on %s (restart %d, at most %d)",
                old.url, code, self._serving_path, self.num_restarts + 1, self.config.max_restarts,
            )  # fmt: skip
            old.stop()  # reap whatever is left of its process group
            port = int(old.url.rsplit(":", 1)[1])
            self._servers[i] = self._launch(str(self._serving_path), [port], first_index=i)[0]
            self.num_restarts += 1
            if self.dist is not None:  # the relaunched server is not in the group
                self.dist.drop_group()
            if self.config.sync == "update_from_disk" and self._synced:
                # Launched from the checkpoint it served, but it must report the version too.
                self._update_from_disk(old.url, self._serving_path, self._version)

    def _restart(self, path: pathlib.Path) -> None:
        """Relaunches every server on `path` (sync="restart"). A relaunch that fails is tried
        again, each try counted in `num_restarts`, until `max_restarts` is spent: a server
        can fail to boot for a passing reason (sglang-jax 0.1.0rc0 on CPU refuses to start,
        "Not enough memory", when the host is briefly short of it; seen 18 steps into a soak)."""
        ports = [int(s.url.rsplit(":", 1)[1]) for s in self._servers]
        for s in self._servers:
            s.stop()
        self._servers = []  # launch_servers stops what it started if it fails
        while True:
            try:
                self._servers = self._launch(str(path), ports)
                return
            except RolloutError as e:
                if self.num_restarts >= self.config.max_restarts:
                    raise
                self.num_restarts += 1
                logging.warning(
                    "relaunching the SGLang servers on %s failed (%s); trying again (restart "
                    "%d, at most %d)", path, str(e).splitlines()[0], self.num_restarts,
                    self.config.max_restarts,
                )  # fmt: skip

    def _launch(
        self, model_path: str, ports: list[int], first_index: int = 0
    ) -> list[sglang_server.ServerProcess]:
        cfg = self.config
        return sglang_server.launch_servers(
            cfg.launch_command,
            # Absolute: the server may run in another working directory (or on another node).
            model_path=str(pathlib.Path(model_path).resolve()),
            host=cfg.host,
            ports=ports,
            first_index=first_index,
            log_dir=self.log_dir,
            startup_timeout_s=cfg.startup_timeout_s,
            env={**os.environ, **dict(cfg.launch_env)},
            extra_flags=sglang_server.launch_flags(
                cfg.launch_command, deterministic=cfg.deterministic
            ),
        )

    @property
    def servers(self) -> tuple[sglang_server.ServerProcess, ...]:
        """The locally launched server processes (empty when given URLs)."""
        return tuple(self._servers)

    def close(self) -> None:
        if self.dist is not None:
            self.dist.close()
        for s in self._servers:
            s.stop()
        self._servers = []
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.exports.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def engine_from_config(
    run_cfg: SGLangConfig, model_config, params, *, workdir=None, version: int = 0
) -> SGLangEngine:
    """An SGLangEngine from the run config's `rollout.sglang` section (export_dir "" = the
    run's workdir/export).

    With a `launch_command` the servers start on one export of `params` (a bf16 HF
    checkpoint, weight version `version`), so they already serve the learner's weights.
    With running servers (`urls`) the caller's first `update_weights` pushes them.
    """
    export_dir = run_cfg.export_dir or (str(pathlib.Path(workdir) / "export") if workdir else "")
    # Without a launch command there is nothing to launch: the engine talks to `urls` only.
    num_servers = run_cfg.num_servers if run_cfg.launch_command else 0
    cfg = dataclasses.replace(run_cfg, export_dir=export_dir, num_servers=num_servers)
    initial = params if cfg.launch_command else None
    if cfg.sync == "distributed":
        weight_sync.require_torch()  # one error line naming the extra, before any launch
    import jax

    if jax.process_count() == 1:
        return SGLangEngine(
            cfg, model_config=model_config, initial_version=version, initial_params=initial
        )
    # Several learner processes: process 0 alone drives the servers (srpo_jax.rollout.leader).
    from jax.experimental import multihost_utils

    from srpo_jax import multihost
    from srpo_jax.rollout.leader import LeaderEngine

    if not export_dir:
        raise ValueError("several processes need a shared rollout.sglang.export_dir (or workdir)")
    exports = WeightExports(
        export_dir,
        default_exporter(model_config),
        cfg.keep_exports,
        writer=multihost.is_leader(),
        barrier=multihost_utils.sync_global_devices,
    )
    # The initial export is collective: every process gathers, process 0 writes.
    model_path = exports.write(initial, version) if initial is not None else None
    engine = (
        SGLangEngine(cfg, model_path=model_path, model_config=model_config, initial_version=version)
        if multihost.is_leader()
        else None
    )
    distributed = cfg if cfg.sync == "distributed" else None
    return LeaderEngine(engine, exports, distributed=distributed, model_config=model_config)
