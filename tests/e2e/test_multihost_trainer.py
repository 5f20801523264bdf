"""Multi-host: `python -m srpo_jax.main` as two real processes on 127.0.0.1.

Two processes with one CPU device each (joined by --coordinator_address/--num_processes/
--process_id, CPU collectives over gloo) run the tiny demo from the session's warm
checkpoint: a few more supervised warm-up steps, rollouts
from the embedded engine (sharded over both processes, gathered on each), evaluation, two
SRPO steps and a checkpoint, on a mesh of fsdp=2. The reference is one process owning two
devices with the same mesh. Only process 0 writes metrics; they must equal the reference's,
and the checkpoint the pair wrote must hold the reference's final state.

The same with rollout.overlap=1 (the embedded engine then samples one version behind, at the
wait after each train step), without the warm-up and over three steps: the processes agree
on the lagged rollouts and the lag is 0, 1, 1.
"""

from __future__ import annotations

import pytest

from tests.e2e.main_runs import assert_same_metrics, free_ports, start_main, warm_start_args

TIMEOUT_S = 900
ARGS = [
    "--config=configs/demo.py",
    "--config.mesh.fsdp=2",
    "--config.data.synthetic_train_size=64",
    "--config.data.synthetic_test_size=8",
    "--config.algo.group_size=4",
    "--config.train.prompts_per_step=4",
    "--config.train.mini_batch_prompts=4",
    "--config.train.num_steps=2",
    # From the session's warm checkpoint (tests/e2e/conftest.py), so rollouts score and rows
    # are routed; a few more warm-up steps still run the supervised step across processes.
    "--config.warmup.steps=4",
    "--config.warmup.lr=3e-4",
    "--config.eval.every_steps=2",
    "--config.eval.num_samples=2",
    "--config.eval.max_examples=4",
    "--config.checkpoint.every_steps=0",
]


# rollout.overlap -> what the runs add to ARGS (later flags win).
MODES = {
    0: [],
    1: ["--config.rollout.overlap=1", "--config.warmup.steps=0", "--config.train.num_steps=3"],
}


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [0, 1], ids=["on_policy", "overlap"])
def test_two_process_run_equals_one_process(tmp_path, overlap, warm_demo):
    (port,) = free_ports(1)
    mode = warm_start_args(warm_demo) + MODES[overlap]
    multi, ref = tmp_path / "multi", tmp_path / "ref"
    procs = []
    for i in range(2):
        flags = [
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            *mode,
        ]
        log = tmp_path / f"process{i}.log"
        procs.append((start_main(multi, 1, ARGS + flags, log), log))
    reference = start_main(ref, 2, ARGS + mode, tmp_path / "reference.log")
    procs.append((reference, tmp_path / "reference.log"))
    try:
        for proc, log in procs:
            proc.wait(timeout=TIMEOUT_S)
            assert proc.returncode == 0, (
                f"{log.name} exited {proc.returncode}:\n" + (log.read_text()[-5000:])
            )
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()

    got = assert_same_metrics(multi / "metrics.jsonl", ref / "metrics.jsonl")
    assert (multi / "curves.png").is_file()
    if overlap:
        assert [r["rollout/weight_version_lag"] for r in got if "loss" in r] == [0.0, 1.0, 1.0]
        assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == [
            "3"
        ]
        return
    # The warm-up makes some rollouts correct, so the teacher and SDPO paths ran too.
    assert any(r.get("route/teacher_frac", 0) > 0 for r in got), got
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
