"""Reports of a method comparison (srpo_jax.compare.run): table.md, timing.md, curves.png.

table.md is computed from step-indexed metrics only (evaluation accuracy, routed fraction,
response length, teacher entropy), so it is a pure function of the comparison's config,
methods, seeds and step budget; everything measured in seconds goes to timing.md. Budgets
follow the paper's Table 1 (best avg@k within 1 h, 5 h and 10 h of training) scaled to the
run: the best evaluation within the first 1/10, 5/10 and 10/10 of the step budget, step 0
(the shared starting point) excluded and reported on its own.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from srpo_jax.trainer import metrics as metrics_lib

FRACTIONS = (0.1, 0.5, 1.0)  # the paper's 1 h / 5 h / 10 h out of 10 h
ACC = "eval/avg_at_k"
ELAPSED = "time/train_elapsed_s"
ENTROPY = "teacher/entropy_mean"
# Earlier trainer versions also (or only) logged the teacher entropy under this name.
ENTROPY_ALIASES = ("loss/teacher_entropy_mean",)
ABLATION = ("srpo", "srpo_no_dw", "advantage_mix")


@dataclasses.dataclass
class Report:
    plan: Any  # compare.Plan
    records: dict[str, dict[int, list[dict]]]  # method -> seed -> metrics.jsonl records
    # "<method>_s<seed>" or "warmup_s<seed>" -> (wall-clock s, process CPU s). CPU time (all
    # threads) is the load-independent measure: on a shared machine wall-clock stretches.
    costs: dict[str, tuple[float, float]]
    total_s: float  # wall-clock of the whole comparison
    cpu_s: float = 0.0


def load_run(workdir: str | pathlib.Path) -> list[dict]:
    records = metrics_lib.read_metrics(pathlib.Path(workdir) / metrics_lib.FILENAME)
    for r in records:
        for alias in ENTROPY_ALIASES:
            if alias in r and ENTROPY not in r:
                r[ENTROPY] = r[alias]
        if r.get("sdpo/tokens") == 0:
            r.pop(ENTROPY, None)  # nothing routed: the logged 0 is a placeholder, not a value
    if not any(ACC in r for r in records):
        raise RuntimeError(f"{workdir}: metrics.jsonl has no evaluation ({ACC}) records")
    return records


def series(records: Sequence[dict], key: str) -> dict[int, float]:
    """step -> value for the finite values of `key` (the last record of a step wins)."""
    out = {}
    for r in records:
        v = r.get(key)
        if v is not None and math.isfinite(v):
            out[int(r["step"])] = float(v)
    return out


def budget_steps(total: int) -> list[int]:
    return [max(1, round(total * f)) for f in FRACTIONS]


def best_within(records: Sequence[dict], max_step: int) -> float | None:
    accs = [v for s, v in series(records, ACC).items() if 0 < s <= max_step]
    return max(accs) if accs else None


def _window(records: Sequence[dict], key: str, part: str) -> float | None:
    """Mean of a per-step metric over the first or last third of the training steps."""
    s = series(records, key)
    steps = sorted(k for k in s if k > 0)
    if not steps:
        return None
    n = max(1, len(steps) // 3)
    chosen = steps[:n] if part == "early" else steps[-n:]
    return float(np.mean([s[k] for k in chosen]))


def _stat(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(np.mean(vals)), float(min(vals)), float(max(vals))


def _cell(values: Sequence[float | None], scale: float = 100.0, digits: int = 1) -> str:
    st = _stat(values)
    if st is None:
        return "-"
    mean, lo, hi = (scale * x for x in st)
    if len([v for v in values if v is not None]) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _per_seed(report: Report, method: str, fn) -> list:
    return [fn(recs) for _, recs in sorted(report.records[method].items())]


def _mean(report: Report, method: str, fn) -> float | None:
    st = _stat(_per_seed(report, method, fn))
    return None if st is None else st[0]


def _budget_fns(report: Report):
    steps = budget_steps(report.plan.budget_steps)
    fns = [lambda r, b=b: best_within(r, b) for b in steps]
    return steps, fns


def _accuracy_table(report: Report, methods: Sequence[str]) -> list[str]:
    steps, fns = _budget_fns(report)
    heads = [
        f"best <= {b} steps ({round(10 * f)}/10)" for b, f in zip(steps, FRACTIONS, strict=True)
    ]
    lines = [
        "| method | step 0 | " + " | ".join(heads) + " | final |",
        "|---|" + "---|" * (len(heads) + 2),
    ]
    for m in methods:
        init = _cell(_per_seed(report, m, lambda r: series(r, ACC).get(0)))
        cells = [_cell(_per_seed(report, m, fn)) for fn in fns]
        last = _cell(_per_seed(report, m, lambda r: series(r, ACC)[max(series(r, ACC))]))
        lines.append(f"| {m} | {init} | " + " | ".join(cells) + f" | {last} |")
    return lines


def _dynamics_table(report: Report, methods: Sequence[str]) -> list[str]:
    cols = (
        ("train accuracy", "reward/accuracy", 100.0, 1),
        ("routed to SDPO (%)", "route/sdpo_frac", 100.0, 1),
        ("teacher entropy (nats)", ENTROPY, 1.0, 3),
        ("response length (tokens)", "rollout/response_len_mean", 1.0, 1),
    )
    lines = [
        "| method | " + " | ".join(f"{name}, early -> late" for name, *_ in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in methods:
        cells = []
        for _, key, scale, digits in cols:
            early = _cell(
                _per_seed(report, m, lambda r, k=key: _window(r, k, "early")), scale, digits
            )
            late = _cell(
                _per_seed(report, m, lambda r, k=key: _window(r, k, "late")), scale, digits
            )
            cells.append(f"{early} -> {late}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _pooled_corr(report: Report, method: str, key_a: str, key_b: str) -> float | None:
    a, b = [], []
    for recs in report.records[method].values():
        sa, sb = series(recs, key_a), series(recs, key_b)
        for step in sorted(set(sa) & set(sb)):
            a.append(sa[step])
            b.append(sb[step])
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _fmt(x: float | None, scale: float = 100.0, *, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{scale * x:+.1f}" if signed else f"{scale * x:.1f}"


class _Summary:
    """Mean-over-seeds numbers the claims are stated in (None where a method is missing)."""

    def __init__(self, report: Report):
        self.report = report
        _, self._fns = _budget_fns(report)

    def mean(self, method: str, fn) -> float | None:
        return _mean(self.report, method, fn) if method in self.report.records else None

    def best(self, method: str, i: int) -> float | None:
        return self.mean(method, self._fns[i])

    def init(self, method: str) -> float | None:
        return self.mean(method, lambda r: series(r, ACC).get(0))

    def final(self, method: str) -> float | None:
        return self.mean(method, lambda r: series(r, ACC)[max(series(r, ACC))])

    def lowest_seed_best(self, method: str, i: int) -> float | None:
        if method not in self.report.records:
            return None
        st = _stat(_per_seed(self.report, method, self._fns[i]))
        return None if st is None else st[1]

    def window(self, method: str, key: str, part: str) -> float | None:
        return self.mean(method, lambda r: _window(r, key, part))

    def overall(self, method: str, key: str) -> float | None:
        return self.mean(
            method, lambda r: float(np.mean(list(series(r, key).values()) or [np.nan]))
        )


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _verdict(*needed: float | None, test) -> str:
    if any(x is None for x in needed):
        return "n/a"
    return "yes" if test() else "no"


def claims(report: Report) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the paper's learning-dynamics claims checkable here.

    Every number is a mean over seeds; budgets i = 0, 1, 2 are 1/10, 5/10, 10/10 of the
    steps. The thresholds are stated in each claim's text.
    """
    s = _Summary(report)
    g = [s.best("grpo", i) for i in range(3)]
    d = [s.best("sdpo", i) for i in range(3)]
    r = [s.best("srpo", i) for i in range(3)]
    nd = [s.best("srpo_no_dw", i) for i in range(3)]
    d_gain, g_gain = _sub(d[0], s.init("sdpo")), _sub(g[0], s.init("grpo"))
    d_late, g_late = _sub(d[2], d[1]), _sub(g[2], g[1])
    d_final = s.final("sdpo")
    d_low = s.lowest_seed_best("sdpo", 0)
    dw_early, dw_late = _sub(r[0], nd[0]), _sub(r[2], nd[2])
    corr = _pooled_corr(report, "srpo", "reward/accuracy", "route/sdpo_frac")
    routed = [s.window("srpo", "route/sdpo_frac", part) for part in ("early", "late")]
    lengths = [s.overall(m, "rollout/response_len_mean") for m in ("srpo", "grpo", "sdpo")]
    corr_text = "n/a" if corr is None else f"{corr:+.2f}"
    return [
        (
            "SDPO improves fastest early (gains over step 0 within 1/10 of the budget, and "
            "more than GRPO)",
            _verdict(d_gain, g_gain, test=lambda: d_gain > max(g_gain, 0.0)),
            f"SDPO {_fmt(d_gain, signed=True)} vs GRPO {_fmt(g_gain, signed=True)} points",
        ),
        (
            "SDPO stalls (gains less than GRPO from 5/10 to 10/10) or collapses (final "
            "evaluation > 5 points below its best)",
            _verdict(
                d_late, g_late, d_final, test=lambda: d_late < g_late or d_final < d[2] - 0.05
            ),
            f"5/10 -> 10/10 gain SDPO {_fmt(d_late)} vs GRPO {_fmt(g_late)}; SDPO final "
            f"{_fmt(d_final)} vs best {_fmt(d[2])}",
        ),
        (
            "GRPO improves steadily (best avg@k rises from 1/10 to 5/10 to 10/10)",
            _verdict(*g, test=lambda: g[0] < g[1] < g[2]),
            " -> ".join(_fmt(x) for x in g),
        ),
        (
            "SRPO matches SDPO early (SRPO mean at 1/10 >= SDPO's lowest seed)",
            _verdict(r[0], d_low, test=lambda: r[0] >= d_low),
            f"SRPO {_fmt(r[0])} vs SDPO {_fmt(d[0])} (lowest seed {_fmt(d_low)})",
        ),
        (
            "SRPO ends above both (best at 10/10)",
            _verdict(r[2], g[2], d[2], test=lambda: r[2] > max(g[2], d[2])),
            f"SRPO {_fmt(r[2])} vs GRPO {_fmt(g[2])}, SDPO {_fmt(d[2])}",
        ),
        (
            "Dynamic weighting adds late gains (SRPO above SRPO w/o DW at 10/10, by more "
            "than at 1/10)",
            _verdict(dw_early, dw_late, test=lambda: dw_late > 0 and dw_late > dw_early),
            f"SRPO minus no-DW: {_fmt(dw_early)} at 1/10, {_fmt(dw_late)} at 10/10",
        ),
        (
            "SRPO's routed fraction falls as accuracy rises (late < early, and negative "
            "per-step correlation with train accuracy)",
            _verdict(corr, *routed, test=lambda: corr < 0 and routed[1] < routed[0]),
            f"routed {_fmt(routed[0])}% early -> {_fmt(routed[1])}% late; correlation {corr_text}",
        ),
        (
            "SRPO's responses are of moderate length (mean between GRPO's and SDPO's)",
            _verdict(
                *lengths,
                test=lambda: min(lengths[1:]) <= lengths[0] <= max(lengths[1:]),
            ),
            f"SRPO {_fmt(lengths[0], 1)} vs GRPO {_fmt(lengths[1], 1)}, SDPO "
            f"{_fmt(lengths[2], 1)} tokens",
        ),
    ]


def table_md(report: Report) -> str:
    p = report.plan
    methods = list(report.records)
    lines = [
        "# Method comparison",
        "",
        f"config `{p.config_path}`, seeds {', '.join(map(str, p.seeds))}, budget "
        f"{p.budget_steps} steps per run, evaluation every {p.eval_steps} steps"
        + (f", overrides {', '.join(f'{k}={v!r}' for k, v in p.overrides)}" if p.overrides else "")
        + ".",
        "Cells: avg@k in % on the test split, mean over seeds [min, max]. Step 0 is the shared "
        "starting point (after the warm-up); budget columns take the best evaluation after it.",
    ]
    if p.budget_minutes:
        lines.append(
            f"A wall-clock budget of {p.budget_minutes:g} min per run was also applied: runs "
            "that hit it stopped early, so this table depends on machine speed."
        )
    lines += ["", "## Accuracy within step budgets (paper Table 1 style)", ""]
    lines += _accuracy_table(report, methods)
    ablation = [m for m in ABLATION if m in report.records]
    if len(ablation) >= 2:
        lines += ["", "## Ablation (paper Table 2 style)", ""]
        lines += _accuracy_table(report, ablation)
    lines += [
        "",
        "## Learning dynamics (first third -> last third of the training steps)",
        "",
    ]
    lines += _dynamics_table(report, methods)
    lines += ["", "## The paper's claims, checked on this run", "", "| claim | holds | evidence |"]
    lines += ["|---|---|---|"]
    lines += [f"| {c} | {v} | {e} |" for c, v, e in claims(report)]
    return "\n".join(lines) + "\n"


def _median_window(records: Sequence[dict], part: str) -> float | None:
    # Step 1 carries the JIT compilation: excluded so the trend shows the steady cost.
    s = {k: v for k, v in series(records, "time/step_s").items() if k > 1}
    steps = sorted(s)
    if not steps:
        return None
    n = max(1, len(steps) // 3)
    chosen = steps[:n] if part == "early" else steps[-n:]
    return float(np.median([s[k] for k in chosen]))


def timing_md(report: Report) -> str:
    """Wall-clock facts (machine-dependent, so kept out of table.md)."""
    methods = list(report.records)
    elapsed = [
        max(series(recs, ELAPSED).values(), default=0.0)
        for m in methods
        for recs in report.records[m].values()
    ]
    budget_s = report.plan.budget_minutes * 60.0 or max(elapsed, default=0.0)
    warm = (
        ", ".join(
            f"{name.removeprefix('warmup_')} {wall:.0f} s wall / {cpu:.0f} s CPU"
            for name, (wall, cpu) in sorted(report.costs.items())
            if name.startswith("warmup_")
        )
        or "off (each run warmed up itself)"
    )
    lines = [
        "# Method comparison: wall-clock",
        "",
        f"Total {report.total_s / 60:.1f} min wall-clock, {report.cpu_s / 60:.1f} min of "
        f"process CPU time (all threads; on a shared machine wall-clock stretches, CPU time "
        f"does not) for {len(methods)} methods x {len(report.plan.seeds)} seeds. Shared "
        f"warm-up: {warm}. Run = the whole trainer.run (compilation, training, evaluation); "
        "train time excludes evaluation. Seconds per step: median over the first / last third "
        "of the steps after step 1 (which includes compilation).",
        "",
        "| method | run wall (s) | run CPU (s) | train time (s) | s/step early | s/step late | "
        + " | ".join(f"best within {f:g} x {budget_s:.0f} s" for f in FRACTIONS)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(FRACTIONS),
    ]
    for m in methods:
        runs = [report.costs.get(f"{m}_s{seed}") for seed in sorted(report.records[m])]
        cells = [
            _cell([c and c[0] for c in runs], 1.0, 0),
            _cell([c and c[1] for c in runs], 1.0, 0),
            _cell(
                _per_seed(report, m, lambda r: max(series(r, ELAPSED).values(), default=None)),
                1.0,
                0,
            ),
            _cell(_per_seed(report, m, lambda r: _median_window(r, "early")), 1.0, 2),
            _cell(_per_seed(report, m, lambda r: _median_window(r, "late")), 1.0, 2),
        ]
        for f in FRACTIONS:
            cells.append(
                _cell(_per_seed(report, m, lambda r, lim=f * budget_s: _best_by_time(r, lim)))
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if "srpo" in report.records:
        e = _mean(report, "srpo", lambda r: _median_window(r, "early"))
        la = _mean(report, "srpo", lambda r: _median_window(r, "late"))
        ok = "n/a" if None in (e, la) else ("yes" if la < e else "no")
        lines += [
            "",
            f"Claim: SRPO's per-step cost falls over training: **{ok}** "
            f"({'n/a' if e is None else f'{e:.2f}'} s -> {'n/a' if la is None else f'{la:.2f}'} s "
            "median per step). On a loaded CPU this is noisy.",
        ]
    return "\n".join(lines) + "\n"


def _best_by_time(records: Sequence[dict], limit_s: float) -> float | None:
    acc, el = series(records, ACC), series(records, ELAPSED)
    vals = [v for s, v in acc.items() if s > 0 and el.get(s, math.inf) <= limit_s + 1e-9]
    return max(vals) if vals else None
