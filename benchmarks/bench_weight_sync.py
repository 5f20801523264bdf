"""Weight sync to one SGLang-protocol receiver: disk vs tmpfs vs torch.distributed (gloo).

    python benchmarks/bench_weight_sync.py                        # Qwen3-0.6B shapes
    python benchmarks/bench_weight_sync.py --models=qwen3_0p6b,qwen3_1p7b --repeats=2

Random weights of each preset's shapes (params in --param_dtype on the CPU device), pushed as
bf16 by each route, every route in a fresh learner process:
- disk / tmpfs: save_hf_params into --disk_dir / /dev/shm, then a separate reader process
  loads every tensor back (what each server's /update_weights_from_disk does before its
  copy into the model);
- distributed / distributed_per_tensor: SGLangEngine with sync="distributed" over gloo on
  loopback to tests/rollout/weight_receiver.py in sink mode (it receives each bucket and
  drops it), flattened buckets or one broadcast per tensor.
Prints a markdown table: seconds per push (the median of --repeats, after one warm-up push
that also forms the group), GB/s of bf16 bytes, the learner process's RSS holding the params
and its peak beyond that during the pushes (for the distributed routes also beyond the
learner at rest between pushes: `_at_rest`), and for the distributed routes the share of the
time outside the broadcasts (HTTP, gathers, casts) and that time per bucket; then the
same buckets again from one buffer already in memory (no gather: the raw broadcast), and
the push's time beyond that bare run's broadcasts (what the gather adds once it overlaps
the broadcasts, which the in-call split cannot show).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RECEIVER = REPO / "tests" / "rollout" / "weight_receiver.py"
ROUTES = ("disk", "tmpfs", "distributed", "distributed_per_tensor")
_READ_BACK = (
    "import sys, pathlib, ml_dtypes; from safetensors.numpy import load_file\n"
    "for f in sorted(pathlib.Path(sys.argv[1]).glob('*.safetensors')): load_file(f)\n"
)


def _rss_mib(field: str) -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Peak RSS (VmHWM) from now on: Linux resets it on writing 5 to clear_refs."""
    pathlib.Path("/proc/self/clear_refs").write_text("5")


def _random_params(preset: str, param_dtype: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from srpo_jax.model import Qwen3, config

    cfg = config.PRESETS[preset](param_dtype=param_dtype)
    abstract = nnx.state(nnx.eval_shape(lambda: Qwen3(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(abstract))))

    def fill(x):
        return (0.02 * jax.random.normal(next(keys), x.shape, jnp.float32)).astype(x.dtype)

    params = jax.tree.map(fill, abstract)
    jax.block_until_ready(params)
    return cfg, params


def _disk(args, cfg, params, root: pathlib.Path) -> list[dict]:
    from srpo_jax.model import save_hf_params

    runs = []
    for r in range(args.repeats + 1):
        path = root / f"step_{r}"
        t0 = time.perf_counter()
        save_hf_params(params, cfg, path, dtype="bfloat16")
        subprocess.run([sys.executable, "-c", _READ_BACK, str(path)], check=True)
        seconds = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        shutil.rmtree(path)
        runs.append({"seconds": seconds, "bytes": size})
    return runs[1:]


def _distributed(args, cfg, params, flatten: bool) -> list[dict]:
    import requests

    from srpo_jax.rollout import weight_sync
    from srpo_jax.rollout.config import SGLangConfig
    from srpo_jax.rollout.sglang import SGLangEngine

    port = weight_sync.free_port()
    sink = subprocess.Popen(
        [sys.executable, str(RECEIVER), f"--port={port}"], start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        sync_cfg = SGLangConfig(
            urls=(url,), sync="distributed", group_backend="gloo", bucket_mb=args.bucket_mb,
            bucket_flatten=flatten, group_timeout_s=600, timeout_s=600, max_retries=0,
        )  # fmt: skip
        runs = []
        procs = _processes(sink.pid)
        with SGLangEngine(sync_cfg, model_config=cfg) as engine:
            for r in range(args.repeats + 1):
                if r == 1:
                    rest = _at_rest()
                cpu = _cpu_s(procs)
                m = engine.update_weights(params, r + 1)
                assert m["sync/route"] == weight_sync.ROUTE_CODES["distributed"], m
                runs.append(
                    {"seconds": m["sync/seconds"], "bytes": m["sync/bytes"],
                     "broadcast_s": engine.dist.broadcast_s, "gather_s": engine.dist.gather_s,
                     "cpu_s": _cpu_s(procs) - cpu, "buckets": _num_buckets(args, cfg, params)}
                )  # fmt: skip
            peak = _rss_mib("VmHWM")  # before the bare pushes' buffer
            bare = []
            for r in range(args.repeats):
                cpu = _cpu_s(procs)
                bare.append(
                    (_bare_push(args, engine, cfg, params, flatten, r), _cpu_s(procs) - cpu)
                )
        prepare = [_prepare_alone(args, cfg, params, flatten) for _ in range(args.repeats)]
        for run, (b, b_cpu), p in zip(runs[1:], bare, prepare, strict=True):
            run.update(peak_mib=peak, rest_mib=rest, bare_broadcast_s=b, bare_cpu_s=b_cpu)
            run.update(prepare_s=p)
        return runs[1:]
    finally:
        os.killpg(sink.pid, signal.SIGKILL)  # the receiver and its rank processes


def _at_rest() -> float:
    """The learner's RSS between pushes, once the warm-up push has formed the group, imported
    torch and compiled the gathers, with the heap's free pages handed back (malloc_trim: what
    the trainer does at each checkpoint); the peak counts from here. The pushes' own transient
    memory is then the peak minus this, whatever the params' initialisation left behind."""
    from srpo_jax.trainer import host_memory

    host_memory.release_free_heap()
    rest = _rss_mib("VmRSS")
    _reset_peak()
    return rest


def _bare_push(args, engine, cfg, params, flatten: bool, r: int) -> float:
    """The raw broadcast: the same protocol and buckets from one buffer already in memory
    (no gather, no cast); the seconds inside its broadcasts."""
    import torch

    from srpo_jax.model.hf_io import hf_tensors
    from srpo_jax.rollout.weight_buckets import MIB, make_buckets

    buckets = make_buckets(hf_tensors(params, cfg), 2, int(args.bucket_mb * MIB))
    buffer = torch.zeros(max(b.nbytes for b in buckets), dtype=torch.uint8)
    dist, version = engine.dist, 1000 + r
    dist.begin()
    for i, b in enumerate(buckets):
        if flatten:
            items = [buffer[: b.nbytes]]
        else:
            items = [buffer[: 2 * math.prod(t.shape)].view(torch.bfloat16).view(t.shape)
                     for t in b.tensors]  # fmt: skip
        dist.send(b, iter(items), version=version if i == len(buckets) - 1 else None)
    dist.finish(version)
    return dist.broadcast_s


def _processes(receiver_pid: int) -> list:
    """This learner, the receiver and its tp rank processes (started by now)."""
    import psutil

    receiver = psutil.Process(receiver_pid)
    return [psutil.Process(), receiver, *receiver.children(recursive=True)]


def _cpu_s(procs: list) -> float:
    """CPU seconds (user + system) used so far by `procs`, on every core together."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def _prepare_alone(args, cfg, params, flatten: bool) -> float:
    """The push's gathers alone: every payload made and freed, nothing broadcast."""
    import jax.numpy as jnp

    from srpo_jax.model.hf_io import hf_tensors
    from srpo_jax.rollout.weight_buckets import MIB, make_buckets, payloads

    buckets = make_buckets(hf_tensors(params, cfg), 2, int(args.bucket_mb * MIB))
    t0 = time.perf_counter()
    produce, done = payloads(params, buckets, jnp.bfloat16, flatten=flatten, on_device=False)
    for item in produce:
        del item
        done()
    return time.perf_counter() - t0


def _num_buckets(args, cfg, params) -> int:
    from srpo_jax.model.hf_io import hf_tensors
    from srpo_jax.rollout.weight_buckets import MIB, make_buckets

    tensors = hf_tensors(params, cfg)
    return len(make_buckets(tensors, 2, int(args.bucket_mb * MIB)))


def one(args) -> dict:
    """One route in this process; its figures as a dict."""
    cfg, params = _random_params(args.model, args.param_dtype)
    params_mib = _rss_mib("VmRSS")
    _reset_peak()
    if args.one in ("disk", "tmpfs"):
        base = args.disk_dir if args.one == "disk" else "/dev/shm"
        root = pathlib.Path(tempfile.mkdtemp(prefix="bench_sync_", dir=base))
        try:
            runs = _disk(args, cfg, params, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        runs = _distributed(args, cfg, params, flatten=args.one == "distributed")
    seconds = statistics.median(r["seconds"] for r in runs)
    out = {
        "model": args.model, "route": args.one, "seconds": seconds,
        "gb_per_s": runs[0]["bytes"] / seconds / 1e9, "params_mib": params_mib,
        "peak_beyond_params_mib": runs[0].get("peak_mib", _rss_mib("VmHWM")) - params_mib,
        "bytes": runs[0]["bytes"],
    }  # fmt: skip
    if "broadcast_s" in runs[0]:
        bcast = statistics.median(r["broadcast_s"] for r in runs)
        bare = statistics.median(r["bare_broadcast_s"] for r in runs)
        out["outside_broadcast_frac"] = (seconds - bcast) / seconds
        out["beyond_bare_frac"] = (seconds - bare) / seconds
        out["buckets"] = runs[0]["buckets"]
        out["overhead_per_bucket_s"] = (seconds - bcast) / runs[0]["buckets"]
        for key in ("gather_s", "cpu_s", "bare_cpu_s", "prepare_s"):
            out[key] = statistics.median(r[key] for r in runs)
        out["broadcast_s"], out["bare_broadcast_s"] = bcast, bare
        out["push_peak_mib"] = runs[0]["peak_mib"] - runs[0]["rest_mib"]
    return out


def _row(r: dict) -> str:
    extra = (
        f"{100 * r['outside_broadcast_frac']:.0f}% | {100 * r['beyond_bare_frac']:.0f}% | "
        f"{r['buckets']} | "
        f"{1e3 * r['overhead_per_bucket_s']:.0f} | {r['push_peak_mib']:.0f}"
        if "buckets" in r
        else "- | - | - | - | -"
    )
    return (
        f"| {r['model']} | {r['route']} | {r['bytes'] / 1e9:.2f} | {r['seconds']:.2f} | "
        f"{r['gb_per_s']:.2f} | {r['params_mib']:.0f} | {r['peak_beyond_params_mib']:.0f} | "
        f"{extra} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="qwen3_0p6b")
    p.add_argument("--routes", default=",".join(ROUTES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--bucket_mb", type=float, default=512.0)
    p.add_argument("--param_dtype", default="float32")
    p.add_argument("--disk_dir", default=str(REPO / ".bench_weight_sync"))
    p.add_argument("--one", choices=ROUTES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)), flush=True)
        return
    os.makedirs(args.disk_dir, exist_ok=True)
    print("| model | route | GB (bf16) | s / push | GB/s | params RSS MiB | peak beyond "
          "params MiB | outside broadcast | beyond bare broadcast | buckets | "
          "ms / bucket outside | push peak beyond rest MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    timelines = []
    for model in args.models.split(","):
        for route in args.routes.split(","):
            cmd = [sys.executable, __file__, f"--one={route}", f"--model={model}",
                   f"--repeats={args.repeats}", f"--bucket_mb={args.bucket_mb}",
                   f"--param_dtype={args.param_dtype}", f"--disk_dir={args.disk_dir}"]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"error: {model} {route} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(_row(r), flush=True)
            if "buckets" in r:
                timelines.append({**r, "load": " / ".join(f"{x:.1f}" for x in os.getloadavg())})
    shutil.rmtree(args.disk_dir, ignore_errors=True)
    if timelines:
        _print_timelines(timelines)


def _print_timelines(rows: list[dict]) -> None:
    """Where a distributed push's time goes: its gathers and broadcasts (in the push, on
    two threads: their overlap), the gathers alone, the bare broadcast, and the CPU seconds
    of the learner and the receiver together (on every core)."""
    print("\n| model | route | s / push | gathers in push, s | broadcasts in push, s | "
          "overlap | gathers alone, s | bare broadcast, s | CPU s push | CPU s bare | "
          "load 1/5/15 min |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g, b = r["gather_s"], r["broadcast_s"]
        overlap = max(0.0, g + b - r["seconds"]) / min(g, b) if min(g, b) > 0 else 0.0
        print(
            f"| {r['model']} | {r['route']} | {r['seconds']:.2f} | {g:.2f} | {b:.2f} | "
            f"{100 * overlap:.0f}% | {r['prepare_s']:.2f} | {r['bare_broadcast_s']:.2f} | "
            f"{r['cpu_s']:.2f} | {r['bare_cpu_s']:.2f} | {r['load']} |"
        )


if __name__ == "__main__":
    main()
