"""Copy probe: does the self-teacher know more than the student?

Self-distillation can only help when the teacher, which reads a correct sibling's response in
its prompt, puts more probability on a correct answer than the student, which does not. The
probe measures that on held-out questions of the synthetic task, with the trainer's own
teacher-prompt code (routing.render_teacher_prompt) around a demonstration:

- student  p(gold | question)                                  (the policy as it samples)
- teacher  p(gold | question + correct demonstration)           (what SDPO would distil)
- teacher  p(wrong | question + wrong demonstration)            (does it read the context?)

`p(x)` is the probability of the whole response `x` (format, words, letters and the stop
token), teacher-forced, so a probe value is an exact sequence probability whatever the
tokenisation. The demonstration is the gold response text, which is what a correct sibling
decodes to; the wrong demonstration shifts every letter by one (A->B, ..., D->A), so it
differs from gold at every code letter.

`well_formed` sums the student's probability of every well-formed response (the asked words
with each of the 16 letter pairs): a lower bound on the share of T = 1 rollouts the verifier
can parse (other tokenisations of the same text would add to it). `first_letter` is the
student's mean probability of each first letter, which shows a letter prior if there is one.

At step 0 of RL the EMA teacher equals the student (phi_0 = theta_0), so both are scored with
one set of params; `score_fn` is any (prompts, responses) -> log p [N] function, which lets the
tests use constructed models.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srpo_jax.algo import routing
from srpo_jax.data import datasets, synthetic
from srpo_jax.trainer.warmup import pack_pairs, target_logprobs

ScoreFn = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], np.ndarray]
_SHIFT = dict(zip("ABCD", "BCDA", strict=True))
# Criterion (a), fixed before any method comparison ran: the teacher with a correct
# demonstration >= 0.8, the student <= 0.5, a wrong demonstration followed (>= 0.5, > gold).
TEACHER_MIN, STUDENT_MAX, FOLLOW_MIN = 0.8, 0.5, 0.5
# Criterion (b): at least 95% of the student's mass on well-formed responses.
WELL_FORMED_MIN = 0.95


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    n: int
    student_gold: float
    teacher_gold: float
    teacher_follows_wrong: float  # teacher p(wrong answer | wrong demonstration)
    teacher_gold_given_wrong: float  # teacher p(gold | wrong demonstration)
    well_formed: float | None = None
    first_letter: tuple[float, ...] | None = None

    @property
    def passes(self) -> bool:
        """Criterion (a), and (b)'s well-formed share when it was measured."""
        copies = (
            self.teacher_gold >= TEACHER_MIN
            and self.student_gold <= STUDENT_MAX
            and self.teacher_follows_wrong >= FOLLOW_MIN
            and self.teacher_follows_wrong > self.teacher_gold_given_wrong
        )
        return copies and (self.well_formed is None or self.well_formed >= WELL_FORMED_MIN)

    def line(self) -> str:
        extra = "" if self.well_formed is None else f"; well-formed >= {self.well_formed:.3f}"
        if self.first_letter is not None:
            extra += ", first letter " + "/".join(f"{p:.2f}" for p in self.first_letter)
        return (
            f"copy probe ({self.n} test questions): teacher p(gold | correct demo) "
            f"{self.teacher_gold:.3f} vs student p(gold) {self.student_gold:.3f}; wrong demo: "
            f"teacher p(demo's answer) {self.teacher_follows_wrong:.3f}, p(gold) "
            f"{self.teacher_gold_given_wrong:.3f}{extra} -> {'PASS' if self.passes else 'FAIL'}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"passes": self.passes}


def wrong_answer(answer: str) -> str:
    """Every code letter shifted by one: wrong at each letter, still well-formed."""
    return synthetic.with_letters(answer, tuple(_SHIFT[x] for x in synthetic.letters_of(answer)))


def copy_probe(
    score_fn: ScoreFn,
    tokenizer,
    examples: Sequence[datasets.Example],
    stop_id: int,
    *,
    max_reprompt_len: int = 10240,
    with_format: bool = False,
) -> ProbeResult:
    """The probe on `examples` (held-out synthetic questions with gold answers)."""

    def response(answer):
        text = synthetic.answer_text(answer)
        return list(tokenizer.encode(text, add_special_tokens=False)) + [stop_id]

    def teacher_prompt(msgs, answer):
        demo = synthetic.answer_text(answer)
        ids = routing.render_teacher_prompt(tokenizer, msgs, demo, max_reprompt_len)
        if ids is None:
            raise ValueError(
                f"copy probe: a teacher prompt is over max_reprompt_len={max_reprompt_len}"
            )
        return list(ids)

    prompts, responses = [], []
    for ex in examples:
        msgs = datasets.messages(ex)
        wrong = wrong_answer(ex.answer)
        gold_ids, wrong_ids = response(ex.answer), response(wrong)
        student = datasets.encode_prompt(tokenizer, msgs)
        prompts += [student, teacher_prompt(msgs, ex.answer)] + [teacher_prompt(msgs, wrong)] * 2
        responses += [gold_ids, gold_ids, wrong_ids, gold_ids]
    p_N4 = np.exp(np.asarray(score_fn(prompts, responses), np.float64)).reshape(-1, 4)
    well_formed = first_letter = None
    if with_format:
        well_formed, first_letter = _format_mass(score_fn, tokenizer, examples, response)
    return ProbeResult(
        len(examples),
        *(float(v) for v in p_N4.mean(axis=0)),
        well_formed=well_formed,
        first_letter=first_letter,
    )


def _format_mass(score_fn, tokenizer, examples, response):
    """(student mass on all well-formed answers, mean mass per first letter)."""
    pairs = list(itertools.product(synthetic.LETTERS, repeat=synthetic.NUM_KEYS))
    prompts, responses = [], []
    for ex in examples:
        student = datasets.encode_prompt(tokenizer, datasets.messages(ex))
        prompts += [student] * len(pairs)
        responses += [response(synthetic.with_letters(ex.answer, p)) for p in pairs]
    p_NP = np.exp(np.asarray(score_fn(prompts, responses), np.float64)).reshape(-1, len(pairs))
    by_first = p_NP.reshape(len(examples), len(synthetic.LETTERS), -1).sum(axis=2)
    return float(p_NP.sum(axis=1).mean()), tuple(float(v) for v in by_first.mean(axis=0))


def model_score_fn(graphdef, params, pad_id: int, *, rows: int = 64) -> ScoreFn:
    """log p(response | prompt) per row under the model (fp32 log-softmax), `rows` at a time.

    Rows are padded to a fixed count and lengths to power-of-two buckets, so a probe compiles
    a handful of programs whatever the number of questions.
    """
    seq_logp = jax.jit(lambda p, batch: jnp.sum(target_logprobs(graphdef, p, batch), axis=1))

    def score(prompts, responses):
        out = []
        for s in range(0, len(prompts), rows):
            p, r = list(prompts[s : s + rows]), list(responses[s : s + rows])
            n = len(p)
            p += [p[-1]] * (rows - n)  # pad rows: one batch shape
            r += [r[-1]] * (rows - n)
            out.append(np.asarray(seq_logp(params, pack_pairs(p, r, pad_id)))[:n])
        return np.concatenate(out)

    return score
