"""SGLang engine against a real SGLang-family server (sglang-jax on CPU) on a tiny Qwen3.

One module-scoped engine launches one server through the engine's own launch path, and one
test runs the stages in order: generation with log-prob parity against a float64
transformers reference, stop tokens, pause/flush/continue around the update route sglang-jax
lacks, `python -m srpo_jax.evaluate` over the running server's URL (greedy avg@k of a
split whose gold answers are transformers' greedy responses but one: exactly 3/4), the
restart weight sync of a srpo_jax model exported in bf16 (parity with transformers
and with srpo_jax's own fp32 forward), and finally a server killed in the middle of a batch:
the batch fails fast (no partial result), the next call relaunches the server on the weights
it last served, and past the restart budget the engine gives up. The first run builds the
sglang-jax venv from PyPI (a few minutes; cached under $SRPO_CACHE). Set
SRPO_SKIP_SGLANG_SERVER=1 to skip it.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from sglang_env import (
    VOCAB,
    Reference,
    launch_template,
    server_env,
    timer,
    write_run_config,
    write_tiny_checkpoint,
)

from srpo_jax.rollout.engine import FINISH_LENGTH, FINISH_STOP, RolloutError, SamplingParams
from srpo_jax.rollout.sglang import SGLangConfig, SGLangEngine

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.xdist_group("sglang")]

# Same row count and length everywhere: every new batch shape costs a CPU compile.
PROMPTS = [[11, 12, 13, 14, 15], [7, 8, 9]]
N = 3
MAX_NEW = 8
LOGPROB_TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sglang_ckpt") / "tiny", seed=0)


@pytest.fixture(scope="module")
def engine(server_python, ckpt, tmp_path_factory):
    work = tmp_path_factory.mktemp("sglang_engine")
    cfg = SGLangConfig(
        launch_command=launch_template(server_python),
        num_servers=1,
        base_port=0,
        launch_env=server_env(),
        timeout_s=300,
        startup_timeout_s=300,
        max_retries=1,
        backoff_s=0.5,
        # Two rows per request, one request at a time: a batch is three requests in a row,
        # so a server killed after the first answer dies with the batch half done.
        rows_per_request=2,
        max_concurrency=1,
        max_restarts=1,
        sync="restart",
        export_dir=str(work / "exports"),
        keep_exports=1,
    )
    # Default exporter: weights go out through srpo_jax.model.hf_io.save_hf in bf16.
    eng = SGLangEngine(cfg, model_path=ckpt)
    yield eng
    eng.close()


def _max_logprob_error(rollouts, reference) -> float:
    worst = 0.0
    for row in range(rollouts.num_rows):
        completion = rollouts.completion(row)
        ref = reference.logprobs(PROMPTS[rollouts.prompt_index_B[row]], completion)
        got = rollouts.logprobs_BR[row, : len(completion)]
        worst = max(worst, float(np.max(np.abs(np.asarray(ref) - got))))
    return worst


def _check_generation(engine, ckpt):
    """n samples per prompt, prompt-major rows, log-probs equal to a float64 reference."""
    rollouts = engine.generate(PROMPTS, N, SamplingParams(max_new_tokens=MAX_NEW, seed=1))
    b = len(PROMPTS) * N
    assert rollouts.token_ids_BR.shape == (b, MAX_NEW)
    assert rollouts.prompt_index_B.tolist() == [p for p in range(len(PROMPTS)) for _ in range(N)]
    assert rollouts.lengths_B.tolist() == [MAX_NEW] * b
    assert rollouts.finish_reasons == (FINISH_LENGTH,) * b
    assert rollouts.weight_version == 0
    assert ((rollouts.token_ids_BR >= 0) & (rollouts.token_ids_BR < VOCAB)).all()
    assert (rollouts.logprobs_BR < 0).all()
    for p in range(len(PROMPTS)):  # samples of one prompt are not copies of each other
        assert len({tuple(rollouts.completion(p * N + j)) for j in range(N)}) > 1
    assert _max_logprob_error(rollouts, Reference(ckpt)) < LOGPROB_TOL


def _check_stop_tokens(engine):
    stop = tuple(range(0, VOCAB, 2))  # every even id: most samples stop within 8 tokens
    sampling = SamplingParams(max_new_tokens=MAX_NEW, stop_token_ids=stop, seed=2)
    out = engine.generate(PROMPTS, N, sampling, step=1)
    for row in range(out.num_rows):
        toks = out.completion(row)
        if out.finish_reasons[row] == FINISH_STOP:
            assert toks[-1] % 2 == 0 and all(t % 2 for t in toks[:-1]), toks
            assert out.logprobs_BR[row, len(toks) - 1] < 0  # the stop token carries its log-prob
        else:
            assert out.finish_reasons[row] == FINISH_LENGTH
            assert len(toks) == MAX_NEW and all(t % 2 for t in toks), toks
        assert (out.token_ids_BR[row, len(toks) :] == 0).all()
    assert FINISH_STOP in out.finish_reasons


def _check_missing_update_route(engine, ckpt, tmp_path):
    # sglang-jax has pause/flush/continue but no /update_weights_from_disk: the real server's
    # answers to the first three are exercised here, the update route against a stand-in.
    cfg = SGLangConfig(urls=engine.urls, timeout_s=60, max_retries=0, export_dir=str(tmp_path))
    with SGLangEngine(cfg) as client:
        match = rf"{engine.urls[0]}/update_weights_from_disk answered HTTP 404"
        with pytest.raises(RolloutError, match=match):
            client.update_weights(str(ckpt), version=1)
    out = engine.generate(PROMPTS, N, SamplingParams(max_new_tokens=MAX_NEW, seed=4), step=4)
    assert out.lengths_B.tolist() == [MAX_NEW] * len(PROMPTS) * N  # generation continued


# Four questions whose gold answers are the checkpoint's own greedy responses, but for one:
# avg@k is 3/4 exactly when evaluation over the server samples what transformers does.
EVAL_QUESTIONS = ["Name it.", "Which one?", "A or B?", "Say the code."]
EVAL_WRONG = {1}


def _greedy_answers(ckpt, tokenizer_dir, max_new: int) -> tuple[list[str], list[int]]:
    """(gold answers, response lengths): each question's greedy response from transformers'
    float64 Qwen3 (independent of the server and of srpo_jax's engines), decoded as the
    verifier sees it; the EVAL_WRONG ones replaced by an answer it never gives."""
    from srpo_jax.data import datasets
    from srpo_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    stop = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    stop.add(tok.eos_token_id)
    reference = Reference(ckpt)
    answers, lengths = [], []
    for i, question in enumerate(EVAL_QUESTIONS):
        prompt = datasets.encode_prompt(tok, [{"role": "user", "content": question}])
        completion = reference.greedy(prompt, max_new, stop)
        text = tok.decode(completion, skip_special_tokens=True)
        assert "<answer>" not in text  # so the MCQ verifier compares the whole response
        answers.append("no such answer" if i in EVAL_WRONG else text.strip())
        lengths.append(len(completion))
    return answers, lengths


def _check_evaluate_over_url(engine, ckpt, tmp_path):
    """`python -m srpo_jax.evaluate` with rollout.sglang.urls naming this running server
    (sync=none: it serves `ckpt`, the model evaluated), greedy, k=2."""
    from srpo_jax.data.tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(tmp_path / "tokenizer")  # 512 ids: the checkpoint's vocabulary
    max_new = 16
    answers, lengths = _greedy_answers(ckpt, tmp_path / "tokenizer", max_new)
    split = tmp_path / "data" / "sciknoweval" / "chemistry" / "test.json"
    split.parent.mkdir(parents=True)
    rows = [
        dict(idx=i, kind="mcq", dataset="sciknoweval", prompt=q, system=None, answer=a)
        for i, (q, a) in enumerate(zip(EVAL_QUESTIONS, answers, strict=True))
    ]
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {
        "data.task": "chem",
        "data.data_dir": str(tmp_path / "data"),
        "data.max_response_len": max_new,
        "eval.temperature": 0.0,
        "eval.max_examples": 0,
        "rollout.engine": "sglang",
        "rollout.sglang.urls": tuple(engine.urls),
        "rollout.sglang.sync": "none",
    }
    config = write_run_config(
        tmp_path / "eval.py", tokenizer=tmp_path / "tokenizer", ckpt=ckpt, settings=settings
    )
    out = tmp_path / "eval"
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "srpo_jax.evaluate", f"--config={config}",
           f"--hf_path={ckpt}", f"--out={out}", "--k=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((out / "evaluation.json").read_text())["results"]["chem"]
    assert got["num_questions"] == 4
    assert got["avg_at_k"] == got["maj_at_k"] == 0.75, (got, answers)
    assert got["response_len_mean"] == np.mean(lengths)


def _srpo_model(path):
    from srpo_jax.model import load_hf

    return load_hf(path, config_overrides={"dtype": "float32"})  # fp32 compute for parity


def _srpo_logprobs_error(rollouts, model) -> float:
    """Max |engine log-prob - srpo_jax fp32 log-prob|: the gap the learner's truncated-IS
    correction sees between rollout engine and trainer."""
    import jax
    import jax.numpy as jnp

    worst = 0.0
    for row in range(rollouts.num_rows):
        prompt, completion = PROMPTS[rollouts.prompt_index_B[row]], rollouts.completion(row)
        logits = model(jnp.asarray([prompt + completion], jnp.int32))[0]
        # fp32 log-softmax: the reference must not lose precision in the normaliser.
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        p = len(prompt)
        ref = np.asarray([logp[p - 1 + t, tok] for t, tok in enumerate(completion)])
        worst = max(
            worst, float(np.max(np.abs(ref - rollouts.logprobs_BR[row, : len(completion)])))
        )
    return worst


def _check_restart_sync(engine, ckpt):
    import jax
    from flax import nnx

    # A "trained" policy: the served checkpoint plus noise, as the learner holds it.
    model = _srpo_model(ckpt)
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))

    old_pid = engine.servers[0].proc.pid
    metrics = engine.update_weights(model, version=1)
    assert engine.servers[0].proc.pid != old_pid
    assert metrics["sync/bytes"] > 0 and metrics["sync/seconds"] > 0
    exported = engine.export_dir / "step_00000001"
    assert json.loads((exported / "config.json").read_text())["rope_theta"] == 1e6
    out = engine.generate(PROMPTS, N, SamplingParams(max_new_tokens=MAX_NEW, seed=3), step=2)
    assert out.weight_version == 1
    # The server runs the exported bf16 weights (upcast to fp32): compare against references
    # on exactly those weights, from transformers (float64) and from srpo_jax itself (fp32).
    assert _max_logprob_error(out, Reference(exported)) < LOGPROB_TOL
    assert _srpo_logprobs_error(out, _srpo_model(exported)) < LOGPROB_TOL
    assert _max_logprob_error(out, Reference(ckpt)) > 100 * LOGPROB_TOL  # not the old weights


def _check_killed_server(engine):
    url, exported = engine.urls[0], engine.export_dir / "step_00000001"
    sampling = SamplingParams(max_new_tokens=MAX_NEW, seed=5)
    before = engine.generate(PROMPTS, N, sampling, step=3)
    old_pid = engine.servers[0].proc.pid
    answered = []

    def kill_after_first_answer(answered_url, step):
        answered.append(answered_url)
        if len(answered) == 1:
            os.killpg(engine.servers[0].proc.pid, signal.SIGKILL)

    engine.on_request_done = kill_after_first_answer
    try:
        # Dead process: the next request fails at once (no back-off) and nothing partial
        # comes back, although the first request of the batch was answered.
        with timer() as t, pytest.raises(RolloutError, match=rf"{url} failed POST /generate.*-9"):
            engine.generate(PROMPTS, N, sampling, step=3)
        assert t[0] < 30 and answered == [url]
    finally:
        engine.on_request_done = None
    # The next call relaunches it on the weights it last served (the step-1 export).
    after = engine.generate(PROMPTS, N, sampling, step=3)
    assert engine.num_restarts == 1 and engine.servers[0].proc.pid != old_pid
    assert after.weight_version == 1
    assert _max_logprob_error(after, Reference(exported)) < LOGPROB_TOL
    # Not asserted: the same samples as `before`. This server runs without its deterministic
    # flag, so it ignores sampling_seed and draws other tokens after a relaunch (all 48
    # differed when tried); test_sglang_resume.py runs with rollout.sglang.deterministic.
    assert after.token_ids_BR.shape == before.token_ids_BR.shape
    # The budget (max_restarts=1) is spent: the next death stops the engine with the log.
    os.killpg(engine.servers[0].proc.pid, signal.SIGKILL)
    engine.servers[0].proc.wait(timeout=30)
    with pytest.raises(RolloutError, match=r"max_restarts=1 is spent; log .*sglang_0_"):
        engine.generate(PROMPTS, N, sampling, step=3)


def test_real_server_end_to_end(engine, ckpt, tmp_path):
    # One test item on purpose: the stages share one server and must run in this order, and
    # with pytest 9.2 + pytest-xdist 3.8 the xdist_group mark no longer keeps a module's
    # tests on one worker (xdist renames item._nodeid, which pytest 9 stopped reading).
    _check_generation(engine, ckpt)
    _check_stop_tokens(engine)
    _check_missing_update_route(engine, ckpt, tmp_path)
    _check_evaluate_over_url(engine, ckpt, tmp_path)
    _check_restart_sync(engine, ckpt)
    _check_killed_server(engine)
