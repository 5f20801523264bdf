"""The copy probe: it separates a model that copies a demonstration from one that
does not, scores whole sequences exactly, and a short run of the task's own warm-up leaves
no answer prior."""

import itertools
import re

import jax
import numpy as np
import pytest
from flax import nnx

from srpo_jax.data import datasets, synthetic
from srpo_jax.data import tokenizer as tok_lib
from srpo_jax.model.config import tiny
from srpo_jax.model.qwen3 import create_sharded_model
from srpo_jax.sharding import MeshConfig, make_mesh
from srpo_jax.trainer import probe
from srpo_jax.trainer import warmup as sft

_DEMO = re.compile(r"Correct solution:\n\n<answer> (.*?) </answer>")
_PAIRS = list(itertools.product("ABCD", repeat=2))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tok_lib.build_tiny_tokenizer(path)
    return tok_lib.load_tokenizer(path)


def _stop(tok):
    return tok.convert_tokens_to_ids("<|im_end|>")


def _constructed(tok, copies: bool, p_copy: float = 0.9):
    """A 'model' over the 16 well-formed answers: with `copies`, a demonstration in the prompt
    gets p_copy and the other 15 share the rest; otherwise every answer gets 1/16."""

    def score(prompts, responses):
        out = []
        for p, r in zip(prompts, responses, strict=True):
            text = tok.decode(r[:-1])
            demo = _DEMO.findall(tok.decode(p))
            if copies and demo:
                hit = text == synthetic.answer_text(demo[-1])
                out.append(np.log(p_copy if hit else (1 - p_copy) / 15))
            else:
                out.append(np.log(1 / 16))
        return np.array(out)

    return score


def test_probe_separates_copying_from_not_copying(tok):
    test = synthetic.make_synthetic_split(24, seed=4)
    copier = probe.copy_probe(_constructed(tok, True), tok, test, _stop(tok), with_format=True)
    assert copier.teacher_gold == pytest.approx(0.9)
    assert copier.student_gold == pytest.approx(1 / 16)
    assert copier.teacher_follows_wrong == pytest.approx(0.9)
    assert copier.teacher_gold_given_wrong == pytest.approx(0.1 / 15)
    assert copier.well_formed == pytest.approx(1.0)
    assert copier.first_letter == pytest.approx((0.25,) * 4)
    assert copier.passes

    same = probe.copy_probe(_constructed(tok, False), tok, test, _stop(tok))
    assert same.teacher_gold == same.student_gold == pytest.approx(1 / 16)
    assert not same.passes
    weak = probe.copy_probe(_constructed(tok, True, p_copy=0.7), tok, test, _stop(tok))
    assert not weak.passes  # 0.7 < the 0.8 the criterion asks for


def test_wrong_answer_differs_at_every_letter():
    for x, y in _PAIRS:
        wrong = probe.wrong_answer(f"owl {x} fox {y}").split(" ")
        assert wrong[0::2] == ["owl", "fox"]
        assert wrong[1] in "ABCD" and wrong[3] in "ABCD" and (wrong[1], wrong[3]) != (x, y)
        assert wrong[1] != x and wrong[3] != y


def _tiny_model(seed=0, **overrides):
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    model = create_sharded_model(tiny(vocab_size=512, **overrides), mesh, seed=seed)
    return nnx.split(model, nnx.Param)


def test_model_score_fn_matches_a_plain_forward(tok):
    graphdef, params = _tiny_model()
    model = nnx.merge(graphdef, params)
    prompts = [[5, 9, 33, 7], [40, 41], [3] * 20]
    responses = [[11, 12, 13], [14], [15, 16]]
    got = probe.model_score_fn(graphdef, params, tok.pad_token_id, rows=2)(prompts, responses)
    for p, r, g in zip(prompts, responses, got, strict=True):
        logits = np.asarray(model(np.array([p + r], np.int32)), np.float64)[0]
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        want = sum(logp[len(p) - 1 + t, tok_id] for t, tok_id in enumerate(r))
        assert g == pytest.approx(want, abs=1e-4)


def _no_answer_prior(res) -> bool:
    """Among well-formed answers, p(gold letters) is at chance (1/16) and no first letter
    takes much more than its 1/4."""
    conditional = res.student_gold / res.well_formed
    shares = [p / res.well_formed for p in res.first_letter]
    return 0.03 < conditional < 0.10 and all(0.15 < p < 0.35 for p in shares)


def _letter_prior_model(tok):
    """A constructed model with a letter prior: it answers `A` first with p = 0.7."""

    def score(prompts, responses):
        first = [tok.decode(r[:-1]).split(" ")[2] for r in responses]
        return np.log([(0.7 if x == "A" else 0.1) / 4 for x in first])

    return score


def test_short_warmup_has_no_answer_prior(tok):
    """After 200 steps of the task's own warm-up the student answers in the format, yet its
    letters carry no answer (chance given the question) and no letter is preferred; the same
    check rejects a model with a prior."""
    warm = synthetic.make_warmup_split(512, seed=0)
    _, test = synthetic.make_synthetic_splits(64, 64, seed=0)
    stop = _stop(tok)
    prompts = [datasets.encode_prompt(tok, datasets.messages(ex)) for ex in warm]
    targets = [
        list(tok.encode(synthetic.answer_text(ex.answer), add_special_tokens=False)) + [stop]
        for ex in warm
    ]
    # The demo's model: with tiny()'s rope_theta 1e6 this 2-layer model has not learned to
    # repeat the asked words after 200 steps (well-formed 0.01); at 1e4 it has (0.89).
    graphdef, params = _tiny_model(seed=1, rope_theta=1e4)
    params, losses = sft.run_sft(
        graphdef, params, prompts, targets, sft.WarmupConfig(steps=200, lr=3e-3), seed=0,
        pad_id=tok.pad_token_id,
    )  # fmt: skip
    assert losses[-1] < losses[0] / 4
    score = probe.model_score_fn(graphdef, params, tok.pad_token_id)
    res = probe.copy_probe(score, tok, test[:32], stop, max_reprompt_len=256, with_format=True)
    assert res.well_formed > 0.5, res
    assert _no_answer_prior(res), res
    biased = probe.copy_probe(_letter_prior_model(tok), tok, test[:32], stop, with_format=True)
    assert not _no_answer_prior(biased), biased
