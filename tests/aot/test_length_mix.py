"""Length mixes of the memory plan (srpo_jax/aot/length_mix.py) and the packed layout it
reports, against a float64 first-fit-decreasing reference written here from the packing
rules (learner/packing.py's module doc): rows FFD into streams of pack_len, streams dealt
over the fewest micro-batches of at most micro_batch_tokens // pack_len streams (most
teacher tokens first, each to the micro-batch holding the fewest), each micro-batch's routed
rows FFD into teacher streams, then each kind of stream cut to the shortest multiple of
the length quantum at which every micro-batch still fits its count.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from srpo_jax import config as config_lib
from srpo_jax.aot import length_mix, mix_plan
from srpo_jax.config import load_config_module

REPO = pathlib.Path(__file__).resolve().parents[2]
OVERRIDES = {"prompts_per_step": 2, "mini_batch_prompts": 2}  # 2 prompts x 8 = 16 rows
PACK_LEN, BUDGET = 272, 544  # the demo's default pack_len (256 + 16); two streams


def _cfg():
    c = load_config_module(str(REPO / "configs" / "demo.py"), "demo.py").get_config()
    with c.unlocked():
        for k, v in OVERRIDES.items():
            c.train[k] = v
    return config_lib.from_config_dict(c)


def _rows(seed=3, longest_prompt=128):
    """16 rows within the demo's limits: empty responses, unrouted and routed rows."""
    rng = np.random.default_rng(seed)
    p = rng.integers(1, longest_prompt + 1, 16)
    r = rng.integers(0, 17, 16)
    r[[2, 9]] = 0
    t = np.where(rng.random(16) < 0.6, rng.integers(1, 2 * longest_prompt + 1, 16), 0)
    return [[int(a), int(b), int(c)] for a, b, c in zip(p, r, t, strict=True)]


def _ffd(lengths, capacity):
    bins, room = [], []
    order = sorted(
        (i for i in range(len(lengths)) if lengths[i] > 0), key=lambda i: (-lengths[i], i)
    )
    for i in order:
        for j in range(len(bins)):
            if lengths[i] <= room[j]:
                bins[j].append(i)
                room[j] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def _deal(streams, n_micro, teacher, student):
    """Streams over micro-batches, most teacher (then student) tokens first, each to the
    micro-batch holding the fewest (then the lowest index) among those with room."""
    room = -(-len(streams) // n_micro)
    micro, held = [[] for _ in range(n_micro)], [[0.0, 0.0] for _ in range(n_micro)]
    load = [(sum(teacher[i] for i in s), sum(student[i] for i in s)) for s in streams]
    for x in sorted(range(len(streams)), key=lambda x: (-load[x][0], -load[x][1], x)):
        m = min((m for m in range(n_micro) if len(micro[m]) < room), key=lambda m: (held[m], m))
        micro[m].append(streams[x])
        held[m] = [held[m][0] + load[x][0], held[m][1] + load[x][1]]
    return micro


def _length(lengths, micro_rows, count, pack_len, quantum):
    """The shortest multiple of quantum below pack_len (every one tried, from one quantum
    up) that holds the longest row and at which every micro-batch's rows FFD into `count`
    streams; else pack_len."""
    for length in range(quantum, pack_len, quantum):
        parts = [[lengths[i] for i in rows_m] for rows_m in micro_rows]
        if all(max(x, default=0) <= length and len(_ffd(x, length)) <= count for x in parts):
            return length
    return pack_len


def _reference(rows, pack_len, budget):
    """(micro-batches, token slots per micro-batch, padding fraction) in float64."""
    p, r, t = (np.asarray(x, np.float64) for x in zip(*rows, strict=True))
    student = np.where(r > 0, p + r, 0)
    teacher = np.where((t > 0) & (r > 0), t + r, 0)
    streams = _ffd(student, pack_len)
    n_micro = -(-len(streams) // (budget // pack_len)) if budget else 1
    k = -(-len(streams) // n_micro)  # < 16 streams: the count's bucket is the count
    micro = _deal(streams, n_micro, teacher, student)
    micro_rows = [[i for s in m for i in s] for m in micro]
    j = max(len(_ffd([teacher[i] for i in rows_m], pack_len)) for rows_m in micro_rows)
    quantum = 8  # pack_len 272: the power of two in (272/64, 272/32], at least 8
    length = _length(student, micro_rows, k, pack_len, quantum)
    teacher_length = _length(teacher, micro_rows, j, pack_len, quantum)
    slots = n_micro * (k * length + j * teacher_length)
    return n_micro, k * length + j * teacher_length, 1.0 - (student.sum() + teacher.sum()) / slots


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_file_mix_packed_layout_equals_the_ffd_reference(tmp_path):
    cfg, rows = _cfg(), _rows()
    lines = [json.dumps(x) for x in rows[:8]] + [""]  # a blank line is skipped
    lines += [json.dumps(dict(zip(length_mix.FILE_KEYS, x, strict=True))) for x in rows[8:12]]
    lines += [json.dumps(x[:2]) if x[2] == 0 else json.dumps(x) for x in rows[12:]]
    mix = length_mix.from_file(cfg, _write(tmp_path / "mix.jsonl", lines))
    np.testing.assert_array_equal(mix.teacher_prompt_lens_B, [x[2] for x in rows])
    (packed,) = [v for v in mix_plan.variants(cfg, mix, "", str(BUDGET)) if v.kind == "packed"]
    assert packed.cfg.train.pack_len == PACK_LEN
    n_micro, tokens, padding = _reference(rows, PACK_LEN, BUDGET)
    assert n_micro > 1  # the budget splits the step
    assert packed.layout.micro_batches == n_micro
    assert packed.layout.tokens == tokens
    assert packed.layout.padding == pytest.approx(padding, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed, longest_prompt, budget", [(4, 40, 0), (5, 40, 544), (6, 100, 0)])
def test_stream_lengths_shrink_to_the_reference(tmp_path, seed, longest_prompt, budget):
    """Short rows leave room in the streams at pack_len; both kinds of stream are cut to the
    reference's length, in one micro-batch and under a budget."""
    cfg, rows = _cfg(), _rows(seed, longest_prompt)
    mix = length_mix.from_file(cfg, _write(tmp_path / "mix.jsonl", map(json.dumps, rows)))
    (packed,) = [v for v in mix_plan.variants(cfg, mix, "", str(budget)) if v.kind == "packed"]
    n_micro, tokens, padding = _reference(rows, PACK_LEN, budget)
    assert packed.layout.micro_batches == n_micro
    assert packed.layout.tokens == tokens
    assert packed.layout.padding == pytest.approx(padding, rel=1e-12, abs=1e-12)
    lengths = packed.layout.student_shape[1], packed.layout.teacher_shape[1]
    assert min(lengths) < PACK_LEN  # the case shortens a stream


def test_plan_cli_prints_the_reference_layout(tmp_path):
    rows = _rows()
    path = _write(tmp_path / "mix.jsonl", [json.dumps(x) for x in rows])
    args = [f"--config.train.{k}={v}" for k, v in OVERRIDES.items()]
    out = subprocess.run(
        [sys.executable, "-m", "srpo_jax.plan", "--config=configs/demo.py", *args,
         f"--lengths={path}", "--compile=none", f"--micro_batch_tokens={BUDGET}",
         "--backend=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith(f"packed {BUDGET} tokens")]
    n_micro, tokens, padding = _reference(rows, PACK_LEN, BUDGET)
    fields = line.split()
    assert int(fields[3]) == n_micro
    assert int(fields[-2]) == tokens
    assert fields[-1] == f"{padding:.1%}"


@pytest.mark.parametrize(
    "line, message",
    [
        ("[3, 4", "line 2: not JSON"),
        ("[3]", "line 2: expected [prompt_len, response_len]"),
        ('{"prompt_len": 3, "response": 4}', "line 2: an object needs prompt_len"),
        ("[3, -1]", "line 2: response_len must be an integer >= 0, got -1"),
        ("[3, 4.5]", "line 2: response_len must be an integer >= 0, got 4.5"),
        ("[0, 4]", "line 2: prompt_len=0 is outside [1, 128] (data.max_prompt_len)"),
        ("[3, 17]", "line 2: response_len=17 is outside [0, 16] (data.max_response_len)"),
        ("[3, 4, 300]", "teacher_prompt_len=300 is outside [0, 256] (algo.max_reprompt_len)"),
    ],
)
def test_bad_file_names_the_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "mix.jsonl", ["[5, 6, 7]", line] + ["[5, 6]"] * 15)
    with pytest.raises(length_mix.MixError) as e:
        length_mix.from_file(_cfg(), path)
    assert str(e.value).startswith(f"{path} line 2: ")
    assert message in str(e.value)


def test_short_or_missing_file(tmp_path):
    path = _write(tmp_path / "mix.jsonl", ["[5, 6]"] * 15)
    with pytest.raises(length_mix.MixError, match=r"15 rows, but one step has 16"):
        length_mix.from_file(_cfg(), path)
    with pytest.raises(length_mix.MixError, match=r"--lengths=.*nope.jsonl: cannot read it"):
        length_mix.from_file(_cfg(), str(tmp_path / "nope.jsonl"))


def test_worst_and_paper_mixes():
    cfg = _cfg()
    worst = length_mix.worst(cfg)
    assert (worst.prompt_lens_B == 128).all() and (worst.response_lens_B == 16).all()
    assert (worst.teacher_prompt_lens_B == 256).all()
    # The long-tail shape as documented: medians 300 and 2000, about 6% of responses at the
    # 8192 cap, prompts within [16, 2048].
    p, r, extra = length_mix.paper_lengths(np.random.default_rng(0), 4096, 8)
    assert p.min() >= 16 and p.max() <= 2048 and abs(np.median(p) / 300 - 1) < 0.05
    assert abs(np.median(r) / 2000 - 1) < 0.05 and 0.04 < (r == 8192).mean() < 0.08
    assert (extra >= 41).all()
    paper = length_mix.paper(cfg)  # clipped to the demo's limits
    assert paper.response_lens_B.max() <= 16 and paper.teacher_prompt_lens_B.max() <= 256


@pytest.mark.slow
def test_plan_compiles_the_packed_layout_of_a_mix(tmp_path):
    """compile_batch on a mix's PackedBatch (one CPU device, a tiny model; the padded batch
    is test_plan.py's): the compiled program's arguments are the state plus exactly the
    built batch's bytes."""
    import jax

    from srpo_jax.aot import plan
    from srpo_jax.model.config import tiny
    from srpo_jax.sharding import MeshConfig, make_mesh

    cfg, rows = _cfg(), _rows()
    mix = length_mix.from_file(cfg, _write(tmp_path / "m.jsonl", [json.dumps(x) for x in rows]))
    model_cfg = tiny(vocab_size=64, hidden_size=32, intermediate_size=64, head_dim=8)
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    (v,) = [v for v in mix_plan.variants(cfg, mix, "", str(BUDGET)) if v.kind == "packed"]
    fig = plan.compile_batch(v.cfg, model_cfg, mesh, v.batch)
    batch_bytes = sum(x.nbytes for x in jax.tree.leaves(v.batch))
    assert fig.batch == batch_bytes, v.label
    state = fig.params + fig.teacher + fig.opt
    assert abs(fig.arguments - (state + batch_bytes + 12)) < 32, v.label
    assert fig.flops > 0 and fig.temp > 0
