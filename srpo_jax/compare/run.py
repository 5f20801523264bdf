"""Method comparison on equal budgets: every method x seed, one table, one plot.

    python -m srpo_jax.compare.run --config=configs/demo.py \
        --methods=grpo,sdpo,srpo,srpo_no_dw,advantage_mix --seeds=3 --budget_steps=40 --out=compare

Each (method, seed) trains with `trainer.run` in out/runs/<method>_s<seed>, from the config
file's own `get_config("method=<m>")` so the method-dependent defaults (learning rate,
mini-batch) are resolved for that method; the seed sets train.seed only, so the data and the
prompt order are identical across methods and seeds. Every run gets the same step budget
(train.num_steps, hence the same prompts and rollouts per step) and evaluates at the same
steps; --budget_minutes adds an equal wall-clock budget per run (training time, evaluation
excluded), which makes the table timing-dependent.

The supervised warm-up (config.warmup.steps) depends on the seed, not the method,
so it runs once per seed: its params are saved as an fp32 HF checkpoint (bit-exact round
trip) under out/warmup/s<seed> and every method of that seed starts from it through
config.model.hf_path with the warm-up switched off. On the synthetic task the copy probe
(srpo_jax/trainer/probe.py) runs on each seed's warm-up and is printed and saved
(out/warmup/s<seed>/probe.json): it shows whether the self-teacher knows more than the
student before any method is compared.

An arm of --methods may carry config overrides of its own (`srpo@rollout.overlap=1`,
compare/arms.py): they apply after the plan's --config.key=value overrides, to that arm's
runs only, and the label names its run directories and table rows.

Learning rates: --sweep_lrs=1e-3,3e-3 picks each method's rate on the training split only
(`sweep`: --sweep_steps steps per rate from the warm-up of a seed that is not compared,
highest mean training accuracy over the second half wins; out/sweep.json).

Compilation is most of a short CPU run's cost, and every seed of a method compiles the same
programs (the seed changes values, not shapes): run_all turns on JAX's persistent
compilation cache in out/jax_cache (unless the caller already chose a cache directory), so
only the first seed of each method pays for XLA compiles. Finished runs are kept (each has a
cost.json), so a comparison resumes where it stopped, and after the sweep, processes given
disjoint seeds (--first_seed, --seeds) can share one out/.

Outputs: out/table.md and out/curves.png (compare_ci.py: the copy probe per seed, the swept
rates, test avg@k at each evaluation with 95% bootstrap intervals over seeds and questions,
the learning dynamics, and the paper's claims checked with those intervals),
out/table_minmax.md (compare_report.py: best avg@k within 1/10, 5/10 and 10/10 of the
budget, paper Table 1 style, with seed ranges; the Table 2 ablation block), out/timing.md
(wall-clock: seconds per step, cost trend, best avg@k per wall-clock budget),
out/curves_minmax.png and out/costs.json (wall and CPU seconds of every run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import time

from srpo_jax import cli, jax_startup, log_levels
from srpo_jax import config as config_lib
from srpo_jax.algo import methods
from srpo_jax.compare import arms
from srpo_jax.compare import intervals as compare_ci
from srpo_jax.compare import plot as compare_plot
from srpo_jax.compare import report as compare_report
from srpo_jax.trainer import metrics as metrics_lib

DEFAULT_METHODS = methods.names()  # every entry of the method table
DEFAULT_BUDGET_STEPS = 40  # 5 methods x 3 seeds in under 30 min of an idle 2-core CPU
DEFAULT_SEEDS = 3
COST, PROBE, SWEEP = "cost.json", "probe.json", "sweep.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run: methods x seeds on one config with one budget."""

    config_path: str
    methods: tuple[str, ...]  # arm labels: a method, optionally @section.key=value (arms.py)
    seeds: tuple[int, ...]
    budget_steps: int
    budget_minutes: float = 0.0  # 0 = step budget only (deterministic table)
    eval_every: int = 0  # 0 = budget_steps // 10 (so each tenth of the budget has an eval)
    overrides: tuple[tuple[str, object], ...] = ()  # (dotted key, value) applied to every run
    share_warmup: bool = True
    sweep_lrs: tuple[float, ...] = ()  # () = the config's rate; else chosen by `sweep`
    sweep_steps: int = 30
    sweep_seed: int = 100  # the sweep's warm-up and RL seed: not a comparison seed

    def __post_init__(self):
        for label in self.methods:
            m = arms.parse(label).method
            if m not in methods.names():
                raise ValueError(
                    f"--methods: unknown method {m!r}; valid: {', '.join(methods.names())}"
                )
        if len(set(self.methods)) != len(self.methods) or not self.methods:
            raise ValueError(f"--methods must name distinct arms, got {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.budget_steps < 1:
            raise ValueError(f"--budget_steps must be >= 1, got {self.budget_steps}")
        if self.budget_minutes < 0:
            raise ValueError(f"--budget_minutes must be >= 0, got {self.budget_minutes}")
        if self.eval_every < 0:
            raise ValueError(f"--eval_every must be >= 0, got {self.eval_every}")
        if any(lr <= 0 for lr in self.sweep_lrs) or self.sweep_steps < 2:
            raise ValueError(
                f"--sweep_lrs must be > 0 and --sweep_steps >= 2, got {self.sweep_lrs} "
                f"and {self.sweep_steps}"
            )
        if self.sweep_seed in self.seeds:
            raise ValueError(f"the sweep seed {self.sweep_seed} must not be a comparison seed")

    @property
    def eval_steps(self) -> int:
        return self.eval_every or max(1, self.budget_steps // 10)


def _set_dotted(cd, key: str, value) -> None:
    *path, leaf = key.split(".")
    node = cd
    for part in path:
        if part not in node:
            raise ValueError(f"override {key!r}: config has no section {part!r}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"override {key!r}: config has no key {leaf!r} under {'.'.join(path)}")
    node[leaf] = value


def run_config_dict(plan: Plan, label: str, seed: int):
    """The ConfigDict of one run: the file's config for the arm's method, the plan's budget,
    seed and overrides, then the arm's own overrides (the arm is the more specific)."""
    path = pathlib.Path(plan.config_path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r} is not a file")
    arm = arms.parse(label)
    cd = config_lib.load_config_file(f"{path}:method={arm.method}")
    with cd.unlocked():
        cd.train.seed = seed
        cd.train.num_steps = plan.budget_steps
        cd.train.time_budget_hours = plan.budget_minutes / 60.0
        cd.eval.every_steps = plan.eval_steps
        cd.checkpoint.every_steps = 0  # final checkpoint only: saves time, runs are not resumed
        cd.log.tensorboard = False
        for key, value in plan.overrides + arm.overrides:
            _set_dotted(cd, key, value)
    return cd


def _warm_started(cd, warm_dir: pathlib.Path):
    """Same run, but starting from the shared warm-up checkpoint instead of warming up."""
    with cd.unlocked():
        if not cd.tokenizer.path:  # the tiny tokenizer was built beside the warm-up params
            cd.tokenizer.path = str(warm_dir / "tokenizer")
        cd.model.hf_path = str(warm_dir)
        cd.model.preset = ""  # architecture from the saved config.json (overrides baked in)
        cd.warmup.steps = 0
    return cd


def build_warmup(cfg: config_lib.Config, warm_dir: pathlib.Path) -> None:
    """Runs the trainer's own warm-up once and saves the result as an fp32 HF checkpoint.

    Uses the trainer's setup helpers so the params are exactly those `trainer.run` would
    train from (same initialisation, data, tokenizer and SFT schedule for this seed). On the
    synthetic task it also runs the copy probe on the test split (warm_dir/probe.json).
    """
    from srpo_jax.data import datasets
    from srpo_jax.model import hf_io
    from srpo_jax.sharding import make_mesh
    from srpo_jax.trainer import setup as trainer

    if warm_dir.exists():
        shutil.rmtree(warm_dir)
    warm_dir.mkdir(parents=True)
    mesh = make_mesh(cfg.mesh)
    tokenizer = trainer.load_run_tokenizer(cfg.tokenizer.path, warm_dir)
    model_cfg = cfg.model.architecture()
    train_set = datasets.PromptSet(
        trainer.split_examples(cfg, "train"), tokenizer, cfg.data.max_prompt_len
    )
    graphdef, params = trainer.initial_params(cfg, model_cfg, mesh)
    params, probed = trainer.run_warmup(cfg, graphdef, params, train_set, tokenizer)
    if probed is not None:  # the copy probe (synthetic task), printed by the warm-up
        (warm_dir / PROBE).write_text(json.dumps(probed.to_dict(), indent=1))
    # dtype None keeps fp32: load_hf of this directory gives back the same bits.
    hf_io.save_hf_params(params, model_cfg, warm_dir, dtype=None)


def _use_compile_cache(cache_dir: pathlib.Path, log=print) -> None:
    """Persistent XLA compilation cache shared by the runs (and by later comparisons)."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the caller's choice (flag or environment) wins
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    # Cache even sub-second compiles: a run has dozens of them (sampler buckets, eval).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    log(f"[compare] compilation cache: {cache_dir}")


def _timed(wd: pathlib.Path, fn, *args) -> None:
    """fn(*args), then its wall and CPU seconds to wd/cost.json (runs in parallel processes
    under one out/ each write their own; write_reports adds them up)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    cost = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    (wd / COST).write_text(json.dumps(cost))


def _complete(wd: pathlib.Path, steps: int) -> bool:
    if not (wd / COST).is_file():
        return False
    records = metrics_lib.read_metrics(wd / metrics_lib.FILENAME)
    return max(compare_report.series(records, "time/step_s"), default=0) >= steps


def _train(plan: Plan, method: str, seed: int, wd: pathlib.Path, warm_dir, lr, log) -> None:
    """One trainer.run of `method` (from the seed's shared warm-up when there is one)."""
    from srpo_jax.trainer import setup as trainer

    cd = run_config_dict(plan, method, seed)
    if warm_dir is not None:
        cd = _warm_started(cd, warm_dir)
    if lr is not None:
        with cd.unlocked():
            cd.optim.lr = lr
    if wd.exists():
        shutil.rmtree(wd)  # never resume a stale run
    wd.mkdir(parents=True)
    log(f"[compare] {method} seed {seed} lr {cd.optim.lr:g}: {plan.budget_steps} steps -> {wd}")
    _timed(wd, trainer.run, config_lib.from_config_dict(cd), wd)
    if not _complete(wd, plan.budget_steps) and not plan.budget_minutes:
        # The trainer exits cleanly on SIGTERM: do not report a truncated run.
        raise RuntimeError(f"{wd}: stopped before step {plan.budget_steps} (preempted?)")


def _warm_dir(plan: Plan, out: pathlib.Path, seed: int, log) -> pathlib.Path | None:
    """The seed's shared warm-up checkpoint (built unless already there), or None."""
    first = config_lib.from_config_dict(run_config_dict(plan, plan.methods[0], seed))
    if not (plan.share_warmup and first.warmup.steps > 0):
        return None
    warm_dir = out / "warmup" / f"s{seed}"
    if not (warm_dir / COST).is_file():
        log(f"[compare] seed {seed}: warm-up ({first.warmup.steps} SFT steps)")
        staging = out / "warmup" / f"s{seed}.cost"
        staging.mkdir(parents=True, exist_ok=True)
        _timed(staging, build_warmup, first, warm_dir)
        shutil.move(staging / COST, warm_dir / COST)
        staging.rmdir()
    return warm_dir


def sweep(plan: Plan, out: pathlib.Path, log=print) -> dict[str, float]:
    """Per-method learning rate chosen on the training split only (out/sweep.json).

    Each method trains plan.sweep_steps steps at each rate of plan.sweep_lrs from the warm-up
    of seed plan.sweep_seed (not a comparison seed) without evaluation; the rate with the
    highest mean training accuracy over the sweep's second half wins (ties: the smaller).
    """
    no_eval = (("eval.every_steps", 0),)  # the sweep never sees the test split
    swept = dataclasses.replace(
        plan, budget_steps=plan.sweep_steps, overrides=plan.overrides + no_eval
    )
    warm_dir = _warm_dir(swept, out, plan.sweep_seed, log)
    table, chosen = {}, {}
    for method in plan.methods:
        table[method] = {}
        for lr in plan.sweep_lrs:
            wd = out / "sweep" / f"{method}_lr{lr:g}"
            if not _complete(wd, plan.sweep_steps):
                _train(swept, method, plan.sweep_seed, wd, warm_dir, lr, log)
            records = metrics_lib.read_metrics(wd / metrics_lib.FILENAME)
            acc = compare_report.series(records, "reward/accuracy")
            late = [v for step, v in acc.items() if step > plan.sweep_steps // 2]
            table[method][f"{lr:g}"] = sum(late) / len(late)
        best = max(table[method].values())
        chosen[method] = min(lr for lr in plan.sweep_lrs if table[method][f"{lr:g}"] == best)
        log(f"[compare] sweep {method}: {table[method]} -> lr {chosen[method]:g}")
    info = {"train_accuracy": table, "chosen": chosen, "steps": plan.sweep_steps}
    (out / SWEEP).write_text(json.dumps(info, indent=1))
    return chosen


def run_all(plan: Plan, out: str | pathlib.Path, log=print) -> dict:
    """Trains every (method, seed) of the plan under out/ and writes the reports.

    With plan.sweep_lrs the learning rates come from `sweep` (out/sweep.json, reused when it
    exists). Finished runs (a cost.json and every step) are kept, so a comparison can be
    resumed, or split over processes by seed after the sweep has run.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _use_compile_cache(out / "jax_cache", log)
    lrs: dict[str, float] = {}
    if plan.sweep_lrs:
        saved = out / SWEEP
        lrs = json.loads(saved.read_text())["chosen"] if saved.is_file() else sweep(plan, out, log)
    for seed in plan.seeds:
        warm_dir = _warm_dir(plan, out, seed, log)
        for method in plan.methods:
            wd = out / "runs" / f"{method}_s{seed}"
            if not _complete(wd, plan.budget_steps):
                _train(plan, method, seed, wd, warm_dir, lrs.get(method), log)
    return write_reports(plan, out, log)


def _costs(out: pathlib.Path) -> dict[str, tuple[float, float]]:
    """name -> (wall s, cpu s) of every warm-up, sweep run and run under out/."""
    costs = {}
    for f in sorted(out.glob(f"*/*/{COST}")):
        c = json.loads(f.read_text())
        name = (
            f.parent.name
            if f.parent.parent.name == "runs"
            else f"{f.parent.parent.name}_{f.parent.name}"
        )
        costs[name] = (c["wall_s"], c["cpu_s"])
    return costs


def write_reports(plan: Plan, out: str | pathlib.Path, log=print) -> dict:
    """From the runs under out/: table.md and curves.png (95% bootstrap intervals, the
    paper's claims; compare_ci.py), table_minmax.md, timing.md and curves_minmax.png
    (compare_report.py, compare_plot.py) and costs.json (every run's wall and CPU seconds)."""
    out = pathlib.Path(out)
    records = {
        m: {s: compare_report.load_run(out / "runs" / f"{m}_s{s}") for s in plan.seeds}
        for m in plan.methods
    }
    costs = _costs(out)
    total_s, cpu_s = (sum(c[i] for c in costs.values()) for i in (0, 1))
    (out / "costs.json").write_text(
        json.dumps({**costs, "total": (total_s, cpu_s)}, indent=1, sort_keys=True)
    )
    report = compare_report.Report(
        plan=plan, records=records, costs=costs, total_s=total_s, cpu_s=cpu_s
    )
    (out / "table_minmax.md").write_text(compare_report.table_md(report))
    (out / "timing.md").write_text(compare_report.timing_md(report))
    compare_plot.plot(report, out / "curves_minmax.png")
    compare_ci.write(plan, out, records)
    log(f"[compare] {cpu_s / 60:.1f} CPU-min in all: {out / 'table.md'}, {out / 'curves.png'}")
    return {"table": out / "table.md", "timing": out / "timing.md", "curves": out / "curves.png"}


def _parse_override(text: str) -> tuple[str, object]:
    """--config.section.key=value (main's and plan's override syntax) -> (dotted key, value)."""
    key, sep, raw = text[len("--config.") :].partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} must look like --config.section.key=value")
    return key, arms.parse_value(raw)  # a bare string too, e.g. ...fused_implementation=xla


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one `error:` line and exit 2, as in main and plan."""

    def error(self, message: str):
        cli.fail(message)


def check_configs(plan: Plan) -> None:
    """Builds and validates every arm's run config before the first run trains, so a bad
    config file or override (the plan's or an arm's) fails at once (ConfigError, OSError,
    ValueError)."""
    for method in plan.methods:
        config_lib.from_config_dict(run_config_dict(plan, method, plan.seeds[0]))


def parse_args(argv: list[str]) -> tuple[Plan, str, bool, int]:
    """(plan, out directory, report_only, verbosity) from the command line."""
    p = _Parser(prog="python -m srpo_jax.compare.run", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.py", help="config file with get_config(arg)")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="arms: method names, each optionally @section.key=value, e.g. srpo@rollout.overlap=1",
    )
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="number of seeds")
    p.add_argument("--first_seed", type=int, default=0, help="seeds are first_seed, +1, ...")
    p.add_argument("--budget_steps", type=int, default=DEFAULT_BUDGET_STEPS)
    p.add_argument("--budget_minutes", type=float, default=0.0, help="per run; 0 = none")
    p.add_argument("--eval_every", type=int, default=0, help="0 = budget_steps // 10")
    p.add_argument("--no_share_warmup", action="store_true", help="warm up inside every run")
    p.add_argument(
        "--sweep_lrs", default="", help="e.g. 1e-3,3e-3: each method's rate from a sweep"
    )
    p.add_argument("--sweep_steps", type=int, default=30, help="steps per sweep run")
    p.add_argument("--out", default="compare")
    p.add_argument(
        "--report_only", action="store_true", help="rewrite the reports from out/runs, no training"
    )
    p.add_argument(
        "--verbosity",
        type=int,
        default=0,
        help="as main's: 0 hides library INFO logs (orbax, jax), 1 shows them",
    )
    a, rest = p.parse_known_args(argv)
    try:  # config overrides, as main and plan take them: --config.section.key=value
        bad = [r for r in rest if not r.startswith("--config.")]
        if bad:
            p.error(f"unrecognized arguments: {' '.join(bad)}")
        overrides = [_parse_override(r) for r in rest]
    except ValueError as e:
        p.error(str(e))
    if a.seeds < 1:
        p.error(f"--seeds must be >= 1, got {a.seeds}")
    try:
        plan = Plan(
            config_path=a.config,
            methods=tuple(m.strip() for m in a.methods.split(",") if m.strip()),
            seeds=tuple(range(a.first_seed, a.first_seed + a.seeds)),
            budget_steps=a.budget_steps,
            budget_minutes=a.budget_minutes,
            eval_every=a.eval_every,
            overrides=tuple(overrides),
            share_warmup=not a.no_share_warmup,
            sweep_lrs=tuple(float(x) for x in a.sweep_lrs.split(",") if x.strip()),
            sweep_steps=a.sweep_steps,
        )
    except ValueError as e:
        p.error(str(e))
    return plan, a.out, a.report_only, a.verbosity


def main(argv: list[str] | None = None) -> None:
    plan, out, report_only, verbosity = parse_args(sys.argv[1:] if argv is None else argv)
    log_levels.apply(verbosity)  # the runs' library INFO chatter stays off the console
    if report_only:
        write_reports(plan, out)  # reads the runs' files: no JAX
    else:
        try:
            check_configs(plan)
        except (config_lib.ConfigError, OSError, ValueError, TypeError, SyntaxError) as e:
            cli.fail(cli.last_error_line(str(e)))
        jax_startup.import_jax()  # quietly, with the platforms this host has
        jax_startup.device_count()  # the first backend start, probe lines filtered
        run_all(plan, out)


if __name__ == "__main__":
    main()
