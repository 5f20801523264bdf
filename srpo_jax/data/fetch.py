"""Downloads the one benchmark split the package does not ship: ToolUse train (4 MiB).

    python -m srpo_jax.data.fetch                 # into the user data folder (read by default)
    python -m srpo_jax.data.fetch --out=DIR       # into DIR; then --config.data.data_dir=DIR

It fetches datasets/tooluse/train.json of https://github.com/lasgroup/SDPO at the commit the
shipped splits come from, checks its git blob id (what `git hash-object` prints) and only
then writes DIR/tooluse/train.json, through a temporary file renamed into place, so a
mismatched or interrupted download never leaves a file the loader would read. The default
DIR is datasets.user_data_dir(), which the loader reads first when data.data_dir is empty
(srpo_jax/data/datasets.py). A download error or a blob mismatch is one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import os
import pathlib
import sys
import tempfile
import urllib.error
import urllib.request

from srpo_jax.data import datasets

SDPO_COMMIT = "0e6d5106abe69f578c63bf38a9394e22905c8773"
BASE_URL = f"https://raw.githubusercontent.com/lasgroup/SDPO/{SDPO_COMMIT}"
SOURCE_PATH = "datasets/tooluse/train.json"
TOOLUSE_TRAIN_BLOB = "b3f1449172a9a98389c03d38f83ab2795426d7f8"


class FetchError(RuntimeError):
    """The download failed or its content is not the expected blob; nothing was written."""


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """Where the split goes, where it comes from and which git blob it must be."""

    out_dir: pathlib.Path
    base_url: str = BASE_URL  # SOURCE_PATH is appended; tests point it at a local server
    expected_blob: str = TOOLUSE_TRAIN_BLOB
    timeout_s: float = 60.0


def git_blob_id(data: bytes) -> str:
    """`git hash-object` of these bytes: sha1 over a "blob <size>\\0" header and the data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _download(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise FetchError(f"could not download {url}: {e}") from e


def _write_atomically(dest: pathlib.Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def fetch_tooluse_train(opts: FetchOptions) -> pathlib.Path:
    """Downloads, verifies and writes OUT/tooluse/train.json; returns its path."""
    url = f"{opts.base_url.rstrip('/')}/{SOURCE_PATH}"
    data = _download(url, opts.timeout_s)
    actual = git_blob_id(data)
    if actual != opts.expected_blob:
        raise FetchError(
            f"{url}: git blob id {actual} does not match the expected {opts.expected_blob} "
            f"({len(data)} bytes); nothing was written"
        )
    dest = datasets.split_path(pathlib.Path(opts.out_dir), "tooluse", "train")
    try:
        _write_atomically(dest, data)
    except OSError as e:
        raise FetchError(f"could not write {dest}: {e}") from e
    return dest


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every entry point's bad input
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> None:
    p = _Parser(prog="python -m srpo_jax.data.fetch", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(datasets.user_data_dir()), help="data folder to fill")
    p.add_argument("--base_url", default=BASE_URL, help=f"raw-file URL that {SOURCE_PATH} is under")
    p.add_argument("--expected_blob", default=TOOLUSE_TRAIN_BLOB, help="git blob id to require")
    a = p.parse_args(argv)
    opts = FetchOptions(pathlib.Path(a.out), a.base_url, a.expected_blob)
    try:
        dest = fetch_tooluse_train(opts)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {dest} (git blob {opts.expected_blob})")


if __name__ == "__main__":
    main()
