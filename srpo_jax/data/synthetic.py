"""A synthetic code-lookup task for the CPU demo and the method comparison, made by code.

Every word of a 32-word animal lexicon has a fixed secret *code*, one of the letters A-D
(`CODES`: a balanced random table, eight words per letter, drawn once from a fixed seed).
A question asks for the codes of two distinct words, in the order asked:

    Codes of owl and fox?

and the answer names each word, then its code, `<answer> owl B fox A </answer>`, scored by
the SciKnowEval MCQ verifier (exact match of the text between the tags, here `owl B fox A`).
Each code letter follows its word, so once the warm-up has taught the format (which copies
the asked words), a code is a fact about the token just before it: RL can learn it. With
letters only (`B A`) the policy had to learn from reward alone to look back at the asked
word, and no method moved test accuracy in a 40-step pilot (measured).
Why this shape (the criteria a miniature must meet for a comparison of GRPO, SDPO and SRPO
to test self-distillation at all):

- Something to learn from reward, which generalises. The codes are facts, like the
  knowledge questions of SciKnowEval: nothing in the question reveals them, the policy
  learns them only from reward (GRPO) or from a teacher that read a correct sibling (SDPO).
  Test questions are word pairs never asked in training, so test accuracy rises only
  as far as the facts themselves are learned. Guessing scores 1/16.
- Token-level credit can matter. Two code letters: a failed response often has one letter
  right and one wrong. GRPO gives both the same sequence-level advantage; a teacher that
  read a correct sibling agrees with the right letter and corrects the wrong one.
- A teacher that knows more than the student, with no answer prior. The supervised warm-up
  (`make_warmup_split`, run by trainer.run_warmup; a stand-in for pre-training, not part of
  SRPO) teaches the format and copying but never a code. Half of its questions end with a
  demonstration in exactly the SRPO teacher-prompt layout (SPEC section 2, `HINT_TEMPLATE`)
  and are trained to repeat it; the other half carry none and are trained on the right
  words with letters drawn at random. Every warm-up letter, in a hint or a target, is drawn
  uniformly and independently of the word, so the warm-up carries no information about
  `CODES` and leaves no letter prior: after it the student guesses (p(gold) near 1/16)
  while the same weights, reading a correct sibling's answer in the teacher prompt, copy it.
  `srpo_jax.trainer.probe` measures both. (The earlier demo task put each key at a "home letter"
  that the warm-up learned together with copying, so its teacher knew no more than its
  student.)
- No doubled hint. RL training and test questions never carry a hint, so the teacher prompt
  always holds exactly one demonstration, the layout the warm-up taught; the trainer also
  refuses training data that already ends in that layout (routing.has_reprompt_layout).

The RL train and test splits share no question (ordered word pair); the warm-up draws its
questions freely, since none of its letters is a code. Everything is a pure function of
(n, seed).
"""

from __future__ import annotations

import random

from srpo_jax.data.datasets import Example

# The answer tags are named, not shown: a literal `<answer> X Y </answer>` here put a second
# letter slot after `<answer>` in every prompt, a decoy for the copying the warm-up teaches.
SYNTHETIC_SYSTEM_PROMPT = (
    "Name each asked word, in order, then its code letter (A, B, C or D), inside answer tags."
)
LETTERS = ("A", "B", "C", "D")
NUM_KEYS = 2
WORDS = (
    "ant", "ape", "asp", "bat", "bee", "boa", "cat", "cod", "cow", "dog", "eel", "elk",
    "emu", "fox", "gnu", "hen", "jay", "koi", "owl", "pig", "ram", "rat", "yak", "orca",
    "bear", "crab", "deer", "duck", "frog", "goat", "lion", "wolf",
)  # fmt: skip
_TABLE_SEED = 17  # the task's fixed "world": which word has which code


def _code_table() -> dict[str, str]:
    letters = [x for x in LETTERS for _ in range(len(WORDS) // len(LETTERS))]
    random.Random(_TABLE_SEED).shuffle(letters)
    return dict(zip(WORDS, letters, strict=True))


CODES = _code_table()
DATASET_NAME = "synthetic"
# The SRPO teacher's reprompt suffix (SPEC section 2) around a demonstration; routing.reprompt
# writes the same text (tests/data/test_synthetic.py checks that the two agree).
HINT_TEMPLATE = "\nCorrect solution:\n\n{demonstration}\n\nCorrectly solve the original question."

Question = tuple[str, ...]  # the asked words, in order
MAX_QUESTIONS = len(WORDS) * (len(WORDS) - 1)  # ordered pairs of distinct words


def answer_text(answer: str) -> str:
    """The response a perfect policy gives for an answer such as `owl B fox A`."""
    return f"<answer> {answer} </answer>"


def answer_of(words: Question, letters: tuple[str, ...] | None = None) -> str:
    """`owl B fox A`: each word, then its code (or the given `letters`, one per word)."""
    letters = tuple(CODES[w] for w in words) if letters is None else letters
    if len(letters) != len(words):
        raise ValueError(f"answer_of: {len(words)} words but {len(letters)} letters")
    return " ".join(f"{w} {x}" for w, x in zip(words, letters, strict=True))


def with_letters(answer: str, letters: tuple[str, ...]) -> str:
    """The same answer words with other letters (`owl B fox A`, (C, D) -> `owl C fox D`)."""
    return answer_of(tuple(answer.split(" ")[0::2]), letters)


def letters_of(answer: str) -> tuple[str, ...]:
    """The code letters of an answer (`owl B fox A` -> (B, A))."""
    return tuple(answer.split(" ")[1::2])


def question_text(words: Question, hint: str | None = None) -> str:
    """The question; with `hint`, followed by that answer in the teacher-prompt layout."""
    text = f"Codes of {' and '.join(words)}?"
    if hint is not None:
        text += HINT_TEMPLATE.format(demonstration=answer_text(hint))
    return text


def question_key(example: Example) -> Question:
    """The asked words of a synthetic example (hint or not)."""
    first_line = example.prompt.split("\n", 1)[0]
    return tuple(first_line.removeprefix("Codes of ").removesuffix("?").split(" and "))


def _draw_distinct(n: int, rng: random.Random, exclude: frozenset[Question]) -> list[Question]:
    if n + len(exclude) > MAX_QUESTIONS:
        raise ValueError(
            f"synthetic task: {n} questions asked besides {len(exclude)} excluded, but the "
            f"{len(WORDS)}-word lexicon has only {MAX_QUESTIONS} ordered word pairs"
        )
    seen: set[Question] = set(exclude)
    drawn: list[Question] = []
    while len(drawn) < n:
        q = tuple(rng.sample(WORDS, NUM_KEYS))
        if q not in seen:
            seen.add(q)
            drawn.append(q)
    return drawn


def _example(idx: int, prompt: str, answer: str) -> Example:
    return Example(
        idx=idx,
        kind="mcq",
        dataset=DATASET_NAME,
        prompt=prompt,
        system=SYNTHETIC_SYSTEM_PROMPT,
        answer=answer,
    )


def make_synthetic_split(
    n: int, seed: int, *, exclude: frozenset[Question] = frozenset(), start_idx: int = 0
) -> list[Example]:
    """n distinct unhinted questions with their gold answers, none of them in `exclude`."""
    if n < 1:
        raise ValueError(f"make_synthetic_split: n must be >= 1, got {n}")
    qs = _draw_distinct(n, random.Random(seed), exclude)
    return [_example(start_idx + i, question_text(q), answer_of(q)) for i, q in enumerate(qs)]


def make_synthetic_splits(n_train: int, n_test: int, seed: int) -> tuple[list[Example], ...]:
    """(train, test) RL splits: no hints, gold answers, no shared question."""
    test = make_synthetic_split(n_test, seed + 1_000_003, start_idx=n_train)
    excluded = frozenset(question_key(ex) for ex in test)
    train = make_synthetic_split(n_train, seed, exclude=excluded)
    return train, test


def _random_letters(rng: random.Random) -> tuple[str, ...]:
    return tuple(rng.choice(LETTERS) for _ in range(NUM_KEYS))


def make_warmup_split(n: int, seed: int, *, hint_frac: float = 0.75) -> list[Example]:
    """Supervised warm-up pairs; each Example's `answer` is its SFT target, never a code.

    A `hint_frac` share (rounded down) ends with a demonstration (the asked words with random
    letters) in the teacher-prompt layout and targets that demonstration (copying); the rest
    carry no hint and target the asked words with random letters (the format, which repeats
    the asked words). Letters are uniform and independent of the words, so no code is taught
    and no letter is preferred.
    """
    if n < 1:
        raise ValueError(f"make_warmup_split: n must be >= 1, got {n}")
    if not 0.0 <= hint_frac <= 1.0:
        raise ValueError(f"make_warmup_split: hint_frac must be in [0, 1], got {hint_frac}")
    rng = random.Random(seed + 2_000_029)
    hinted = set(rng.sample(range(n), int(n * hint_frac)))
    out = []
    for i in range(n):
        words = tuple(rng.sample(WORDS, NUM_KEYS))
        target = answer_of(words, _random_letters(rng))
        hint = target if i in hinted else None
        out.append(_example(i, question_text(words, hint=hint), target))
    return out


def corpus_sample(n: int, seed: int) -> list[str]:
    """Text for training the tiny tokenizer: whole demo chats (role names, system prompt,
    question, answer) without the added tokens, so BPE merges what the demo actually sees."""
    return [
        f"system\n{ex.system}\nuser\n{ex.prompt}\nassistant\n\n\n{answer_text(ex.answer)}"
        for ex in make_warmup_split(n, seed)
    ]
