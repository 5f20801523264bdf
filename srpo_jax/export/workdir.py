"""A training run's directory read back: its config, architecture, tokenizer and checkpoints.

What `srpo_jax.main` leaves in a workdir (trainer/setup.py): config.json (the resolved
config), model_files/ (model.hf_path's config.json and tokenizer, weights excepted) or, for
a run without hf_path, tokenizer/ (the demo's tiny tokenizer), metrics.jsonl and
checkpoints/<step>. Everything here only reads it, so an export or an evaluation never
changes the run, and it needs neither the HF directory the run started from nor the mesh
it trained on: the checkpoint is restored through the trainer's own CheckpointManager into
learner.abstract_state laid out on the caller's mesh (one CPU device for an export).

Bad input (no such run, no checkpoint, a step that was never checkpointed) raises
RunDirError with one line naming it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from srpo_jax import config as config_lib
from srpo_jax.model.config import Qwen3Config

CHECKPOINTS = "checkpoints"
STEP_CHOICES = "latest, best or a step number"
WHICH = ("policy", "teacher")  # the trained student, or its EMA self-teacher
_TREE = {"policy": "params", "teacher": "teacher"}  # the TrainState field of each


class RunDirError(ValueError):
    """The workdir, or the step asked of it, cannot be read back; names what is wrong."""


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A training run's workdir, checked to be one (it holds the run's config.json)."""

    path: pathlib.Path
    cfg: config_lib.Config

    @classmethod
    def open(cls, path: str | pathlib.Path) -> RunDir:
        path = pathlib.Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise RunDirError(f"--workdir={path} is not a training run's workdir: no config.json")
        try:
            cfg = config_lib.from_config_dict(json.loads(config_file.read_text()))
        except (ValueError, config_lib.ConfigError) as e:
            raise RunDirError(f"{config_file} cannot be read as a run config: {e}") from None
        return cls(path, cfg)

    def model_dir(self) -> pathlib.Path | None:
        """Where the run's config.json (architecture) and HF tokenizer are read from: the
        run's model_files copy, else model.hf_path; None for a run without hf_path."""
        from srpo_jax.trainer.setup import MODEL_FILES

        hf_path = self.cfg.model.hf_path
        if not hf_path:
            return None
        copy = self.path / MODEL_FILES
        return copy if (copy / "config.json").is_file() else pathlib.Path(hf_path)

    def architecture(self) -> Qwen3Config:
        """The Qwen3Config the run trained (config.json + the run's overrides and dtype)."""
        model_dir = self.model_dir()
        model = self.cfg.model
        if model_dir is not None:
            model = dataclasses.replace(model, hf_path=str(model_dir))
        try:
            return model.architecture()
        except FileNotFoundError as e:
            raise RunDirError(
                f"{self.path}: the run's model config is gone ({e}); neither "
                f"{self.path / 'model_files'} nor model.hf_path={self.cfg.model.hf_path} holds it"
            ) from None

    def tokenizer_dir(self) -> pathlib.Path:
        """The run's tokenizer files (trainer/setup.py `model_and_tokenizer` resolves the same
        way): tokenizer.path, model.hf_path's (read from model_files), or the demo's."""
        path, hf_path = self.cfg.tokenizer.path, self.cfg.model.hf_path
        if not path:
            return self.model_dir() if hf_path else self.path / "tokenizer"
        if path == hf_path:
            return self.model_dir()
        return pathlib.Path(path)

    def tokenizer(self):
        """The run's tokenizer, loaded as the run loaded it (data/tokenizer.py)."""
        from srpo_jax.data import tokenizer as tok_lib

        try:
            return tok_lib.load_tokenizer(self.tokenizer_dir())
        except FileNotFoundError as e:
            raise RunDirError(f"{self.path}: the run's tokenizer cannot be read: {e}") from None

    def checkpoint_steps(self) -> list[int]:
        directory = self.path / CHECKPOINTS
        if not directory.is_dir():
            return []
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())

    def choose_step(self, spec: str) -> int:
        """The checkpointed step that `spec` (latest | best | N) names; RunDirError else."""
        steps = self.checkpoint_steps()
        if not steps:
            raise RunDirError(
                f"{self.path} has no checkpoint (nothing in {self.path / CHECKPOINTS})"
            )
        if spec == "latest":
            return steps[-1]
        if spec == "best":
            step, score = self.best_eval_step()
            what = f"the best eval avg@k ({score:.4f}) is at step {step}"
        else:
            try:
                step = int(spec)
            except ValueError:
                raise RunDirError(f"--step={spec}: expected {STEP_CHOICES}") from None
            what = f"--step={spec}"
        if step not in steps:
            raise RunDirError(
                f"{what}, which has no checkpoint in {self.path / CHECKPOINTS}; "
                f"the nearest checkpointed steps: {_nearest(steps, step)}"
            )
        return step

    def best_eval_step(self) -> tuple[int, float]:
        """(step, avg@k) of the highest eval avg@k in metrics.jsonl; a tie goes to the later
        step (as good, and trained longer)."""
        from srpo_jax.trainer.metrics import read_metrics

        evals = [
            (r["eval/avg_at_k"], r["step"])
            for r in read_metrics(self.path / "metrics.jsonl")
            if "eval/avg_at_k" in r
        ]
        if not evals:
            raise RunDirError(
                f"--step=best: {self.path / 'metrics.jsonl'} holds no evaluation (eval/avg_at_k)"
            )
        score, step = max(evals)
        return int(step), float(score)

    def restore_tree(self, step: int, which: str, mesh) -> Any:
        """The policy's (or the EMA teacher's) parameters at checkpoint `step`, an nnx.State
        laid out on `mesh` as the learner lays it out; nothing else of the state is read."""
        from srpo_jax.learner import train_step as learner
        from srpo_jax.trainer.checkpoint import CheckpointManager, CheckpointMismatchError

        field = _TREE[which]
        settings = learner.StepSettings.from_config(self.cfg)
        _, abstract = learner.abstract_state(self.architecture(), settings, mesh)
        ckpt = CheckpointManager(self.path / CHECKPOINTS, async_save=False, read_only=True)
        try:
            restored = ckpt.restore(abstract, step=step, only=(field,))
        except CheckpointMismatchError as e:  # config.json and the checkpoint disagree
            raise RunDirError(str(e)) from None
        finally:
            ckpt.close()
        return getattr(restored.state, field)


def check_out_dir(out: pathlib.Path, force: bool) -> None:
    """An output folder must be new, an empty directory, or (with force) one to replace."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out={out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunDirError(f"--out={out} exists and is not empty (pass --force to replace it)")


def _nearest(steps: list[int], step: int) -> str:
    below = [s for s in steps if s < step]
    above = [s for s in steps if s > step]
    near = ([below[-1]] if below else []) + ([above[0]] if above else [])
    return " and ".join(str(s) for s in near)
