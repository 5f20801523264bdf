"""A stand-in for an SGLang 0.5.23 server's side of the weight update protocol (a real process).

Run as `python weight_receiver.py --port P --model-path DIR [--tp N] [--reject-bucket K]`.
It serves the routes the learner's weight sync uses, validates every body against the
fields of SGLang 0.5.23's request classes (managers/io_struct.py; they cannot be imported
here: the module pulls in zmq, orjson and the scheduler), and holds a transformers
Qwen3ForCausalLM in bf16 per tp rank. As in SGLang, each tp rank is its own process that
joins the weight update group at rank_offset + tp_rank (a TCP rendezvous, a store prefixed
with the group name, a process group of the requested backend), receives every bucket whole
(flattened_bucket: one uint8 buffer split at the tensors' byte offsets; otherwise one
broadcast per tensor, in names order) and loads the tensors by name. Updates only run
between /begin_weight_update and /end_weight_update, as SGLang 0.5.x requires.

Without --model-path it is a sink (the benchmark): buckets are received, then dropped.
Test-only routes: POST /test/dump {dir, input_ids} makes each tp rank write its weights
(rank<r>.safetensors) and the fp32 logits of a float32 copy of its model (rank<r>_logits.npy).
--reject-bucket K answers the K-th /update_weights_from_distributed with HTTP 400 without
receiving it (a server that refuses a bucket).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import multiprocessing
import os
import pathlib
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_PR_SET_PDEATHSIG = 1
_STR, _INT, _BOOL = (str,), (int,), (bool,)
_BASE = {"rid": (_STR, False, True), "http_worker_ipc": (_STR, False, True)}
# route -> {field: (types, required, nullable)}, from SGLang 0.5.23's io_struct.py.
SCHEMAS = {
    "/init_weights_update_group": {
        "master_address": (_STR, True, False),
        "master_port": (_INT, True, False),
        "rank_offset": (_INT, True, False),
        "world_size": (_INT, True, False),
        "group_name": (_STR, False, False),
        "backend": (_STR, False, False),
    },
    "/destroy_weights_update_group": {"group_name": (_STR, False, False)},
    "/update_weights_from_distributed": {
        "names": ("list[str]", True, False),
        "dtypes": ("list[str]", True, False),
        "shapes": ("list[list[int]]", True, False),
        "group_name": (_STR, False, False),
        "flush_cache": (_BOOL, False, False),
        "abort_all_requests": (_BOOL, False, False),
        "weight_version": (_STR, False, True),
        "load_format": (_STR, False, True),
        "selector": (("target", "draft", "all"), False, False),
        "torch_empty_cache": (_BOOL, False, False),
    },
    "/update_weights_from_disk": {
        "model_path": (_STR, True, False),
        "load_format": (_STR, False, True),
        "abort_all_requests": (_BOOL, False, False),
        "weight_version": (_STR, False, True),
        "is_async": (_BOOL, False, False),
        "torch_empty_cache": (_BOOL, False, False),
        "keep_pause": (_BOOL, False, False),
        "recapture_cuda_graph": (_BOOL, False, False),
        "token_step": (_INT, False, False),
        "flush_cache": (_BOOL, False, False),
        "manifest": ((dict,), False, True),
    },
    "/pause_generation": {"mode": (("abort", "retract", "in_place"), False, False)},
    "/continue_generation": {"torch_empty_cache": (_BOOL, False, False)},
    "/begin_weight_update": {"selector": (("target", "draft", "all"), False, False)},
    "/end_weight_update": {},
    "/test/dump": {"dir": (_STR, True, False), "input_ids": ("list[list[int]]", True, False)},
}


def _type_ok(value, kind) -> bool:
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "list[list[int]]":
        return isinstance(value, list) and all(
            isinstance(v, list) and all(type(x) is int for x in v) for v in value
        )
    if isinstance(kind, tuple) and kind and isinstance(kind[0], str):  # a Literal
        return value in kind
    if kind == _INT:
        return type(value) is int
    return isinstance(value, kind)


def validate(route: str, body) -> str | None:
    """Why `body` does not fit the route's request class, or None."""
    fields = {**_BASE, **SCHEMAS[route]}
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    unknown = sorted(set(body) - set(fields))
    if unknown:
        return f"unknown fields {unknown}"
    for name, (kind, required, nullable) in fields.items():
        if name not in body:
            if required:
                return f"missing required field {name!r}"
            continue
        value = body[name]
        if value is None and nullable:
            continue
        if not _type_ok(value, kind):
            return f"field {name!r} has the wrong type or value: {value!r}"
    return None


# ---------------------------------------------------------------------------- tp ranks
class Rank:
    """One tp rank: its model and its weight update groups (runs in its own process)."""

    def __init__(self, tp_rank: int, model_path: str, group_timeout_s: float):
        import torch

        self.torch = torch
        self.tp_rank = tp_rank
        self.timeout = datetime.timedelta(seconds=group_timeout_s)
        self.model = None  # --sink (the benchmark): receive, then drop
        if model_path:
            import transformers

            self.model = transformers.Qwen3ForCausalLM.from_pretrained(
                model_path, dtype=torch.bfloat16, attn_implementation="eager"
            ).eval()
        self.groups = {}

    def init(self, b):
        from torch.distributed import distributed_c10d as c10d

        name = b.get("group_name", "weight_update_group")
        rank, world = b["rank_offset"] + self.tp_rank, b["world_size"]
        url = f"tcp://{b['master_address']}:{b['master_port']}"
        store, rank, world = next(c10d.rendezvous(url, rank, world, timeout=self.timeout))
        store.set_timeout(self.timeout)
        store = c10d.PrefixStore(name, store)
        backend = c10d.Backend(b.get("backend", "nccl"))
        group, _ = c10d._new_process_group_helper(
            world, rank, [], backend, store, group_name=name, backend_options=None,
            timeout=self.timeout,
        )  # fmt: skip
        c10d._world.pg_group_ranks[group] = {i: i for i in range(world)}
        self.groups[name] = group
        return True, "Succeeded to initialize custom process group."

    def destroy(self, b):
        name = b.get("group_name", "weight_update_group")
        if name not in self.groups:
            return False, "The group to be destroyed does not exist."
        self.torch.distributed.destroy_process_group(self.groups.pop(name))
        return True, "Succeeded to destroy custom process group."

    def receive(self, b):
        torch = self.torch
        name = b.get("group_name", "weight_update_group")
        if name not in self.groups:
            return False, f"Group {name} not in {list(self.groups)}."
        group = self.groups[name]
        dtypes = [getattr(torch, d) for d in b["dtypes"]]
        sizes = [
            int(torch.Size(s).numel()) * d.itemsize
            for s, d in zip(b["shapes"], dtypes, strict=True)
        ]
        tensors = []
        if b.get("load_format") == "flattened_bucket":
            flat = torch.empty(sum(sizes), dtype=torch.uint8)
            torch.distributed.broadcast(flat, src=0, group=group)
            offset = 0
            for size, dtype, shape in zip(sizes, dtypes, b["shapes"], strict=True):
                if offset % dtype.itemsize:
                    return False, f"unaligned tensor at byte {offset}"
                tensors.append(flat[offset : offset + size].view(dtype).reshape(shape))
                offset += size
        else:
            for dtype, shape in zip(dtypes, b["shapes"], strict=True):
                t = torch.empty(shape, dtype=dtype)
                torch.distributed.broadcast(t, src=0, group=group)
                tensors.append(t)
        return self._load(dict(zip(b["names"], tensors, strict=True)))

    def _load(self, named):
        if self.model is None:
            return True, "Succeeded to update parameter online."
        params = dict(self.model.named_parameters())
        for name, t in named.items():
            if name not in params or tuple(params[name].shape) != tuple(t.shape):
                return False, f"cannot load {name} {tuple(t.shape)}"
            with self.torch.no_grad():
                params[name].copy_(t)
        return True, "Succeeded to update parameter online."

    def load_disk(self, b):
        from safetensors.torch import load_file

        path = pathlib.Path(b["model_path"])
        named = {}
        for f in sorted(path.glob("*.safetensors")):
            named.update(load_file(f))
        return self._load(named)

    def dump(self, b):
        import copy

        import numpy as np
        from safetensors.torch import save_file

        out = pathlib.Path(b["dir"])
        state = {n: p.detach().clone().contiguous() for n, p in self.model.named_parameters()}
        save_file(state, str(out / f"rank{self.tp_rank}.safetensors"))
        fp32 = copy.deepcopy(self.model).float()
        with self.torch.no_grad():
            logits = fp32(self.torch.tensor(b["input_ids"])).logits.float().numpy()
        np.save(out / f"rank{self.tp_rank}_logits.npy", logits)
        return True, "dumped"


def _rank_main(tp_rank, model_path, group_timeout_s, conn):
    # A SIGKILLed receiver must not leave its ranks behind: they die with their parent.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
    rank = Rank(tp_rank, model_path, group_timeout_s)
    conn.send("ready")
    while True:
        op, body = conn.recv()
        try:
            conn.send(getattr(rank, op)(body))
        except Exception as e:  # reported over HTTP like SGLang's failed requests
            conn.send((False, f"{type(e).__name__}: {e}"))


# ---------------------------------------------------------------------------- HTTP
class Receiver:
    """The HTTP side: session and version state, fan-out to the tp ranks."""

    def __init__(self, args):
        import torch  # noqa: F401 - imported once here, inherited by the forked ranks

        if args.model_path:
            import transformers  # noqa: F401

        ctx = multiprocessing.get_context("fork")
        self.conns, self.procs = [], []
        for r in range(args.tp):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_rank_main, args=(r, args.model_path, args.group_timeout_s, child),
                daemon=True,
            )  # fmt: skip
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        for c in self.conns:
            assert c.recv() == "ready"
        self.tp = args.tp
        self.lock = threading.Lock()  # one command at a time, like a scheduler's loop
        self.version = "default"
        self.model_path = args.model_path
        self.session = False
        self.updates = 0
        self.reject_bucket = args.reject_bucket

    def ranks(self, op, body):
        with self.lock:
            for c in self.conns:
                c.send((op, body))
            results = [c.recv() for c in self.conns]
        bad = [m for ok, m in results if not ok]
        return (False, bad[0]) if bad else (True, results[0][1])

    def post(self, route, body):
        """(status, reply) of one POST whose body already validated."""
        if route == "/init_weights_update_group":
            return self._answer(self.ranks("init", body))
        if route == "/destroy_weights_update_group":
            return self._answer(self.ranks("destroy", body))
        if route == "/begin_weight_update":
            self.session = True
            return self._answer((True, "begun"))
        if route == "/end_weight_update":
            if not self.session:
                return self._answer((False, "no weight update session is open"))
            self.session = False
            return self._answer((True, "ended"))
        if route == "/update_weights_from_distributed":
            return self._distributed(body)
        if route == "/update_weights_from_disk":
            ok, msg = self.ranks("load_disk", body)
            if ok:
                self.version = body.get("weight_version") or self.version
                self.model_path = body["model_path"]
            return self._answer((ok, msg))
        if route == "/test/dump":
            return self._answer(self.ranks("dump", body))
        return 200, {"message": "ok", "status": "ok"}  # pause / continue

    def _distributed(self, body):
        if not self.session:
            return self._answer(
                (False, "update_weights_from_distributed must run between "
                 "begin_weight_update() and end_weight_update()")
            )  # fmt: skip
        self.updates += 1
        if self.updates == self.reject_bucket:
            return self._answer((False, "Failed to receive weights: refused by the test"))
        ok, msg = self.ranks("receive", body)
        if ok and body.get("weight_version") is not None:
            self.version = body["weight_version"]
        return self._answer((ok, msg))

    @staticmethod
    def _answer(result):
        ok, msg = result
        return (200 if ok else 400), {"success": ok, "message": msg}

    def get(self, route):
        if route in ("/health", "/health_generate"):
            return 200, {}
        if route in ("/model_info", "/get_model_info"):
            return 200, {"model_path": self.model_path, "weight_version": self.version}
        if route in ("/server_info", "/get_server_info"):
            return 200, {"tp_size": self.tp, "weight_version": self.version}
        return 404, {"detail": "Not Found"}


def _handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the tests read the replies
            pass

        def _reply(self, status, payload):
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply(*receiver.get(self.path))

        def do_POST(self):
            route = self.path.split("?")[0]
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if route == "/flush_cache":  # a query parameter, no body
                return self._reply(200, "Cache flushed.\n")
            if route not in SCHEMAS:
                return self._reply(404, {"detail": "Not Found"})
            body = json.loads(raw) if raw else None
            why = validate(route, body)
            if why is not None:
                return self._reply(422, {"detail": f"{route}: {why}"})
            self._reply(*receiver.post(route, body or {}))

    return Handler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-path", default="", help="empty: a sink without a model")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--reject-bucket", type=int, default=0)
    p.add_argument("--group-timeout-s", type=float, default=30.0)
    args = p.parse_args()
    receiver = Receiver(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _handler(receiver))
    print(f"receiver pid {os.getpid()} serving on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
