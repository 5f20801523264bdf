"""The benchmark splits shipped in the package: byte-identical to the SDPO repository (git
blob ids at commit 0e6d510), the row counts of its README, listed in the README beside them,
and carried by a built wheel (pyproject's package-data)."""

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

from srpo_jax.data import datasets

ROOT = pathlib.Path(__file__).resolve().parents[2]
# path -> (rows, git blob id of datasets/<path> in lasgroup/SDPO at the pinned commit)
SHIPPED = {
    "sciknoweval/biology/train.json": (450, "cbf2bc599eaf09c1384bcf0fd0737dc73885ae1c"),
    "sciknoweval/biology/test.json": (50, "166c4562910c235a50d28bb75a01e454784e746a"),
    "sciknoweval/chemistry/train.json": (1890, "2c4cb4fcb22f7a18770d3c75b2e858dca0186668"),
    "sciknoweval/chemistry/test.json": (210, "7356e65b1a803710460e941cc7b471dc473e34b7"),
    "sciknoweval/material/train.json": (841, "848767d48095b4c08fed315b07f96003c458e9ab"),
    "sciknoweval/material/test.json": (94, "b90ab6a44daf9ea929b70946a29b0e506d03ec41"),
    "sciknoweval/physics/train.json": (720, "afc03776fbbbc39ab1f496bc3be9a8e2b001e1f9"),
    "sciknoweval/physics/test.json": (80, "b1f4875ed5e25f37d30958e7b70a0d1f210f4cf3"),
    "tooluse/test.json": (68, "64ef17062731ece73d034c4a28cebdf2afe061bb"),
}


def _git_blob_id(data: bytes) -> str:
    # What `git hash-object FILE` prints: sha1 over a "blob <size>\0" header and the bytes.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_git_blob_id_of_known_blobs():
    # `git hash-object` of an empty file and of "hello\n", fixed by git's object format.
    assert _git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert _git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_shipped_files_are_the_upstream_blobs(packaged_data):
    on_disk = sorted(str(p.relative_to(packaged_data)) for p in packaged_data.rglob("*.json"))
    assert on_disk == sorted(SHIPPED)
    for rel, (rows, blob) in SHIPPED.items():
        data = (packaged_data / rel).read_bytes()
        assert _git_blob_id(data) == blob, rel
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        assert len(lines) == rows, rel
        assert all(isinstance(json.loads(line), dict) for line in lines), rel


def test_readme_beside_the_data_states_each_blob_and_count(packaged_data):
    readme = (packaged_data / "README.md").read_text()
    assert "0e6d5106abe69f578c63bf38a9394e22905c8773" in readme
    for rel, (rows, blob) in SHIPPED.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{rel}`"))
        assert f"| {rows} " in row and blob in row, row
    assert "b3f1449172a9a98389c03d38f83ab2795426d7f8" in readme  # the fetched train split


def test_the_default_config_reads_the_packaged_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty user data folder
    assert datasets.DataConfig().data_dir == ""
    path = datasets.find_split("", "chem", "train")
    assert path == datasets.PACKAGED_DATA_DIR / "sciknoweval" / "chemistry" / "train.json"
    assert len(datasets.load_split("", "materials", "test")) == 94


def test_a_built_wheel_carries_the_data(tmp_path):
    # Build from a copy, so the build's own folders never land in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "srpo_jax", src / "srpo_jax", ignore=shutil.ignore_patterns("__pycache__")
    )
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*cmd, str(src), "-w", str(tmp_path / "whl")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "whl").glob("srpo_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in [*SHIPPED, "README.md"]:
        assert f"srpo_jax/data/benchmarks/{rel}" in names, rel
