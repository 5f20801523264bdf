"""The start and end summaries: config.json on disk, one screen of config, the run table."""

import json

import jax
import ml_collections
import numpy as np

from srpo_jax import config as config_lib
from srpo_jax.trainer import report


def _cfg(**log):
    c = ml_collections.ConfigDict()
    c.algo = dict(method="grpo", group_size=4)
    c.optim = dict(lr=1e-3)
    c.train = dict(num_steps=6, prompts_per_step=8, mini_batch_prompts=4)
    c.warmup = dict(steps=0)
    c.eval = dict(every_steps=2, num_samples=4)
    c.log = dict(tensorboard=False, **log)
    return config_lib.from_config_dict(c)


def test_write_config_is_the_whole_resolved_config(tmp_path):
    cfg = _cfg()
    path = report.write_config(cfg, tmp_path)
    assert path == tmp_path / "config.json"
    saved = json.loads(path.read_text())
    assert saved["algo"]["method"] == "grpo" and saved["train"]["num_steps"] == 6
    assert config_lib.from_config_dict(saved) == cfg  # enough to rebuild the run


class _Prompts:
    """Stands in for datasets.PromptSet: len() prompts kept, num_filtered dropped."""

    def __init__(self, kept, filtered):
        self.kept, self.num_filtered = kept, filtered

    def __len__(self):
        return self.kept


def test_config_summary_fits_a_screen_and_names_what_matters(tmp_path):
    cfg = _cfg(wandb_project="proj")
    params = {"a": np.zeros((1000, 1234)), "b": {"c": np.zeros(567)}}  # 1,234,567 numbers
    text = report.config_summary(
        cfg, tmp_path, cfg.model.architecture(), params, _Prompts(500, 12), _Prompts(64, 0)
    )
    lines = text.splitlines()
    assert lines[-1].startswith("outputs")  # the one line whose width is the workdir's
    assert len(lines) <= 24 and max(map(len, lines[:-1])) <= 100
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert "grpo" in rows["method"] and "8 prompts x 4 rollouts" in rows["method"]
    assert "2 update(s) per step" in rows["method"]
    assert "1.2M params" in rows["model"]
    n, platform = len(jax.devices()), jax.devices()[0].platform
    assert f"data 1 x fsdp 1 x tensor 1 on {n} {platform} device(s)" in rows["mesh"]
    assert "6 RL steps; eval every 2 (avg@4)" in rows["steps"]
    assert "500 train prompts (12 filtered as too long), 64 test" in rows["data"]
    assert rows["outputs"] == (
        f"outputs      {tmp_path}: metrics.jsonl, curves.png, checkpoints/, config.json"
    )  # no tensorboard/ or wandb/: both off here


def test_run_summary_from_records(tmp_path):
    cfg = _cfg()
    records = [
        {"step": 2, "eval/avg_at_k": 0.25, "eval/maj_at_k": 0.5, "time/eval_s": 3.0},
        {"step": 3, "time/step_s": 1.0, "skipped_updates_total": 0.0},
        {"step": 4, "time/step_s": 1.0, "skipped_updates_total": 1.0},
        {"step": 4, "eval/avg_at_k": 0.75, "eval/maj_at_k": 0.5, "time/eval_s": 2.0},
        {"step": 5, "time/step_s": 1.0, "skipped_updates_total": 2.0},
        {
            "step": 6,
            "time/step_s": 1.0,
            "skipped_updates_total": 2.0,
            "time/train_elapsed_s": 3725.0,
        },
        {"step": 6, "eval/avg_at_k": 0.5, "eval/maj_at_k": 0.75, "time/eval_s": 4.0},
    ]
    text = report.run_summary(
        cfg,
        tmp_path,
        records,
        phase_seconds={"setup": 5.0, "rl": 70.0},
        start_step=2,  # resumed from the checkpoint of step 2
    )
    lines = text.splitlines()
    assert lines[0].startswith("── run summary")
    assert lines[1] == (
        "eval avg@4   first 0.250 (step 2)   best 0.750 (step 4)   last 0.500 (step 6)"
    )
    assert lines[2] == (
        "eval maj@4   first 0.500 (step 2)   best 0.750 (step 6)   last 0.750 (step 6)"
    )
    assert lines[3] == "steps        6 of 6 RL steps (this session: 2 -> 6)"
    assert lines[4] == "time         setup 0:05 | rl 1:10 | total 1:15"
    assert "training 1:02:05" in lines[5] and "evaluation 0:09" in lines[5]
    assert lines[6] == "skipped      2 update(s) with a non-finite gradient norm"
    assert f"checkpoints  {tmp_path / 'checkpoints'}" in lines
