"""Weights to SGLang servers over torch.distributed (rollout.sglang.sync = "distributed").

The protocol is SGLang 0.5.23's (entrypoints/http_server.py, managers/io_struct.py):

- Forming the group, once and again after any failure: learner process 0 is rank 0; server
  i's tp ranks are rank_offset_i .. rank_offset_i + tp_i - 1, with rank_offset_i = 1 + the
  tp of the servers before it and world = 1 + sum(tp) (each tp rank joins as
  rank_offset + its tp rank). Every server gets POST /init_weights_update_group {master_address,
  master_port, rank_offset, world_size, group_name, backend} in its own thread while rank 0
  joins; all of it is bounded by group_timeout_s.
- Each step: /pause_generation, /begin_weight_update (a 404 from a server older than 0.5
  skips it), then per bucket /update_weights_from_distributed {names, dtypes, shapes,
  group_name, flush_cache: false, weight_version, load_format} to every server in threads
  while rank 0 broadcasts the bucket; then /end_weight_update, /flush_cache,
  /continue_generation, and every server must report the new weight_version. Only the last
  bucket carries weight_version, so a sync that stops half way never reports the new one.
- Any failure (a rejected bucket, a broadcast or group past group_timeout_s, a server that
  cannot be reached) raises SyncFailed naming the cause; the group is dropped, the caller
  falls back to the disk route, and the next step forms a new group (a new group name, so
  servers that still hold the old one are not confused). The HTTP replies are polled while
  the broadcast runs: a server that refuses a bucket fails the step at once, not after the
  broadcast's timeout.

The group helper builds the group the way SGLang's servers join it (a TCP rendezvous,
a store prefixed with the group name, a process group of the configured backend), so rank 0
here and the servers' ranks meet on the same keys.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import itertools
import socket
import threading
import time
from typing import Any

import requests
from absl import logging

from srpo_jax.config_checks import ConfigError
from srpo_jax.rollout.config import SGLangConfig
from srpo_jax.rollout.weight_buckets import MIB, Bucket, Prefetch, make_buckets, payloads

TORCH_EXTRA = "sync"
# sync/route: which route delivered the step's weights.
ROUTE_CODES = {"update_from_disk": 0.0, "distributed": 1.0, "restart": 2.0, "none": 3.0}
_POLL_S = 0.005
_group_ids = itertools.count()


class SyncFailed(RuntimeError):
    """The distributed route could not deliver this step's weights; says why."""


def require_torch() -> None:
    """ConfigError naming the extra when this learner has no torch (sync="distributed")."""
    try:
        import torch.distributed  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "config.rollout.sglang.sync 'distributed' needs torch on the learner "
            f"({e}): pip install -e '.[{TORCH_EXTRA}]'"
        ) from None


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """Where and how the weight update group forms."""

    master_address: str
    master_port: int
    world_size: int
    group_name: str
    backend: str
    timeout_s: float


def join_as_rank0(spec: GroupSpec):
    """Rank 0 of the weight update group (the servers' ranks join the same store keys)."""
    from torch.distributed import distributed_c10d as c10d

    timeout = datetime.timedelta(seconds=spec.timeout_s)
    host = f"[{spec.master_address}]" if ":" in spec.master_address else spec.master_address
    url = f"tcp://{host}:{spec.master_port}"
    store, rank, world = next(c10d.rendezvous(url, 0, spec.world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = c10d.PrefixStore(spec.group_name, store)
    group, _ = c10d._new_process_group_helper(
        world, rank, [], c10d.Backend(spec.backend), store,
        group_name=spec.group_name, backend_options=None, timeout=timeout,
    )  # fmt: skip
    c10d._world.pg_group_ranks[group] = {i: i for i in range(world)}
    return group


def destroy(group) -> None:
    import torch.distributed

    try:
        torch.distributed.destroy_process_group(group)
    except Exception as e:  # a broken group may not tear down cleanly; it is dropped anyway
        logging.info("weight update group teardown: %s", e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def route_address(url: str) -> str:
    """This host's address on the route to `url`'s host (no packet is sent)."""
    host = requests.utils.urlparse(url).hostname or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


class _Http:
    """JSON calls without retries: a weight update must not be replayed."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    def call(self, url: str, route: str, body=None, *, method="POST", timeout_s=None):
        """(status, JSON or text); SyncFailed when the server cannot be reached."""
        try:
            r = requests.request(
                method, url + route, json=body, timeout=timeout_s or self.timeout_s
            )
        except requests.RequestException as e:
            raise SyncFailed(f"SGLang server {url}{route}: {type(e).__name__}: {e}") from None
        try:
            return r.status_code, (r.json() if r.content else None)
        except ValueError:
            return r.status_code, r.text

    def ok(self, url: str, route: str, body=None, **kw):
        status, out = self.call(url, route, body, **kw)
        refused = isinstance(out, dict) and out.get("success") is False
        if status >= 400 or refused:
            raise SyncFailed(f"SGLang server {url}{route} answered HTTP {status}: {str(out)[:300]}")
        return out


class DistributedSync:
    """Rank 0's side: the group, and one step's push. Lives on learner process 0; the other
    processes of a multi-process learner only take part in the gathers (`push` with
    `sender` None, see `push_collective`)."""

    def __init__(self, config: SGLangConfig, urls: tuple[str, ...], dtype_name: str):
        require_torch()
        self.config = config
        self.urls = urls
        self.dtype_name = dtype_name
        self.http = _Http(config.timeout_s)
        self.group = None
        self.spec: GroupSpec | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max(4, 2 * len(urls)))
        self._begin_routes: dict[str, bool] = {}  # url -> has /begin_weight_update
        self.broadcast_s = 0.0  # this step's time inside the broadcasts (the benchmark's split)
        self.gather_s = 0.0  # this step's time gathering the payloads (the benchmark's overlap)

    # ------------------------------------------------------------ the group
    def master_address(self) -> str:
        return self.config.group_master_address or route_address(self.urls[0])

    def _tp_sizes(self) -> list[int]:
        sizes = []
        for url in self.urls:
            tp = 1
            for route in ("/server_info", "/get_server_info"):
                status, out = self.http.call(url, route, method="GET")
                if status == 200 and isinstance(out, dict):
                    tp = int(out.get("tp_size") or 1)
                    break
            sizes.append(tp)
        return sizes

    def form_group(self) -> None:
        """Creates the group with every server (SyncFailed past group_timeout_s)."""
        cfg = self.config
        tps = self._tp_sizes()
        offsets = [1 + sum(tps[:i]) for i in range(len(tps))]
        spec = GroupSpec(
            master_address=self.master_address(),
            master_port=cfg.group_port or free_port(),
            world_size=1 + sum(tps),
            group_name=f"srpo_weights_{next(_group_ids)}",
            backend=cfg.group_backend,
            timeout_s=cfg.group_timeout_s,
        )
        bodies = [
            {
                "master_address": spec.master_address,
                "master_port": spec.master_port,
                "rank_offset": off,
                "world_size": spec.world_size,
                "group_name": spec.group_name,
                "backend": spec.backend,
            }
            for off in offsets
        ]
        replies = [
            self._pool.submit(
                self.http.ok, u, "/init_weights_update_group", b, timeout_s=spec.timeout_s + 5
            )
            for u, b in zip(self.urls, bodies, strict=True)
        ]
        where = f"{spec.master_address}:{spec.master_port}"
        try:
            group = _run_bounded(lambda: join_as_rank0(spec), replies, spec.timeout_s + 5)
        except SyncFailed as e:
            raise SyncFailed(f"the weight update group at {where} did not form: {e}") from None
        self.group, self.spec = group, spec
        logging.info("weight update group %s formed at %s, world %d", spec.group_name, where,
                     spec.world_size)  # fmt: skip

    def drop_group(self) -> None:
        if self.group is not None:
            name = self.spec.group_name
            for url in self.urls:  # best effort: a server that lost it answers 400
                with contextlib.suppress(SyncFailed):
                    body = {"group_name": name}
                    self.http.call(url, "/destroy_weights_update_group", body, timeout_s=5)
            destroy(self.group)
        self.group, self.spec = None, None

    # ------------------------------------------------------------ one step
    def begin(self) -> None:
        """Forms the group if needed, then pauses every server and opens its update."""
        if self.group is None:
            self.form_group()
        self.broadcast_s = 0.0
        self._each("/pause_generation", {"mode": self.config.pause_mode})
        for url in self.urls:
            if self._begin_routes.get(url, True):
                status, out = self.http.call(url, "/begin_weight_update", {})
                if status == 404:  # a server before 0.5: no update sessions
                    self._begin_routes[url] = False
                elif status >= 400:
                    raise SyncFailed(f"SGLang server {url}/begin_weight_update: {out}")

    def send(self, bucket: Bucket, tensors, *, version: int | None) -> None:
        """One bucket: the request to every server while rank 0 broadcasts it. `tensors`
        yields the bucket's payloads as they are gathered (the flat buffer, or each tensor
        in `names` order), so a gather overlaps the broadcast before it."""
        import torch.distributed

        body = {
            **bucket.request_fields(self.dtype_name),
            "group_name": self.spec.group_name,
            "flush_cache": False,
            "weight_version": None if version is None else str(version),
            "load_format": "flattened_bucket" if self.config.bucket_flatten else None,
        }
        timeout = self.spec.timeout_s
        replies = [
            self._pool.submit(
                self.http.ok, u, "/update_weights_from_distributed", body, timeout_s=timeout + 5
            )
            for u in self.urls
        ]

        def broadcast():
            for t in tensors:  # waits for each payload's gather: that time is outside
                t0 = time.perf_counter()
                torch.distributed.broadcast(t, src=0, group=self.group)
                self.broadcast_s += time.perf_counter() - t0
                del t  # its slot is freed when the next one is asked for

        _run_bounded(broadcast, replies, timeout + 5)

    def finish(self, version: int) -> None:
        for url in self.urls:
            if self._begin_routes.get(url, True):
                self.http.ok(url, "/end_weight_update", {})
        self._each("/flush_cache", None)
        self._each("/continue_generation", {})
        for url in self.urls:
            reported = self.reported_version(url)
            if reported is not None and reported != str(version):
                raise SyncFailed(
                    f"SGLang server {url} reports weight_version {reported!r} after the "
                    f"distributed update, expected {version}"
                )

    def resume(self) -> None:
        """After a failure: no server stays paused (best effort)."""
        for url in self.urls:
            with contextlib.suppress(SyncFailed):
                self.http.call(url, "/continue_generation", {}, timeout_s=10)

    def reported_version(self, url: str) -> str | None:
        for route in ("/model_info", "/get_weight_version"):
            status, out = self.http.call(url, route, method="GET")
            if status == 200 and isinstance(out, dict) and out.get("weight_version") is not None:
                return str(out["weight_version"])
        return None

    def _each(self, route: str, body) -> None:
        for f in [self._pool.submit(self.http.ok, u, route, body) for u in self.urls]:
            f.result()

    def close(self) -> None:
        self.drop_group()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _run_bounded(work, replies: list, timeout_s: float):
    """Runs `work` (rank 0's part) in a daemon thread while polling the servers' HTTP
    replies; returns its result once it and every reply are done. SyncFailed as soon as a
    reply fails, when `work` raises, or past `timeout_s` (a stuck collective is left to its
    own timeout in the background; its group is dropped by the caller)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = work()
        except BaseException as e:  # reported to the caller below
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while True:
        for f in replies:
            if f.done() and f.exception() is not None:
                raise SyncFailed(str(f.exception()))
        if "error" in box:
            raise SyncFailed(f"{type(box['error']).__name__}: {box['error']}")
        if not thread.is_alive() and all(f.done() for f in replies):
            return box.get("result")
        if time.monotonic() > deadline:
            raise SyncFailed(f"no answer within group_timeout_s ({timeout_s:.0f} s)")
        time.sleep(_POLL_S)


def metrics(route: str, seconds: float, nbytes: float, fallbacks: int) -> dict[str, float]:
    """The sync figures every route logs (docs/metrics.md)."""
    return {
        "sync/seconds": seconds,
        "sync/bytes": float(nbytes),
        "sync/gb_per_s": nbytes / seconds / 1e9 if seconds > 0 else 0.0,
        "sync/route": ROUTE_CODES[route],
        "sync/fallbacks": float(fallbacks),
    }


def push(
    config: SGLangConfig, sync: DistributedSync | None, params, model_config, version: int
) -> int | None:
    """One step's weights through the group; every process of the learner calls it (the
    gathers are collective), `sync` is None except on process 0. Returns the bytes sent
    when every server took them; on failure (process 0) one warning names the cause, the
    group is dropped and None comes back (the caller falls back to the disk route)."""
    import jax.numpy as jnp
    from flax import nnx

    from srpo_jax.model import hf_io

    if isinstance(params, nnx.Module):  # an nnx Qwen3, as the disk route also takes
        model_config = params.config
        params = nnx.state(params, nnx.Param)
    if model_config is None:
        raise ValueError("the distributed weight sync needs model_config; pass the Qwen3Config")
    dtype = jnp.dtype("bfloat16")  # what the disk route writes and the servers run in
    tensors = hf_io.hf_tensors(params, model_config)
    buckets = make_buckets(tensors, dtype.itemsize, int(config.bucket_mb * MIB))
    error = _step(sync, params, buckets, dtype, config.bucket_flatten, version)
    if error is not None:
        logging.warning(
            "distributed weight sync of version %d failed, falling back to the disk route: %s",
            version, error,
        )  # fmt: skip
        sync.drop_group()
        sync.resume()
        return None
    return sum(b.nbytes for b in buckets)


def _step(sync, params, buckets, dtype, flatten: bool, version: int) -> SyncFailed | None:
    """The gathers (every process) and, on process 0, the protocol; the first failure."""
    import jax

    on_device = (
        sync is not None
        and jax.process_count() == 1
        and sync.config.group_backend == "nccl"
        and jax.devices()[0].platform == "gpu"
    )
    produce, done = payloads(params, buckets, dtype, flatten=flatten, on_device=on_device)
    if sync is None:  # another process of the learner: its part of the collective gathers
        for _ in produce:
            done()
        return None
    error = _attempt(sync.begin)
    # Gathered ahead: the next payload while this one is broadcast (the host buffer is
    # reused only where the payload in it is broadcast).
    stream = Prefetch(produce, slots=2, on_done=done)
    cuda = sync.config.group_backend == "nccl" and not on_device  # NCCL sends from GPU
    for i, bucket in enumerate(buckets):
        if error is not None:
            break
        items = _take(stream, 1 if flatten else len(bucket.tensors), cuda=cuda)
        last = i == len(buckets) - 1
        error = _attempt(lambda: sync.send(bucket, items, version=version if last else None))  # noqa: B023
    sync.gather_s = stream.gather_s
    if error is None:
        return _attempt(lambda: sync.finish(version))
    if jax.process_count() == 1:
        stream.stop()
    else:  # the other processes go on gathering: so does this one, sending nothing
        stream.drain()
    return error


def _take(stream: Prefetch, count: int, *, cuda: bool):
    """The next `count` payloads of `stream`; each one's slot is freed once the next is
    asked for (the broadcast of it has returned by then)."""
    for _ in range(count):
        item = stream.get()
        try:
            yield item.cuda() if cuda else item
        finally:
            del item
            stream.done()


def _attempt(call) -> SyncFailed | None:
    """Runs one part of process 0's protocol; its failure as a SyncFailed (anything that goes
    wrong there, a missing CUDA build included, sends this step down the disk route)."""
    try:
        call()
    except SyncFailed as e:
        return e
    except Exception as e:  # named in the fallback's warning
        return SyncFailed(f"{type(e).__name__}: {e}")
    return None
