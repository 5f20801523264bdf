"""Split loading, loader errors (file and line named), chat messages, prompt filtering and
the resumable epoch sampler."""

import json
import random

import pytest

from srpo_jax.data import datasets
from srpo_jax.data import tokenizer as tokmod

ROW = {
    "idx": 7,
    "kind": "mcq",
    "dataset": "sciknoweval",
    "prompt": "Q?\n\nA: x\nB: y",
    "system": "sys",
    "answer": "A",
    "elo": 1500,
}


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    return tokmod.load_tokenizer(tokmod.build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "benchmark,n_train,n_test",
    [("chem", 1890, 210), ("phys", 720, 80), ("bio", 450, 50), ("materials", 841, 94)],
)
def test_sciknoweval_sizes(packaged_data, benchmark, n_train, n_test):
    train = datasets.load_split(packaged_data, benchmark, "train")
    test = datasets.load_split(packaged_data, benchmark, "test")
    assert (len(train), len(test)) == (n_train, n_test)
    assert not {ex.idx for ex in train} & {ex.idx for ex in test}
    assert all(ex.kind == "mcq" and ex.answer in "ABCD" and ex.system for ex in test)


def test_tooluse_test_and_missing_train(packaged_data, tmp_path):
    test = datasets.load_split(packaged_data, "tooluse", "test")
    assert len(test) == 68 and all(ex.kind == "tooluse" and ex.system is None for ex in test)
    (tmp_path / "tooluse").mkdir()
    with pytest.raises(FileNotFoundError, match="tooluse/train.json") as e:
        datasets.load_split(tmp_path, "tooluse", "train")
    assert "lasgroup/SDPO" in str(e.value) and "hash-object" in str(e.value)


def test_a_data_dir_holds_some_splits_and_the_package_the_rest(tmp_path):
    # A user folder with a fetched tooluse/train.json and a replacement chemistry test split.
    (tmp_path / "tooluse").mkdir()
    row = dict(ROW, kind="tooluse", dataset="tooluse", system=None, answer="[]")
    _write(tmp_path / "tooluse" / "train.json", [json.dumps(dict(row, idx=i)) for i in range(3)])
    (tmp_path / "sciknoweval" / "chemistry").mkdir(parents=True)
    _write(tmp_path / "sciknoweval" / "chemistry" / "test.json", [json.dumps(ROW)])
    assert [ex.idx for ex in datasets.load_split(tmp_path, "tooluse", "train")] == [0, 1, 2]
    assert [ex.idx for ex in datasets.load_split(str(tmp_path), "chem", "test")] == [7]
    assert len(datasets.load_split(tmp_path, "chem", "train")) == 1890  # the package's
    assert len(datasets.load_split(tmp_path, "tooluse", "test")) == 68
    # Writers get the folder's own path, never the package's (whose files must stay upstream's).
    assert datasets.split_path(tmp_path, "chem", "train") == (
        tmp_path / "sciknoweval" / "chemistry" / "train.json"
    )
    assert datasets.find_split(tmp_path, "chem", "train").is_relative_to(datasets.PACKAGED_DATA_DIR)


def test_empty_data_dir_reads_the_user_data_folder_first(tmp_path, monkeypatch):
    # Where `python -m srpo_jax.data.fetch` puts tooluse/train.json by default.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    user = datasets.user_data_dir()
    assert user == tmp_path / "srpo_jax" / "data"
    with pytest.raises(FileNotFoundError, match="python -m srpo_jax.data.fetch") as e:
        datasets.load_split("", "tooluse", "train")
    assert str(user / "tooluse" / "train.json") in str(e.value)
    (user / "tooluse").mkdir(parents=True)
    row = dict(ROW, kind="tooluse", dataset="tooluse", system=None, answer="[]")
    _write(user / "tooluse" / "train.json", [json.dumps(row)])
    assert [ex.kind for ex in datasets.load_split("", "tooluse", "train")] == ["tooluse"]
    assert len(datasets.load_split("", "tooluse", "test")) == 68  # still the package's


def test_unknown_benchmark_or_split(tmp_path):
    with pytest.raises(ValueError, match="'chemistry'"):
        datasets.load_split(tmp_path, "chemistry", "train")
    with pytest.raises(ValueError, match="'dev'"):
        datasets.load_split(tmp_path, "chem", "dev")


def test_loader_errors_name_file_and_line(tmp_path):
    good = json.dumps(ROW)
    path = _write(tmp_path / "bad_json.json", [good, '{"idx": 1, "kind":'])
    with pytest.raises(ValueError, match=r"bad_json\.json:2: malformed JSON"):
        datasets.load_jsonl(path)
    missing = {k: v for k, v in ROW.items() if k != "answer"}
    path = _write(tmp_path / "missing.json", [good, good, json.dumps(missing)])
    with pytest.raises(ValueError, match=r"missing\.json:3: missing field\(s\) \['answer'\]"):
        datasets.load_jsonl(path)
    path = _write(tmp_path / "kind.json", [json.dumps(dict(ROW, kind="essay"))])
    with pytest.raises(ValueError, match=r"kind\.json:1: unknown kind 'essay'"):
        datasets.load_jsonl(path)
    path = _write(tmp_path / "type.json", [json.dumps(dict(ROW, system=3))])
    with pytest.raises(ValueError, match=r"type\.json:1: field 'system'"):
        datasets.load_jsonl(path)
    path = _write(tmp_path / "empty.json", ["", "  "])
    with pytest.raises(ValueError, match=r"empty\.json: empty split"):
        datasets.load_jsonl(path)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        datasets.load_jsonl(tmp_path / "absent.json")


def test_messages_system_only_when_present():
    ex = datasets.Example(**{k: ROW[k] for k in datasets.REQUIRED_FIELDS})
    assert datasets.messages(ex) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Q?\n\nA: x\nB: y"},
    ]
    no_sys = datasets.Example(**dict({k: ROW[k] for k in datasets.REQUIRED_FIELDS}, system=None))
    assert datasets.messages(no_sys) == [{"role": "user", "content": "Q?\n\nA: x\nB: y"}]


def test_prompt_set_renders_and_filters(tiny_tok):
    base = {k: ROW[k] for k in datasets.REQUIRED_FIELDS}
    exs = [datasets.Example(**dict(base, idx=i, prompt="word " * (i * 10))) for i in range(6)]
    full = datasets.PromptSet(exs, tiny_tok, max_prompt_len=10_000)
    assert len(full) == 6 and full.num_filtered == 0
    expected = "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n" + exs[2].prompt
    expected += "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tiny_tok.decode(full.prompt_ids[2]) == expected
    lengths = [len(ids) for ids in full.prompt_ids]
    assert lengths == sorted(lengths) and len(set(lengths)) == 6
    cut = lengths[3]  # keep prompts 0..3 (length <= cut), drop 4 and 5
    part = datasets.PromptSet(exs, tiny_tok, max_prompt_len=cut)
    assert len(part) == 4 and part.num_filtered == 2 and part.filtered_idx == [4, 5]
    assert [ex.idx for ex in part.examples] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="all 6 prompts exceed max_prompt_len=1"):
        datasets.PromptSet(exs, tiny_tok, max_prompt_len=1)


def test_sampler_covers_each_epoch_and_is_seeded():
    s = datasets.EpochSampler(10, datasets.SamplerCursor(seed=3))
    first, second = s.next_indices(10), s.next_indices(10)
    assert sorted(first) == list(range(10)) == sorted(second)
    assert first != second  # a fresh permutation per epoch
    assert s.cursor == datasets.SamplerCursor(seed=3, epoch=2, position=0)
    again = datasets.EpochSampler(10, 3)
    assert again.next_indices(20) == first + second
    assert datasets.EpochSampler(10, 4).next_indices(10) != first


def test_sampler_cursor_save_restore_exact():
    rng = random.Random(0)
    sizes = [rng.randint(1, 7) for _ in range(30)]
    ref = datasets.EpochSampler(13, 11)
    expected = [ref.next_indices(n) for n in sizes]
    for cut in [0, 1, 5, 17, 29]:
        s = datasets.EpochSampler(13, 11)
        got = [s.next_indices(n) for n in sizes[:cut]]
        saved = json.loads(json.dumps(s.state_dict()))  # through a checkpoint-like format
        resumed = datasets.EpochSampler(13, 0)
        resumed.load_state_dict(saved)
        got += [resumed.next_indices(n) for n in sizes[cut:]]
        assert got == expected, cut


def test_sampler_rejects_bad_cursor():
    with pytest.raises(ValueError, match="position 5 outside"):
        datasets.EpochSampler(5, datasets.SamplerCursor(seed=0, position=5))
    with pytest.raises(ValueError, match="missing"):
        datasets.EpochSampler(5, 0).load_state_dict({"seed": 1})
