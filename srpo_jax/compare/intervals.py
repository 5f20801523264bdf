"""95% bootstrap intervals for a method comparison, and the paper's claims checked with them.

Read from the runs under out/runs/<method>_s<seed>:

- Test accuracy (avg@k) at each evaluation step. Every run writes its per-question avg@k at
  each evaluation (eval_scores.jsonl), so the bootstrap resamples seeds AND test questions:
  one replicate draws S seeds and Q questions with replacement and averages; differences
  between methods reuse the same draw for both (paired: same seeds, same questions).
- Per-step training statistics (train accuracy, routed fraction, teacher entropy, response
  length, learner time) exist once per run, so their intervals resample seeds only.

An interval is the 2.5-97.5 percentile range of 2000 replicates. A claim "holds" when its
interval excludes zero in the claimed direction, "does not hold" when the interval excludes
zero the other way, and is "unresolved" when the interval covers zero.

Outputs: out/table.md (copy probe per seed, learning rates, accuracy table, dynamics,
claims) and out/curves.png (means with 95% bands).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from srpo_jax.compare import arms
from srpo_jax.compare import report as compare_report
from srpo_jax.trainer.metrics import EVAL_SCORES

B = 2000
MIN_SEEDS = 3  # per-run statistics get a verdict only from this many seeds
ROUTED, ENTROPY = "route/sdpo_frac", compare_report.ENTROPY
LENGTH, TRAIN_ACC = "rollout/response_len_mean", "reward/accuracy"
LEARNER_S, TEACHER_ROWS = "time/learner_s", "route/teacher_frac"


def load_scores(out: pathlib.Path, methods, seeds) -> tuple[dict[str, np.ndarray], list[int]]:
    """scores[m]: [S, E, Q] per-question avg@k of each run; the E evaluation steps."""
    scores, steps = {}, None
    for m in methods:
        per_seed = []
        for s in seeds:
            f = out / "runs" / f"{m}_s{s}" / EVAL_SCORES
            rows = [json.loads(x) for x in f.read_text().splitlines()]
            by_step = {r["step"]: r["avg_at_k"] for r in rows}  # the last write of a step wins
            these = sorted(by_step)
            steps = these if steps is None else steps
            if these != steps:
                raise ValueError(f"{f}: evaluation steps {these} differ from {steps}")
            per_seed.append([by_step[t] for t in steps])
        scores[m] = np.asarray(per_seed, np.float64)
    return scores, steps


def _draws(n_seeds: int, n_q: int, rng: np.random.Generator):
    return rng.integers(0, n_seeds, (B, n_seeds)), rng.integers(0, n_q, (B, n_q))


def boot_acc(x_SEQ: np.ndarray, draws) -> np.ndarray:
    """[B, E] replicate means of [S, E, Q] scores (seeds and questions resampled)."""
    s_idx, q_idx = draws
    out = np.empty((B, x_SEQ.shape[1]))
    for b in range(B):
        out[b] = x_SEQ[s_idx[b]][:, :, q_idx[b]].mean(axis=(0, 2))
    return out


def boot_seeds(v_S: np.ndarray, s_idx: np.ndarray) -> np.ndarray:
    """[B] replicate means of one value per seed (seeds resampled)."""
    return np.asarray(v_S, np.float64)[s_idx].mean(axis=1)


def ci(reps: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


def question_interval(x_Q, rng: np.random.Generator) -> tuple[float, float]:
    """95% interval of the mean of one run's per-question scores, questions resampled."""
    x_SEQ = np.asarray(x_Q, np.float64)[None, None, :]
    return ci(boot_acc(x_SEQ, _draws(1, x_SEQ.shape[2], rng))[:, 0])


def verdict(reps: np.ndarray, direction: int) -> str:
    lo, hi = ci(reps * direction)
    return "holds" if lo > 0 else ("does not hold" if hi < 0 else "unresolved")


def _fmt(point: float, reps: np.ndarray, scale: float = 100.0, digits: int = 1) -> str:
    lo, hi = ci(reps)
    f = f"{{:.{digits}f}}"
    return f"{f.format(point * scale)} [{f.format(lo * scale)}, {f.format(hi * scale)}]"


def _third(records, key: str, part: str) -> float:
    s = compare_report.series(records, key)
    steps = sorted(k for k in s if k > 0)
    n = max(1, len(steps) // 3)
    chosen = steps[:n] if part == "early" else steps[-n:]
    vals = [s[k] for k in chosen]
    return float(np.mean(vals)) if vals else float("nan")


def _cost_slope(records) -> float:
    """Least-squares slope of learner seconds on routed-teacher fraction, compile steps out."""
    t = compare_report.series(records, LEARNER_S)
    f = compare_report.series(records, TEACHER_ROWS)
    steps = sorted(set(t) & set(f))
    if len(steps) < 4:
        return float("nan")
    x, y = np.array([f[k] for k in steps]), np.array([t[k] for k in steps])
    keep = y <= 3 * np.median(y)  # steps that compiled a new teacher-row bucket
    if keep.sum() < 3 or np.ptp(x[keep]) == 0:
        return float("nan")
    return float(np.polyfit(x[keep], y[keep], 1)[0])


def _per_seed(rec, m, seeds, fn):
    return np.array([fn(rec[m][s]) for s in seeds], np.float64)


def claims(scores, steps, rec, seeds, rng) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) rows; accuracy replicates share one draw (paired)."""
    methods = list(scores)
    draws = _draws(len(seeds), scores[methods[0]].shape[2], rng)
    reps = {m: boot_acc(scores[m], draws) for m in methods}
    pts = {m: scores[m].mean(axis=(0, 2)) for m in methods}
    e1, mid, last = 1, len(steps) // 2, len(steps) - 1
    rows = []

    def gain(m, i, j):
        return reps[m][:, j] - reps[m][:, i], pts[m][j] - pts[m][i]

    def have(*ms):
        return all(m in methods for m in ms)

    if have("sdpo", "grpo"):
        (gs, ps), (gg, pg) = gain("sdpo", 0, e1), gain("grpo", 0, e1)
        rows.append(
            (
                f"SDPO improves fastest early (gain over step 0 by step {steps[e1]}, SDPO - GRPO)",
                verdict(gs - gg, +1),
                f"SDPO {ps * 100:+.1f}, GRPO {pg * 100:+.1f}; "
                f"difference {_fmt(ps - pg, gs - gg)} pts",
            )
        )
        (ls, pls), (lg, plg) = gain("sdpo", mid, last), gain("grpo", mid, last)
        peak = reps["sdpo"][:, 1:].max(axis=1)
        drop = reps["sdpo"][:, last] - peak
        rows.append(
            (
                f"SDPO stalls later (gain from step {steps[mid]} to {steps[last]}, "
                "SDPO - GRPO < 0)",
                verdict(ls - lg, -1),
                f"SDPO {pls * 100:+.1f}, GRPO {plg * 100:+.1f}; "
                f"difference {_fmt(pls - plg, ls - lg)}"
                f" pts; SDPO final minus its best evaluation {_fmt(float(np.median(drop)), drop)}",
            )
        )
    if have("srpo", "grpo", "sdpo"):
        cells, verdicts = [], []
        for i in range(1, len(steps)):
            for other in ("grpo", "sdpo"):
                d = reps["srpo"][:, i] - reps[other][:, i]
                verdicts.append(verdict(d, +1))
                p = pts["srpo"][i] - pts[other][i]
                cells.append(f"step {steps[i]} vs {other.upper()} {_fmt(p, d)}")
        v = (
            "does not hold"
            if "does not hold" in verdicts
            else ("holds" if all(x == "holds" for x in verdicts) else "unresolved")
        )
        rows.append(
            ("SRPO >= GRPO and SDPO at every budget (SRPO minus each, pts)", v, "; ".join(cells))
        )
    if have("srpo", "srpo_no_dw"):
        d_early = reps["srpo"][:, e1] - reps["srpo_no_dw"][:, e1]
        d_last = reps["srpo"][:, last] - reps["srpo_no_dw"][:, last]
        p_e = pts["srpo"][e1] - pts["srpo_no_dw"][e1]
        p_l = pts["srpo"][last] - pts["srpo_no_dw"][last]
        rows.append(
            (
                "Dynamic weighting adds late gains ((SRPO - no-DW) at the end minus at the start)",
                verdict(d_last - d_early, +1),
                f"SRPO - no-DW: step {steps[e1]} {_fmt(p_e, d_early)}, step {steps[last]} "
                f"{_fmt(p_l, d_last)}; change {_fmt(p_l - p_e, d_last - d_early)} pts",
            )
        )
    rows += _train_claims(rec, seeds, draws[0])
    return rows


def _train_claims(rec, seeds, s_idx) -> list[tuple[str, str, str]]:
    rows = []

    def sv(reps, direction):
        # A bootstrap over 1-2 seeds has (near) zero width: no verdict from it.
        return verdict(reps, direction) if len(seeds) >= MIN_SEEDS else "unresolved (< 3 seeds)"

    def delta(m, key):
        v = _per_seed(rec, m, seeds, lambda r: _third(r, key, "late") - _third(r, key, "early"))
        return float(np.mean(v)), boot_seeds(v, s_idx)

    if "srpo" in rec:
        p, r = delta("srpo", ROUTED)
        acc_p, acc_r = delta("srpo", TRAIN_ACC)
        rows.append(
            (
                "SRPO's routed fraction falls as accuracy rises (late third - early third)",
                sv(r, -1) if sv(acc_r, +1) == "holds" else "unresolved",
                f"routed {_fmt(p, r)} pts; train accuracy {_fmt(acc_p, acc_r)} pts",
            )
        )
        slope = _per_seed(rec, "srpo", seeds, _cost_slope)
        ok = np.isfinite(slope)
        if ok.any():
            sr = boot_seeds(slope[ok], s_idx[:, : ok.sum()] % ok.sum())
            rows.append(
                (
                    "SRPO's per-step cost falls with the routed fraction (slope of learner s/step "
                    "on the teacher-row fraction > 0, and the fraction falls)",
                    sv(sr, +1) if sv(r, -1) == "holds" else "unresolved",
                    f"slope {_fmt(float(slope[ok].mean()), sr, 1.0, 2)} s per unit fraction; "
                    f"routed change {_fmt(p, r)} pts",
                )
            )
    if "sdpo" in rec:
        p, r = delta("sdpo", ENTROPY)
        rows.append(
            (
                "SDPO's teacher entropy rises (late third - early third, nats)",
                sv(r, +1),
                _fmt(p, r, 1.0, 3),
            )
        )
    if all(m in rec for m in ("srpo", "grpo", "sdpo")):
        mean_len = {
            m: _per_seed(
                rec,
                m,
                seeds,
                lambda x: _third(x, LENGTH, "early") / 2 + _third(x, LENGTH, "late") / 2,
            )
            for m in ("srpo", "grpo", "sdpo")
        }
        d_a = mean_len["srpo"] - mean_len["grpo"]
        d_b = mean_len["sdpo"] - mean_len["srpo"]
        a, b = boot_seeds(d_a, s_idx), boot_seeds(d_b, s_idx)
        va, vb = sv(a, +1), sv(b, +1)
        between_up, between_down = va == vb == "holds", va == vb == "does not hold"
        v = (
            "holds"
            if between_up or between_down
            else ("does not hold" if {va, vb} == {"holds", "does not hold"} else "unresolved")
        )
        rows.append(
            (
                "SRPO's response length lies between GRPO's and SDPO's "
                "(mean over training, tokens)",
                v,
                "; ".join(f"{m.upper()} {mean_len[m].mean():.2f}" for m in mean_len)
                + f"; SRPO - GRPO {_fmt(float(d_a.mean()), a, 1.0, 2)}"
                f"; SDPO - SRPO {_fmt(float(d_b.mean()), b, 1.0, 2)}",
            )
        )
    return rows


def _acc_table(scores, steps, draws) -> list[str]:
    head = "| method | " + " | ".join(f"step {t}" for t in steps) + " |"
    lines = [head, "|---" * (len(steps) + 1) + "|"]
    for m, x in scores.items():
        reps = boot_acc(x, draws)
        pts = x.mean(axis=(0, 2))
        lines.append(
            f"| {m} | " + " | ".join(_fmt(pts[i], reps[:, i]) for i in range(len(steps))) + " |"
        )
    return lines


def _dynamics_table(rec, seeds, rng) -> list[str]:
    s_idx = rng.integers(0, len(seeds), (B, len(seeds)))
    keys = (
        (TRAIN_ACC, 100.0, 1, "train accuracy (%)"),
        (ROUTED, 100.0, 1, "routed (%)"),
        (ENTROPY, 1.0, 3, "teacher entropy (nats)"),
        (LENGTH, 1.0, 2, "response length"),
    )
    lines = [
        "| method | " + " | ".join(f"{k[3]}, early -> late" for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for m in rec:
        cells = []
        for key, scale, digits, _ in keys:
            parts = []
            for part in ("early", "late"):
                v = _per_seed(rec, m, seeds, lambda r, key=key, part=part: _third(r, key, part))
                parts.append(
                    "-"
                    if not np.isfinite(v).all()
                    else _fmt(float(v.mean()), boot_seeds(v, s_idx), scale, digits)
                )
            cells.append(" -> ".join(parts))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def table_md(plan, scores, steps, rec, probes, sweep_info) -> str:
    """The report; a pure function of the runs' step-indexed logs (no wall-clock figures), so
    the same seeds give the same text."""
    seeds = plan.seeds
    rng = np.random.default_rng(0)  # fixed: the same runs give the same table
    out = [
        "# Method comparison (the code-lookup task)",
        "",
        f"config `{plan.config_path}`, seeds {', '.join(map(str, seeds))}, "
        f"{plan.budget_steps} steps per run, evaluation every {plan.eval_steps} steps on "
        f"{next(iter(scores.values())).shape[2]} test questions (avg@4). Cells: mean "
        f"[95% bootstrap CI over seeds and questions, {B} replicates], in %.",
        "",
    ]
    if any(probes.values()):
        out += [
            "Copy probe at step 0 (each seed's warm-up, test split; "
            "criterion (a) of the study design):",
            "",
            "| seed | teacher p(gold \\| correct demo) | student p(gold) | teacher p(demo "
            "\\| wrong demo) | teacher p(gold \\| wrong demo) | well-formed | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for seed, p in probes.items():
            if p:
                out.append(
                    f"| {seed} | {p['teacher_gold']:.3f} | {p['student_gold']:.3f} | "
                    f"{p['teacher_follows_wrong']:.3f} | {p['teacher_gold_given_wrong']:.3f} | "
                    f"{p['well_formed']:.3f} | {'PASS' if p['passes'] else 'FAIL'} |"
                )
        out.append("")
    if sweep_info:
        acc = sweep_info["train_accuracy"]
        cells = [
            f"{m} {acc[m]} -> {lr:g}" if m in acc else f"{m}: SRPO's rate {lr:g} (not swept)"
            for m, lr in sweep_info["chosen"].items()
        ]
        out += [
            "Learning rates (sweep on the training split; mean train accuracy over the "
            "sweep's second half per rate -> chosen): " + "; ".join(cells),
            "",
        ]
    out += ["## Test accuracy (avg@4, %) at each evaluation", ""]
    acc_draws = _draws(len(seeds), next(iter(scores.values())).shape[2], rng)
    out += _acc_table(scores, steps, acc_draws)
    out += ["", "## Learning dynamics (first third -> last third of the steps; CI over seeds)", ""]
    out += _dynamics_table(rec, seeds, rng)
    out += [
        "",
        "## The paper's claims",
        "",
        "| claim | verdict | evidence (95% CI) |",
        "|---|---|---|",
    ]
    out += [f"| {c} | {v} | {e} |" for c, v, e in claims(scores, steps, rec, seeds, rng)]
    out += _arms_vs_method(scores, steps, acc_draws)
    return "\n".join(out) + "\n"


def _arms_vs_method(scores, steps, draws) -> list[str]:
    """Each arm with overrides against its method's plain arm, on the accuracy table's own
    replicates: the paired difference at every evaluation, and whether the arm's mean at
    the last evaluation lies inside the method's 95% interval there. Nothing when no arm
    has overrides, so plain method comparisons keep their table."""
    pairs = [(a, arms.base_label(a)) for a in scores if arms.base_label(a) != a]
    pairs = [(a, b) for a, b in pairs if b in scores]
    if not pairs:
        return []
    last = len(steps) - 1
    lines = [
        "",
        "## Arms against their method (arm minus method, pts; paired over seeds and questions)",
        "",
        "| arm | "
        + " | ".join(f"step {t}" for t in steps)
        + f" | arm's step-{steps[last]} mean inside the method's 95% interval? |",
        "|---" * (len(steps) + 2) + "|",
    ]
    for a, b in pairs:
        ra, rb = boot_acc(scores[a], draws), boot_acc(scores[b], draws)
        pa, pb = scores[a].mean(axis=(0, 2)), scores[b].mean(axis=(0, 2))
        cells = [_fmt(pa[i] - pb[i], ra[:, i] - rb[:, i]) for i in range(len(steps))]
        lo, hi = ci(rb[:, last])
        inside = "yes" if lo <= pa[last] <= hi else "no"
        answer = f"{inside}: {pa[last] * 100:.1f} vs {b} [{lo * 100:.1f}, {hi * 100:.1f}]"
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {answer} |")
    return lines


def plot(scores, steps, rec, seeds, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    draws = _draws(len(seeds), next(iter(scores.values())).shape[2], rng)
    s_idx = draws[0]
    # One colour per method in every panel (panels without a method's series skip it).
    color = {m: f"C{i}" for i, m in enumerate(dict.fromkeys([*scores, *rec]))}
    ax = axes[0, 0]
    for m, x in scores.items():
        reps = boot_acc(x, draws)
        lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
        ax.plot(steps, x.mean(axis=(0, 2)), label=m, color=color[m])
        ax.fill_between(steps, lo, hi, alpha=0.2, color=color[m])
    ax.set(title="test avg@4 (95% CI: seeds x questions)", xlabel="step")
    ax.legend(fontsize=8)
    for ax, key, title in zip(
        axes.flat[1:5],
        (TRAIN_ACC, ROUTED, ENTROPY, LENGTH),
        ("train accuracy", "routed fraction", "teacher entropy", "response length"),
        strict=True,
    ):
        for m in rec:
            per = [compare_report.series(rec[m][s], key) for s in seeds]
            common = sorted(set.intersection(*(set(p) for p in per)) - {0})
            if not common:
                continue
            v = np.array([[p[k] for k in common] for p in per])
            reps = v[s_idx].mean(axis=1)
            lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
            ax.plot(common, v.mean(axis=0), label=m, color=color[m])
            ax.fill_between(common, lo, hi, alpha=0.2, color=color[m])
        ax.set(title=f"{title} (95% CI over seeds)", xlabel="step")
    ax = axes[1, 2]
    for m in ("srpo", "sdpo", "srpo_no_dw"):
        if m not in rec:
            continue
        xs, ys = [], []
        for s in seeds:
            t = compare_report.series(rec[m][s], LEARNER_S)
            f = compare_report.series(rec[m][s], TEACHER_ROWS)
            for k in set(t) & set(f):
                xs.append(f[k])
                ys.append(t[k])
        if ys:
            ys_a = np.array(ys)
            keep = ys_a <= 3 * np.median(ys_a)
            ax.scatter(np.array(xs)[keep], ys_a[keep], s=6, label=m, color=color[m])
    ax.set(title="learner s/step vs teacher-row fraction", xlabel="fraction of rows with a teacher")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(plan, out: pathlib.Path, records: dict) -> None:
    """out/table.md and out/curves.png from the runs; `records[m][s]` are their metrics."""
    scores, steps = load_scores(out, plan.methods, plan.seeds)

    def read(name):
        f = out / name
        return json.loads(f.read_text()) if f.is_file() else None

    probes = {s: read(f"warmup/s{s}/probe.json") for s in plan.seeds}
    text = table_md(plan, scores, steps, records, probes, read("sweep.json"))
    (out / "table.md").write_text(text)
    plot(scores, steps, records, plan.seeds, out / "curves.png")
