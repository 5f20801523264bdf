"""Launch scripts: dry runs print the expected commands for 1 and 2 nodes / TPU workers, and
the SLURM script's real path runs those commands (srun and scontrol replaced by stubs), as
does the SGLang pool's: each server's line runs through bash with a stand-in python."""

import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SLURM = REPO / "launch" / "slurm_gpu.sh"
POOL = REPO / "launch" / "sglang_pool.sh"
TPU = REPO / "launch" / "tpu_vm.sh"
CONFIG = "configs/qwen3_8b_chem.py:method=srpo"


def run(script, *args, env=None, check=True):
    proc = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=60, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def slurm_dry(*args):
    return run(
        SLURM, "--dry-run", "--model-path", "/m", "--shared-dir", "/s", "--config", CONFIG, *args
    ).stdout


def inner_command(srun_line: str) -> list[str]:
    """The words of the `bash -c '...'` payload of an srun line."""
    words = shlex.split(srun_line)
    assert words[0] == "srun" and words[-3:-1] == ["bash", "-c"], srun_line
    return shlex.split(words[-1])


def test_slurm_one_node_embedded_engine():
    out = slurm_dry("--num-nodes", "1").strip().splitlines()
    assert "embedded JAX engine" in out[1]
    srun = out[-1]
    assert "--nodes=1 --ntasks=1 --ntasks-per-node=1 --nodelist=node0" in srun
    cmd = inner_command(srun)
    assert cmd[:5] == [
        "exec", "env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
        "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true", "python",
    ]  # fmt: skip
    assert cmd[5:8] == ["-m", "srpo_jax.main", f"--config={CONFIG}"]
    for arg in (
        "--workdir=/s/workdir",
        "--config.model.hf_path=/m",
        "--config.mesh.data=1",  # the config's one-node layout, one replica
        "--coordinator_address=node0:12355",
        "--num_processes=1",
        "--process_id=$SLURM_PROCID",  # expanded by each srun task, not by the script
    ):
        assert arg in cmd, arg
    assert not any("sglang" in a for a in cmd)


def test_slurm_two_learner_nodes_and_a_pool_node():
    out = slurm_dry("--num-nodes", "3", "--learner-nodes", "2", "--sglang-tp", "4",
                    "--", "--config.train.micro_batch_rows=16")  # fmt: skip
    lines = out.strip().splitlines()
    assert lines[0] == "# learner: node0 node1 (16 GPUs, coordinator node0:12355)"
    assert lines[1] == "# rollout pool: node2"
    pool = shlex.split(lines[2])
    assert pool[1].endswith("launch/sglang_pool.sh")
    assert pool[pool.index("--nodes") + 1] == "node2"
    assert pool[pool.index("--tp") + 1] == "4"
    assert pool[pool.index("--urls-file") + 1] == "/s/sglang_urls.txt"
    assert sum("sglang.launch_server" in ln for ln in lines) == 2  # 8 GPUs / tp 4
    # The payload the pool runs (printed as is): env sets the GPUs, exec cannot.
    server = inner_command(next(ln for ln in lines if "sglang.launch_server" in ln)[4:])
    assert server[:5] == ["exec", "env", "CUDA_VISIBLE_DEVICES=0,1,2,3", "python", "-m"]
    cmd = inner_command(lines[-1])
    assert "--nodes=2" in lines[-1] and "--nodelist=node0,node1" in lines[-1]
    for arg in (
        "--config.mesh.data=2",  # one data-parallel replica of the one-node layout per node
        "--num_processes=2",
        "--config.rollout.engine=sglang",
        "--config.rollout.sglang.export_dir=/s/weights",
        "--config.train.micro_batch_rows=16",  # the pass-through comes after the defaults
    ):
        assert arg in cmd, arg
    assert cmd.index("--config.train.micro_batch_rows=16") > cmd.index("--config.mesh.data=2")


def test_slurm_explicit_mesh_must_cover_the_learner_gpus():
    cmd = inner_command(slurm_dry("--num-nodes", "2", "--mesh", "1,16,1").splitlines()[-1])
    for arg in ("--config.mesh.data=1", "--config.mesh.fsdp=16", "--config.mesh.tensor=1"):
        assert arg in cmd, arg
    proc = run(SLURM, "--dry-run", "--num-nodes", "2", "--mesh", "1,8,1", "--model-path", "/m",
               "--shared-dir", "/s", "--config", CONFIG, check=False)  # fmt: skip
    assert proc.returncode == 2 and "--mesh 1,8,1 has 8 devices, not 16" in proc.stderr


def test_slurm_refuses_missing_options_and_too_many_learner_nodes():
    proc = run(SLURM, "--dry-run", "--config", CONFIG, check=False)
    assert proc.returncode == 2 and "--model-path is required" in proc.stderr
    proc = run(SLURM, "--dry-run", "--num-nodes", "1", "--learner-nodes", "2", "--model-path",
               "/m", "--shared-dir", "/s", "--config", CONFIG, check=False)  # fmt: skip
    assert proc.returncode == 2 and "--learner-nodes 2 > 1 nodes" in proc.stderr


def test_slurm_real_path_passes_the_pool_urls_to_the_learner(tmp_path):
    """Outside a cluster: scontrol, srun and the pool are stubs; the learner command that
    would run under srun is captured and must carry the pool's URLs as a Python tuple."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'gpu1\\ngpu2\\n'\n")
    # srun of a pool server: write nothing; srun of the learner: record its bash -c payload.
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        'if [[ "$*" == *srpo_jax.main* ]]; then printf "%s" "${@: -1}" > "$SRUN_LOG"; '
        "else sleep 30; fi\n"
    )
    (bin_dir / "curl").write_text("#!/bin/bash\nexit 0\n")  # every /health answers
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu[1-2]",
               SRUN_LOG=str(tmp_path / "learner.txt"))  # fmt: skip
    shared = tmp_path / "shared"
    run(SLURM, "--learner-nodes", "1", "--gpus-per-node", "2", "--sglang-tp", "1",
        "--model-path", "/m", "--shared-dir", str(shared), "--config", CONFIG, env=env)  # fmt: skip
    payload = shlex.split((tmp_path / "learner.txt").read_text())
    urls = [a for a in payload if a.startswith("--config.rollout.sglang.urls=")]
    assert urls == ["--config.rollout.sglang.urls=('http://gpu2:30000','http://gpu2:30001',)"]
    assert "--coordinator_address=gpu1:12355" in payload and "--config.mesh.data=1" in payload
    assert (shared / "workdir").is_dir()


def _stub(path: pathlib.Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_pool_real_path_starts_each_server_with_its_gpus(tmp_path):
    """The per-server line runs through bash as srun would run it on the node: srun is a
    stub that drops its own options and runs the rest (`bash -c PAYLOAD`), and `python` is a
    stand-in that records its CUDA_VISIBLE_DEVICES and argv, so a payload bash cannot run
    (such as `exec VAR=value prog`, which exec takes for a program name) fails here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "srun", 'while [ $# -gt 0 ] && [ "$1" != bash ]; do shift; done\nexec "$@"\n')
    _stub(bin_dir / "curl", "exit 0\n")  # every /health answers
    _stub(
        bin_dir / "python",
        'port="${@: -1}"; for ((i = 1; i < $#; i++)); do '
        '[ "${!i}" = --port ] && { j=$((i + 1)); port="${!j}"; }; done\n'
        'printf "%s\\n" "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}" "$0" "$@" '
        '> "$RECORD_DIR/server_$port.txt"\n',
    )
    record = tmp_path / "record"
    record.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD_DIR=str(record))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    urls_file = tmp_path / "urls.txt"
    run(POOL, "--model-path", "/m", "--tp", "2", "--gpus-per-node", "4", "--nodes", "n1",
        "--base-port", "31000", "--urls-file", str(urls_file), "--log-dir", str(tmp_path / "logs"),
        "--health-timeout", "30", "--", "--mem-fraction-static", "0.5", env=env)  # fmt: skip
    assert urls_file.read_text().split() == ["http://n1:31000", "http://n1:31001"]
    for port, gpus in ((31000, "0,1"), (31001, "2,3")):
        lines = (record / f"server_{port}.txt").read_text().splitlines()
        assert lines[0] == f"CUDA_VISIBLE_DEVICES={gpus}"
        assert lines[1] == str(bin_dir / "python")  # the PATH's python, started by exec
        assert lines[2:] == [
            "-m", "sglang.launch_server", "--model-path", "/m", "--skip-tokenizer-init",
            "--host", "n1", "--port", str(port), "--tp-size", "2",
            "--mem-fraction-static", "0.5",
        ]  # fmt: skip


def tpu_dry(*args):
    return run(
        TPU, "--dry-run", "--tpu", "v5p", "--zone", "us-east5-a", "--config", CONFIG,
        "--model-path", "/m", "--shared-dir", "/s", *args,
    ).stdout  # fmt: skip


@pytest.mark.parametrize(
    "workers, chips, mesh", [(1, 4, (1, 1, 4)), (2, 8, (1, 1, 8)), (4, 16, (2, 1, 8))]
)
def test_tpu_dry_run_one_command_for_every_worker(workers, chips, mesh):
    lines = tpu_dry("--num-workers", str(workers), "--chips", str(chips)).strip().splitlines()
    assert lines[0].startswith(f"# v5p: {workers} worker(s), {chips} chips")
    words = shlex.split(lines[-1])
    assert words[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v5p", "--zone"]
    assert "--worker=all" in words
    remote = words[words.index("--command") + 1]
    assert "LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true" in remote
    assert "agent-worker-number" in remote  # each worker reads its own process id
    cmd = shlex.split(remote.split(" exec ", 1)[1])
    assert cmd[:3] == ["python3", "-m", "srpo_jax.main"]
    for arg in (
        f"--config={CONFIG}",
        f"--config.mesh.data={mesh[0]}",
        f"--config.mesh.fsdp={mesh[1]}",
        f"--config.mesh.tensor={mesh[2]}",
        f"--num_processes={workers}",
        "--coordinator_address=WORKER0_IP:8476",
        "--process_id=$worker",
    ):
        assert arg in cmd, arg


def test_tpu_dry_run_with_an_sglang_pool():
    out = tpu_dry("--num-workers", "2", "--sglang-urls", "http://a:1 http://b:2")
    remote = shlex.split(out.strip().splitlines()[-1])[-1]
    cmd = shlex.split(remote.split(" exec ", 1)[1])
    assert "--config.rollout.engine=sglang" in cmd
    assert "--config.rollout.sglang.urls=('http://a:1','http://b:2',)" in cmd


def _shellcheck() -> str:
    """shellcheck, installed from Debian's packages when missing (tests run as root, as CI)."""
    if shutil.which("shellcheck") is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "shellcheck"],
        ):
            subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    return shutil.which("shellcheck")


def test_shellcheck_clean():
    proc = subprocess.run(
        [_shellcheck(), str(SLURM), str(TPU), str(POOL)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout


def test_slurm_cpu_mode_one_cpu_device_per_process_and_a_sglang_jax_pool():
    srun = slurm_dry("--num-nodes", "2", "--gpus-per-node", "0").strip().splitlines()[-1]
    cmd = inner_command(srun)
    assert cmd[:5] == [
        "exec", "env", "JAX_PLATFORMS=cpu",
        "XLA_FLAGS=--xla_force_host_platform_device_count=1", "python",
    ]  # fmt: skip
    assert "--config.mesh.data=2" in cmd and "--num_processes=2" in cmd
    # With a node left over, CPU mode runs the pool as one sglang-jax server on it; those
    # cannot load new weights, so the learner keeps them on their starting weights.
    lines = slurm_dry("--num-nodes", "2", "--learner-nodes", "1", "--gpus-per-node", "0",
                      "--sglang-python", "/venv/bin/python").strip().splitlines()  # fmt: skip
    servers = [server_command(ln) for ln in lines if ln.startswith("#   srun")]
    assert len(servers) == 1
    assert servers[0][:7] == [
        "exec", "env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=1",
        "/venv/bin/python", "-m", "sgl_jax.launch_server",
    ]  # fmt: skip
    assert "--device" in servers[0] and "--host" in servers[0]
    learner = inner_command(lines[-1])
    assert learner[4] == "python"  # --sglang-python is the servers' python only
    assert "--config.rollout.sglang.sync=none" in learner
    assert "--config.rollout.engine=sglang" in learner


def server_command(dry_line: str) -> list[str]:
    """The server command of a pool dry-run line (printed bare, or under slurm_gpu's '#   ')."""
    return inner_command(dry_line.removeprefix("#   "))


def pool_dry(*args):
    return run(POOL, "--model-path", "/m", "--dry-run", *args).stdout.strip().splitlines()


@pytest.mark.parametrize(
    "kind, gpus, module, flag",
    [
        ("sglang", "4", "sglang.launch_server", "--enable-deterministic-inference"),
        ("sglang-jax", "4", "sgl_jax.launch_server", "--enable-deterministic-sampling"),
        ("sglang-jax", "0", "sgl_jax.launch_server", "--enable-deterministic-sampling"),
    ],
)
def test_pool_sglang_args_and_deterministic_reach_every_server(kind, gpus, module, flag):
    """Each kind's own deterministic flag (sglang 0.5.23: enable_deterministic_inference;
    sglang-jax: enable_deterministic_sampling), --skip-tokenizer-init (the learner sends ids;
    exports carry no tokenizer), then --sglang-args, then what follows `--`."""
    lines = pool_dry("--server", kind, "--gpus-per-node", gpus, "--tp", "2", "--nodes", "a b",
                     "--sglang-args", "--mem-fraction-static 0.7\n  --dtype bfloat16",
                     "--deterministic", "--", "--log-level", "warning")  # fmt: skip
    servers = [server_command(ln) for ln in lines if ln.startswith("srun")]
    assert len(servers) == (2 if gpus == "0" else 4)  # CPU mode: one server per node
    for cmd in servers:
        assert cmd[cmd.index("-m") + 1] == module
        assert cmd.count(flag) == 1 and "--skip-tokenizer-init" in cmd
        assert ("--device" in cmd) == (gpus == "0")
        assert cmd[cmd.index("--tp-size") + 2 :] == [
            "--mem-fraction-static", "0.7", "--dtype", "bfloat16", flag,
            "--log-level", "warning",
        ]  # fmt: skip
    lines = pool_dry("--server", kind, "--gpus-per-node", gpus, "--nodes", "a")
    plain = [server_command(ln) for ln in lines if ln.startswith("srun")]
    assert plain and not any(f.startswith("--enable-deterministic") for c in plain for f in c)


def test_slurm_sglang_args_and_deterministic_reach_every_pool_server():
    lines = slurm_dry("--num-nodes", "3", "--learner-nodes", "1", "--sglang-tp", "4",
                      "--sglang-args", "--mem-fraction-static 0.7", "--deterministic",
                      "--sglang-port", "31000").strip().splitlines()  # fmt: skip
    servers = [server_command(ln) for ln in lines if ln.startswith("#   srun")]
    assert len(servers) == 4  # 2 pool nodes x 8 GPUs / tp 4
    for cmd in servers:
        assert cmd[cmd.index("-m") + 1] == "sglang.launch_server"
        assert cmd[-3:] == ["--mem-fraction-static", "0.7", "--enable-deterministic-inference"]
        assert cmd[cmd.index("--port") + 1] in ("31000", "31001")
    learner = inner_command(lines[-1])
    assert not any("sync=" in a for a in learner)  # mainline SGLang loads weights from disk


def test_pool_refuses_a_bad_server_kind_and_sglang_on_cpu():
    proc = run(POOL, "--model-path", "/m", "--dry-run", "--server", "vllm", check=False)
    assert proc.returncode == 2 and proc.stderr == (
        "error: sglang_pool.sh: --server vllm is not sglang or sglang-jax\n"
    )
    proc = run(POOL, "--model-path", "/m", "--dry-run", "--gpus-per-node", "0", "--server",
               "sglang", check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: sglang_pool.sh: --gpus-per-node 0 (CPU mode)")
