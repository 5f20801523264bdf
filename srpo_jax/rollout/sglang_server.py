"""Lifecycle of local SGLang server processes: launch, wait until healthy, stop.

A server is started from a command-line template (placeholders `{model_path}`, `{host}`,
`{port}`, `{index}`), in its own process group so that stopping it also stops the
scheduler/detokenizer children SGLang forks. Its stdout and stderr go to a log file whose
tail is quoted in every error, because "the server did not come up" is useless without it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import time

import requests

from srpo_jax.rollout.config import DETERMINISTIC_FLAGS, server_kind
from srpo_jax.rollout.engine import RolloutError

LOG_TAIL_LINES = 40

# The engine sends token ids and exports no tokenizer files: a server started on an export
# would fail loading a tokenizer from it unless told to skip it (or given one).
_TOKENIZER_FLAGS = ("--skip-tokenizer-init", "--tokenizer-path")


def launch_flags(template: str, *, deterministic: bool) -> tuple[str, ...]:
    """Flags appended to every launched server's command line: --skip-tokenizer-init unless
    the template sets a tokenizer, and the kind's deterministic flag when asked for. Flags the
    template already has are not repeated; an unrecognised server gets nothing."""
    kind = server_kind(template)
    if kind is None:
        return ()
    words = shlex.split(template)
    flags = []
    if not any(w.split("=")[0] in _TOKENIZER_FLAGS for w in words):
        flags.append("--skip-tokenizer-init")
    if deterministic and DETERMINISTIC_FLAGS[kind] not in words:
        flags.append(DETERMINISTIC_FLAGS[kind])
    return tuple(flags)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def render_command(
    template: str, *, model_path: str, host: str, port: int, index: int, extra=()
) -> list[str]:
    """The argv for one server: the template with its placeholders filled, split like a shell,
    then the `extra` flags."""
    try:
        line = template.format(model_path=model_path, host=host, port=port, index=index)
    except (KeyError, IndexError) as e:
        raise ValueError(
            f"launch command template {template!r} uses unknown placeholder {e}; "
            "allowed: {model_path} {host} {port} {index}"
        ) from e
    return shlex.split(line) + list(extra)


def _tail(path: pathlib.Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<log {path} unreadable: {e}>"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """One local server process serving `url`, started from `argv`, logging to `log_path`."""

    def __init__(self, argv: list[str], url: str, log_path: str | os.PathLike, env=None):
        self.argv = list(argv)
        self.url = url
        self.log_path = pathlib.Path(log_path)
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"server for {self.url} is already running (pid {self.proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== launch: {shlex.join(self.argv)}\n".encode())
            log.flush()
            # start_new_session: the server gets its own process group, so stop() can signal
            # every child SGLang forks without touching our own process group.
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def wait_healthy(self, timeout_s: float, poll_s: float = 1.0) -> float:
        """Blocks until GET {url}/health answers 200; returns the seconds it took.

        Raises RolloutError (with the log tail) if the process exits or the timeout passes."""
        start = time.monotonic()
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RolloutError(
                    f"SGLang server for {self.url} exited with code {self.proc.returncode} "
                    f"before becoming healthy; log {self.log_path} ends with:\n{self.log_tail()}"
                )
            if is_healthy(self.url, timeout_s=min(5.0, max(poll_s, 1.0))):
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise RolloutError(
                    f"SGLang server for {self.url} not healthy after {timeout_s:.0f} s; "
                    f"log {self.log_path} ends with:\n{self.log_tail()}"
                )
            time.sleep(poll_s)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the whole process group, then SIGKILL after `grace_s`."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # session leader: its pid is the group id
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        # Children can outlive the leader (or ignore SIGTERM): kill what is left of the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace_s)
        self.proc = None


def is_healthy(url: str, timeout_s: float = 5.0) -> bool:
    """True when GET {url}/health answers 200 within `timeout_s`."""
    try:
        return requests.get(f"{url}/health", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def launch_servers(
    template: str,
    *,
    model_path: str,
    host: str,
    ports: list[int],
    log_dir: str | os.PathLike,
    startup_timeout_s: float,
    env=None,
    first_index: int = 0,
    extra_flags: tuple[str, ...] = (),
) -> list[ServerProcess]:
    """Starts one server per port (all at once, they boot in parallel) and waits for all.

    Server k gets index first_index + k (the template's `{index}`, and its log file name);
    `extra_flags` go at the end of every command line.
    If any fails to come up, every server started here is stopped before the error propagates.
    """
    servers = []
    try:
        for i, port in enumerate(ports, start=first_index):
            argv = render_command(
                template, model_path=model_path, host=host, port=port, index=i, extra=extra_flags
            )
            url = f"http://{host}:{port}"
            log = pathlib.Path(log_dir) / f"sglang_{i}_{port}.log"
            server = ServerProcess(argv, url, log, env=env)
            server.start()
            servers.append(server)
        deadline = time.monotonic() + startup_timeout_s
        for server in servers:
            server.wait_healthy(max(1.0, deadline - time.monotonic()))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
