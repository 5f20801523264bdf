"""The ToolUse train download against a local HTTP server on 127.0.0.1 (never the internet):
a file with the expected git blob id is kept where the loader reads it; a corrupted one is
refused with one `error:` line naming both ids, exit 2, and nothing left behind."""

import dataclasses
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from srpo_jax.data import datasets, fetch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = [
    {"idx": i, "kind": "tooluse", "dataset": "tooluse", "prompt": f"q{i}", "system": None,
     "answer": json.dumps([{"Action": "f", "Action_Input": "{}"}])}
    for i in range(3)
]  # fmt: skip
GOOD = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
# The id `git hash-object` gives GOOD, computed independently of fetch.git_blob_id.
GOOD_BLOB = hashlib.sha1(b"blob " + str(len(GOOD)).encode() + b"\x00" + GOOD).hexdigest()


@pytest.fixture(autouse=True)
def no_proxy_for_the_local_server(monkeypatch):
    # A proxy configured on the machine would otherwise see (and answer) 127.0.0.1 requests.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves good/datasets/tooluse/train.json and bad/... (one flipped byte)."""
    root = tmp_path_factory.mktemp("www")
    for name, data in (("good", GOOD), ("bad", GOOD.replace(b"q1", b"q7"))):
        path = root / name / "datasets" / "tooluse" / "train.json"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "srpo_jax.data.fetch", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_defaults_are_the_pinned_upstream_file():
    assert fetch.TOOLUSE_TRAIN_BLOB == "b3f1449172a9a98389c03d38f83ab2795426d7f8"
    assert fetch.BASE_URL.endswith("lasgroup/SDPO/0e6d5106abe69f578c63bf38a9394e22905c8773")
    assert fetch.FetchOptions(out_dir="x").expected_blob == fetch.TOOLUSE_TRAIN_BLOB
    assert fetch.git_blob_id(GOOD) == GOOD_BLOB


def test_a_verified_file_is_kept_where_the_loader_reads_it(server, tmp_path):
    r = _run(f"--out={tmp_path}", f"--base_url={server}/good", f"--expected_blob={GOOD_BLOB}")
    assert r.returncode == 0, r.stderr
    assert _files(tmp_path) == ["tooluse", "tooluse/train.json"]  # no temporary file left
    assert (tmp_path / "tooluse" / "train.json").read_bytes() == GOOD
    assert [ex.idx for ex in datasets.load_split(tmp_path, "tooluse", "train")] == [0, 1, 2]


def test_the_default_out_is_the_folder_an_empty_data_dir_reads(server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    opts = fetch.FetchOptions(
        out_dir=datasets.user_data_dir(), base_url=f"{server}/good", expected_blob=GOOD_BLOB
    )
    dest = fetch.fetch_tooluse_train(opts)
    assert dest == datasets.split_path("", "tooluse", "train")
    assert dest == datasets.find_split("", "tooluse", "train")
    assert len(datasets.load_split("", "tooluse", "train")) == 3
    r = subprocess.run(  # the command line's default --out is that folder too
        [sys.executable, "-m", "srpo_jax.data.fetch", f"--base_url={server}/bad"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, XDG_CACHE_HOME=str(tmp_path / "other")),
        timeout=120,
    )
    assert r.returncode == 2 and not (tmp_path / "other").exists()


def test_a_corrupted_file_is_refused_and_not_kept(server, tmp_path):
    out = tmp_path / "out"
    r = _run(f"--out={out}", f"--base_url={server}/bad", f"--expected_blob={GOOD_BLOB}")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    bad_blob = fetch.git_blob_id(GOOD.replace(b"q1", b"q7"))
    assert f"expected {GOOD_BLOB}" in lines[0] and bad_blob in lines[0]
    assert _files(out) == []


def test_a_corrupted_file_does_not_replace_a_good_one(server, tmp_path):
    opts = fetch.FetchOptions(tmp_path, base_url=f"{server}/good", expected_blob=GOOD_BLOB)
    fetch.fetch_tooluse_train(opts)
    with pytest.raises(fetch.FetchError, match="does not match"):
        fetch.fetch_tooluse_train(dataclasses.replace(opts, base_url=f"{server}/bad"))
    assert (tmp_path / "tooluse" / "train.json").read_bytes() == GOOD
    assert _files(tmp_path) == ["tooluse", "tooluse/train.json"]


def test_network_errors_are_one_error_line(server, tmp_path):
    r = _run(f"--out={tmp_path / 'a'}", f"--base_url={server}/missing")  # HTTP 404
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: could not download ") and "404" in r.stderr
    # A port nothing listens on: bind one, note it, close it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run(f"--out={tmp_path / 'b'}", f"--base_url=http://127.0.0.1:{port}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: could not download ")
    assert _files(tmp_path) == []


def test_a_bad_flag_is_one_error_line():
    r = _run("--outdir=x")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
