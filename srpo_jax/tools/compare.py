"""Method comparison on equal budgets (issue 10): every method x seed, one table, one plot.

    python -m srpo_jax.tools.compare --config=configs/demo.py \
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
config.model.hf_path with the warm-up switched off.

Compilation is most of a short CPU run's cost, and every seed of a method compiles the same
programs (the seed changes values, not shapes): run_all turns on JAX's persistent
compilation cache in out/jax_cache (unless the caller already chose a cache directory), so
only the first seed of each method pays for XLA compiles.

Outputs: out/table.md (a pure function of the config, methods, seeds and step budget when no
wall-clock budget is given: best avg@k within 1/10, 5/10 and 10/10 of the budget, paper
Table 1 style; the Table 2 ablation block; learning-dynamics statistics; the paper's claims
checked one by one; compare_report.py), out/timing.md (wall-clock: seconds per step, cost
trend, best avg@k per wall-clock budget) and out/curves.png (compare_plot.py).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import pathlib
import shutil
import sys
import time

from srpo_jax import jax_startup

jax_startup.import_jax()  # first: the config modules below import jax

from srpo_jax import config as config_lib  # noqa: E402
from srpo_jax import log_levels  # noqa: E402
from srpo_jax.algo import methods  # noqa: E402
from srpo_jax.tools import compare_plot, compare_report  # noqa: E402

DEFAULT_METHODS = methods.names()  # every entry of the method table
DEFAULT_BUDGET_STEPS = 40  # 5 methods x 3 seeds in under 30 min of an idle 2-core CPU
DEFAULT_SEEDS = 3


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run: methods x seeds on one config with one budget."""

    config_path: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    budget_steps: int
    budget_minutes: float = 0.0  # 0 = step budget only (deterministic table)
    eval_every: int = 0  # 0 = budget_steps // 10 (so each tenth of the budget has an eval)
    overrides: tuple[tuple[str, object], ...] = ()  # (dotted key, value) applied to every run
    share_warmup: bool = True

    def __post_init__(self):
        for m in self.methods:
            if m not in methods.names():
                raise ValueError(
                    f"--methods: unknown method {m!r}; valid: {', '.join(methods.names())}"
                )
        if len(set(self.methods)) != len(self.methods) or not self.methods:
            raise ValueError(f"--methods must name distinct methods, got {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.budget_steps < 1:
            raise ValueError(f"--budget_steps must be >= 1, got {self.budget_steps}")
        if self.budget_minutes < 0:
            raise ValueError(f"--budget_minutes must be >= 0, got {self.budget_minutes}")
        if self.eval_every < 0:
            raise ValueError(f"--eval_every must be >= 0, got {self.eval_every}")

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


def run_config_dict(plan: Plan, method: str, seed: int):
    """The ConfigDict of one run: the file's config for `method`, the plan's budget and seed."""
    path = pathlib.Path(plan.config_path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r} is not a file")
    cd = config_lib.load_config_file(f"{path}:method={method}")
    with cd.unlocked():
        cd.train.seed = seed
        cd.train.num_steps = plan.budget_steps
        cd.train.time_budget_hours = plan.budget_minutes / 60.0
        cd.eval.every_steps = plan.eval_steps
        cd.checkpoint.every_steps = 0  # final checkpoint only: saves time, runs are not resumed
        cd.log.tensorboard = False
        for key, value in plan.overrides:
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
    train from (same initialisation, data, tokenizer and SFT schedule for this seed).
    """
    from srpo_jax import trainer
    from srpo_jax.data import datasets
    from srpo_jax.model import hf_io
    from srpo_jax.sharding import make_mesh

    if warm_dir.exists():
        shutil.rmtree(warm_dir)
    warm_dir.mkdir(parents=True)
    mesh = make_mesh(cfg.mesh)
    tokenizer = trainer._tokenizer(cfg, warm_dir)
    model_cfg = cfg.model.architecture()
    train_set = datasets.PromptSet(
        trainer._examples(cfg, "train"), tokenizer, cfg.data.max_prompt_len
    )
    graphdef, params = trainer._initial_params(cfg, model_cfg, mesh)
    params = trainer._warmup(cfg, graphdef, params, train_set, tokenizer)
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


def run_all(plan: Plan, out: str | pathlib.Path, log=print) -> dict:
    """Trains every (method, seed) of the plan under out/ and writes the reports."""
    from srpo_jax import trainer

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _use_compile_cache(out / "jax_cache", log)
    runs_dir = out / "runs"
    t_start, cpu_start = time.perf_counter(), time.process_time()
    costs: dict[str, tuple[float, float]] = {}  # "<method>_s<seed>" | "warmup_s<seed>"

    def timed(name, fn, *args):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        costs[name] = (time.perf_counter() - t0, time.process_time() - c0)

    for seed in plan.seeds:
        warm_dir = out / "warmup" / f"s{seed}"
        first = config_lib.from_config_dict(run_config_dict(plan, plan.methods[0], seed))
        share = plan.share_warmup and first.warmup.steps > 0
        if share:
            log(f"[compare] seed {seed}: warm-up ({first.warmup.steps} SFT steps)")
            timed(f"warmup_s{seed}", build_warmup, first, warm_dir)
        for method in plan.methods:
            cd = run_config_dict(plan, method, seed)
            if share:
                cd = _warm_started(cd, warm_dir)
            cfg = config_lib.from_config_dict(cd)
            wd = runs_dir / f"{method}_s{seed}"
            if wd.exists():
                shutil.rmtree(wd)  # a fresh comparison: never resume a stale run
            log(f"[compare] {method} seed {seed}: {plan.budget_steps} steps -> {wd}")
            timed(f"{method}_s{seed}", trainer.run, cfg, wd)
            rec = compare_report.load_run(wd)
            last = max(compare_report.series(rec, "time/step_s"), default=0)
            if last < plan.budget_steps and not plan.budget_minutes:
                # The trainer exits cleanly on SIGTERM: do not report a truncated run.
                raise RuntimeError(
                    f"{wd}: stopped at step {last} of {plan.budget_steps} (preempted?); "
                    "the comparison is incomplete"
                )
    total_s = time.perf_counter() - t_start
    totals = {"total": (total_s, time.process_time() - cpu_start)}
    (out / "costs.json").write_text(json.dumps({**costs, **totals}, indent=1, sort_keys=True))
    return write_reports(plan, out, log)


def write_reports(plan: Plan, out: str | pathlib.Path, log=print) -> dict:
    """table.md, timing.md and curves.png from the runs (and costs.json) under out/."""
    out = pathlib.Path(out)
    records = {
        m: {s: compare_report.load_run(out / "runs" / f"{m}_s{s}") for s in plan.seeds}
        for m in plan.methods
    }
    cost_file = out / "costs.json"
    saved = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
    costs = {k: tuple(v) for k, v in saved.items()}
    total_s, cpu_s = costs.pop("total", (0.0, 0.0))
    report = compare_report.Report(
        plan=plan, records=records, costs=costs, total_s=total_s, cpu_s=cpu_s
    )
    (out / "table.md").write_text(compare_report.table_md(report))
    (out / "timing.md").write_text(compare_report.timing_md(report))
    compare_plot.plot(report, out / "curves.png")
    log(f"[compare] done in {total_s / 60:.1f} min: {out / 'table.md'}, {out / 'curves.png'}")
    return {"table": out / "table.md", "timing": out / "timing.md", "curves": out / "curves.png"}


def _parse_override(text: str) -> tuple[str, object]:
    """--config.section.key=value (main's and plan's override syntax) -> (dotted key, value)."""
    key, sep, raw = text[len("--config.") :].partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} must look like --config.section.key=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string, e.g. --config.train.fused_implementation=xla
    return key, value


def parse_args(argv: list[str]) -> tuple[Plan, str, bool, int]:
    """(plan, out directory, report_only, verbosity) from the command line."""
    p = argparse.ArgumentParser(
        prog="python -m srpo_jax.tools.compare", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", default="configs/demo.py", help="config file with get_config(arg)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="number of seeds")
    p.add_argument("--first_seed", type=int, default=0, help="seeds are first_seed, +1, ...")
    p.add_argument("--budget_steps", type=int, default=DEFAULT_BUDGET_STEPS)
    p.add_argument("--budget_minutes", type=float, default=0.0, help="per run; 0 = none")
    p.add_argument("--eval_every", type=int, default=0, help="0 = budget_steps // 10")
    p.add_argument("--no_share_warmup", action="store_true", help="warm up inside every run")
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
        )
    except ValueError as e:
        p.error(str(e))
    return plan, a.out, a.report_only, a.verbosity


def main(argv: list[str] | None = None) -> None:
    plan, out, report_only, verbosity = parse_args(sys.argv[1:] if argv is None else argv)
    log_levels.apply(verbosity)  # the runs' library INFO chatter stays off the console
    if report_only:
        write_reports(plan, out)
    else:
        run_all(plan, out)


if __name__ == "__main__":
    main()
