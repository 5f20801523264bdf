"""Test helpers for the SGLang engine: a cached sglang-jax venv, tiny checkpoints, references,
and a stand-in HTTP server for the one route sglang-jax lacks (/update_weights_from_disk).

The real server is sglang-jax (PyPI `sglang-jax`, the JAX port of SGLang with the same native
/generate API) run on CPU. It needs Python 3.12, so it lives in its own venv, built once from
PyPI under $SRPO_CACHE (default ~/.cache/srpo_jax) and reused. Its CPU attention path wants
head_dim 128 and it reads rope_theta from the top level of config.json, hence the checkpoint
shape below.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time

SGLANG_JAX_VERSION = "0.1.0rc0"
PYENV_PYTHON312 = "/root/.pyenv/versions/3.12.1/bin/python3.12"

# Flags found to work for a fast CPU start: no tokenizer (we send ids), no precompile or
# warmup (shapes compile on first use), small KV pool and batch limits (the defaults size
# buffers for accelerators and run out of host memory on CPU), and one batch-size and one
# token-count padding bucket so that a handful of programs serves every request.
SERVER_ARGS = (
    "-m sgl_jax.launch_server --model-path {model_path} --host {host} --port {port}"
    " --device cpu --dtype float32 --skip-tokenizer-init --disable-precompile"
    " --skip-server-warmup --mem-fraction-static 0.1 --max-total-tokens 2048"
    " --max-running-requests 16 --context-length 512 --chunked-prefill-size 512"
    " --max-prefill-tokens 512 --precompile-bs-paddings 16 --precompile-token-paddings 512"
    # Once, two servers started together on a busy 2-core machine returned wrong log-probs;
    # not reproduced since, cause unknown. The overlapped scheduler buys nothing on CPU, so it
    # is off to keep one less source of races.
    " --disable-overlap-schedule"
)


def server_env() -> tuple[tuple[str, str], ...]:
    """The test process forces 8 fake CPU devices via XLA_FLAGS; the server wants its default
    one. No JAX persistent compilation cache: with one written by a first server, a server
    restarted on new weights in the same run served log-probs matching neither checkpoint
    (seen with sglang-jax 0.1.0rc0 on CPU; a cache that was already warm behaved)."""
    return (("JAX_PLATFORMS", "cpu"), ("XLA_FLAGS", ""))


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SRPO_CACHE", pathlib.Path.home() / ".cache" / "srpo_jax"))


def find_python312() -> str | None:
    """$SRPO_SGLANG_PYTHON, python3.12 on PATH, or pyenv's 3.12.1 -- the first that really
    runs Python 3.12 (a pyenv shim is on PATH even when it would refuse to run)."""
    for cand in (os.environ.get("SRPO_SGLANG_PYTHON"), shutil.which("python3.12"), PYENV_PYTHON312):
        if not (cand and os.access(cand, os.X_OK)):
            continue
        probe = subprocess.run(
            [cand, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return cand
    return None


def ensure_venv(python312: str) -> pathlib.Path:
    """Path of the venv's python with sglang-jax installed; builds it once (locked, atomic)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"sglang-venv-{SGLANG_JAX_VERSION}"
    marker = venv / ".complete"
    with open(root / f".sglang-venv-{SGLANG_JAX_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return venv / "bin" / "python"
        tmp = root / f"sglang-venv-{SGLANG_JAX_VERSION}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python312, "-m", "venv", str(tmp)], check=True)
        log = root / f"sglang-venv-{SGLANG_JAX_VERSION}.pip.log"
        with open(log, "w") as f:
            rc = subprocess.run(
                [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q",
                 f"sglang-jax[cpu]=={SGLANG_JAX_VERSION}"],
                stdout=f, stderr=subprocess.STDOUT,
            ).returncode  # fmt: skip
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"pip install sglang-jax failed (rc {rc}); {log} ends with:\n{tail}")
        # venvs hard-code their own path in scripts; `python -m` is all we use, so renaming
        # the finished venv into place is safe and makes a half-built one impossible to reuse.
        tmp.rename(venv)
        marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        return venv / "bin" / "python"


def launch_template(python: str | os.PathLike) -> str:
    return f"{python} {SERVER_ARGS}"


# ---------------------------------------------------------------- checkpoints and references
VOCAB = 512


def write_tiny_checkpoint(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random 2-layer Qwen3 (head_dim 128, GQA 2:1, untied) saved by transformers in fp32.

    initializer_range 0.1 (not 0.02) so next-token distributions are far from uniform and
    log-prob mismatches would show."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        max_position_embeddings=512, tie_word_embeddings=False, rope_theta=1e6,
        initializer_range=0.1,
    )  # fmt: skip
    torch.manual_seed(seed)
    Qwen3ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    _rope_theta_on_top(path)
    return path


def _rope_theta_on_top(path: pathlib.Path) -> None:
    # transformers 5 nests rope_theta in rope_parameters; sglang-jax reads the top level.
    cfg_path = path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["rope_theta"] = cfg.get("rope_parameters", {}).get("rope_theta", 1e6)
    cfg_path.write_text(json.dumps(cfg, indent=2))


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# The settings every sglang-jax run config shares: a small synthetic demo, no warm-up (the
# tiny checkpoint is random; the runs test the rollout path, not learning), 2 x 4 rollouts
# per step, and a generous server timeout (a CPU server compiles on first use).
RUN_SETTINGS = {
    "data.synthetic_train_size": 32,
    "data.synthetic_test_size": 4,
    "algo.group_size": 4,
    "train.prompts_per_step": 2,
    "train.mini_batch_prompts": 2,
    "train.num_steps": 2,
    "warmup.steps": 0,
    "eval.every_steps": 0,
    "checkpoint.every_steps": 0,
    "rollout.sglang.timeout_s": 300.0,
}


def write_run_config(
    path: pathlib.Path,
    *,
    tokenizer: pathlib.Path,
    ckpt: pathlib.Path | None,
    settings: dict[str, object] | None = None,
) -> pathlib.Path:
    """A config file for `python -m srpo_jax.main`: configs/demo.py with the model swapped
    for the sglang-jax-friendly tiny checkpoint `ckpt` (head_dim 128; None: the launcher
    sets model.hf_path) and its `tokenizer`, then RUN_SETTINGS and `settings` ({dotted key:
    value}, e.g. {"rollout.sglang.sync": "restart"}) set on top, in that order."""
    lines = [
        'c.model.preset = ""',
        "c.model.overrides = {}",
        f"c.tokenizer.path = {str(tokenizer)!r}",
    ]
    if ckpt is not None:
        lines.append(f"c.model.hf_path = {str(ckpt)!r}")
    merged = RUN_SETTINGS | (settings or {})
    lines += [f"c.{key} = {value!r}" for key, value in merged.items()]
    body = "".join(f"        {line}\n" for line in lines)
    demo = str(REPO_ROOT / "configs" / "demo.py")
    path.write_text(
        "import importlib.util\n\n"
        f"spec = importlib.util.spec_from_file_location('demo', {demo!r})\n"
        "demo = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(demo)\n\n\n"
        "def get_config(arg=None):\n"
        "    c = demo.get_config(arg)\n"
        "    with c.unlocked():\n"
        f"{body}"
        "    return c\n"
    )
    return path


class Reference:
    """float64 log p(completion_t | prompt, completion_<t) from transformers' Qwen3, an
    implementation independent of both the server and srpo_jax."""

    def __init__(self, ckpt: pathlib.Path):
        import torch
        from transformers import Qwen3ForCausalLM

        self.torch = torch
        self.model = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float64).eval()

    def logprobs(self, prompt: list[int], completion: list[int]) -> list[float]:
        torch = self.torch
        ids = torch.tensor([list(prompt) + list(completion)])
        with torch.no_grad():
            logp = torch.log_softmax(self.model(ids).logits[0].double(), dim=-1)
        p = len(prompt)
        return [logp[p - 1 + t, tok].item() for t, tok in enumerate(completion)]

    def greedy(self, prompt: list[int], max_new: int, stop_ids) -> list[int]:
        """Greedy decoding in float64: each next token the argmax, up to and including the
        first of `stop_ids`, at most `max_new` tokens."""
        torch = self.torch
        out: list[int] = []
        with torch.no_grad():
            while len(out) < max_new and not (out and out[-1] in stop_ids):
                logits = self.model(torch.tensor([list(prompt) + out])).logits[0, -1]
                out.append(int(torch.argmax(logits)))
        return out


# ---------------------------------------------------------------- stand-in server
class StandIn:
    """A local HTTP server answering SGLang's weight-update routes the way SGLang documents.

    behavior: "ok" | "refuse" (HTTP 400, success false) | "false" (HTTP 200, success false)
    | "slow" (update never answers within the client timeout) | "stale" (loads but keeps
    reporting the old weight_version). Every request is recorded as (method, path, body)."""

    def __init__(self, behavior: str = "ok", slow_s: float = 5.0):
        self.behavior = behavior
        self.slow_s = slow_s
        self.requests: list[tuple[str, str, dict | None]] = []
        self.weight_version = "default"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # The client may have given up (timeout tests): that is not an error here.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def do_GET(self):
                outer.requests.append(("GET", self.path, None))
                if self.path == "/model_info":
                    self._reply(200, {"model_path": "x", "weight_version": outer.weight_version})
                elif self.path == "/health":
                    self._reply(200, {})
                else:
                    self._reply(404, {"detail": "Not Found"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                outer.requests.append(("POST", self.path, body))
                if self.path == "/flush_cache":  # SGLang answers this one in plain text
                    data = b"Cache flushed.\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if self.path != "/update_weights_from_disk":
                    self._reply(200, {"message": "ok", "status": "ok"})
                    return
                b = outer.behavior
                if b == "slow":
                    time.sleep(outer.slow_s)
                    self._reply(200, {"success": True, "message": "late"})
                elif b == "refuse":
                    self._reply(400, {"success": False, "message": "Failed to load weights"})
                elif b == "false":
                    self._reply(200, {"success": False, "message": "no such checkpoint"})
                else:
                    if b == "ok":
                        outer.weight_version = body.get("weight_version")
                    self._reply(200, {"success": True, "message": "ok", "num_paused_requests": 0})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def timer():
    """Yields a list that holds the elapsed seconds once the block ends."""
    out = []
    t = time.monotonic()
    try:
        yield out
    finally:
        out.append(time.monotonic() - t)
