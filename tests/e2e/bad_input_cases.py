"""The bad-input cases (records of tests/e2e/bad_input_table.py's `Case`), in page order.

Each setup writes one broken input under the case's folder from the good ones (`Inputs`).
"""

from __future__ import annotations

import json
import pathlib
import shutil

from bad_input_table import CHEM, DEMO, REPO_ROOT, Case, Inputs

DEMO_FILE = REPO_ROOT / "configs" / "demo.py"

MAIN = "srpo_jax.main"
COMPARE = "srpo_jax.compare.run"
PLAN = "srpo_jax.plan"
EXPORT = "srpo_jax.export"
EVALUATE = "srpo_jax.evaluate"
ROW = {"idx": 1, "kind": "mcq", "dataset": "d", "prompt": "Q?", "system": None, "answer": "A"}
MISSING_TENSOR = "model.layers.1.mlp.up_proj.weight"


def _copy(src: pathlib.Path, case: pathlib.Path, name: str) -> pathlib.Path:
    dest = case / name
    shutil.copytree(src, dest)
    return dest


def _write(path: pathlib.Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _hf_file(name: str, data: bytes | str):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        _write(_copy(inputs.hf, case, "hf") / name, data)

    return setup


def _hf_config(**changes):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        hf = _copy(inputs.hf, case, "hf")
        d = json.loads((hf / "config.json").read_text())
        d.update(changes)
        _write(hf / "config.json", json.dumps(d))

    return setup


def _lengths_file(*lines: str):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        _write(case / "lengths.jsonl", "\n".join(lines) + "\n")

    return setup


def _hf_without(name: str):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        (_copy(inputs.hf, case, "hf") / name).unlink()

    return setup


def _hf_truncated_weights(case: pathlib.Path, inputs: Inputs) -> None:
    path = _copy(inputs.hf, case, "hf") / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _hf_tensor(missing: bool):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        import numpy as np
        from safetensors.numpy import load_file, save_file

        hf = _copy(inputs.hf, case, "hf")
        tensors = load_file(hf / "model.safetensors")
        if missing:
            del tensors[MISSING_TENSOR]
        else:
            name = "model.layers.0.self_attn.k_proj.weight"
            tensors[name] = np.zeros((tensors[name].shape[0] + 8, tensors[name].shape[1]))
            tensors[name] = tensors[name].astype(np.float32)
        save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
        index = hf / "model.safetensors.index.json"
        if missing and index.exists():
            d = json.loads(index.read_text())
            del d["weight_map"][MISSING_TENSOR]
            index.write_text(json.dumps(d))

    return setup


def _tok_file(name: str, data: bytes | str | None):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        tok = _copy(inputs.tok, case, "tok")
        if data is None:
            (tok / name).unlink()
        else:
            _write(tok / name, data)

    return setup


def _split(split: str, data: bytes | str | None):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        path = _copy(inputs.data, case, "data") / "sciknoweval" / "chemistry" / f"{split}.json"
        if data is None:
            path.unlink()
        else:
            _write(path, data)

    return setup


def _file(name: str, data: bytes | str):
    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        _write(case / name, data)

    return setup


def _run_dir(*steps: int, full_out: bool = False):
    """A run's workdir as export and evaluate read it: the demo's config.json and checkpoint
    folders at `steps` in {case}/run (and, with full_out, a user's file in the --out folder
    {case}/wd, which the table checks is left as it was)."""

    def setup(case: pathlib.Path, inputs: Inputs) -> None:
        from srpo_jax import config as config_lib

        cfg = config_lib.from_config_dict(config_lib.load_config_file(str(DEMO_FILE)))
        _write(case / "run" / "config.json", json.dumps(config_lib.to_dict(cfg)))
        for step in steps:
            (case / "run" / "checkpoints" / str(step)).mkdir(parents=True)
        if full_out:
            _write(case / "wd" / "keep.txt", "a user's file")

    return setup


def _narrow_checkpoint(case: pathlib.Path, inputs: Inputs) -> None:
    """A demo run's checkpoint in {wd}, but of a model with hidden_size 32 instead of 64 (and
    the demo's tokenizer, which a demo run builds there first)."""
    import jax
    from flax import nnx

    from srpo_jax.config import from_config_dict, load_config_module
    from srpo_jax.learner import train_step as learner
    from srpo_jax.model.qwen3 import create_sharded_model
    from srpo_jax.sharding import MeshConfig, make_mesh
    from srpo_jax.trainer import checkpoint

    demo = load_config_module(str(REPO_ROOT / "configs" / "demo.py"), "demo.py").get_config()
    demo.model.overrides["hidden_size"] = 32
    narrow = from_config_dict(demo)
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    model = create_sharded_model(narrow.model.architecture(), mesh, seed=0)
    _, params = nnx.split(model, nnx.Param)
    state = learner.init_state(params, learner.StepSettings.from_config(narrow), mesh)
    manager = checkpoint.CheckpointManager(case / "wd" / "checkpoints", async_save=False)
    manager.save(1, state, {"weight_version": 1})
    manager.close()
    shutil.copytree(inputs.tok, case / "wd" / "tokenizer")


GOOD = json.dumps(ROW)
# The good chem split: train prompts of mixed lengths, so that max_prompt_len=70 keeps the
# short rows (all test rows) and drops the long ones of some 200 words.
MIXED_ROWS = {
    "train": [dict(ROW, idx=i, prompt="Q?" if i % 2 else "word " * 200) for i in range(5)],
    "test": [dict(ROW, idx=i, prompt="Q?") for i in range(2)],
}
NO_PROMPT = {k: v for k, v in ROW.items() if k != "prompt"}
CFG = "Config file"
FLAG = "Setting"
HF = "Hugging Face directory"
TOK = "Tokenizer directory"
DATA = "Data directory"
WD = "Workdir"
OTHER = "Other entry points"

H = (DEMO, "--config.model.preset=", "--config.model.hf_path={case}/hf")  # weights from {case}
T = (DEMO, "--config.tokenizer.path={case}/tok")
D = (DEMO, *CHEM, "--config.data.data_dir={case}/data")

# fmt: off
CASES: list[Case] = [
    # name, group, title, args, error (after "error: "), what to do, **how it runs
    Case("config_missing", CFG, "does not exist", ("--config=configs/nope.py",),
         "cannot read config file 'configs/nope.py': No such file or directory",
         "Check the path (relative to the current directory)."),
    Case("config_missing_override", CFG, "does not exist, with an override",
         ("--config=configs/nope.py", "--config.train.num_steps=5"),
         "cannot read config file 'configs/nope.py': No such file or directory",
         "Check the path: the override is not the problem."),
    Case("config_dir", CFG, "is a directory", ("--config=configs",),
         "cannot read config file 'configs': Is a directory",
         "Name the .py file."),
    Case("config_syntax", CFG, "is not valid Python", ("--config={case}/bad.py",),
         "config file …/bad.py line 1: invalid syntax",
         "Fix the file at the line named.", setup=_file("bad.py", "def get_config(:\n")),
    Case("config_not_utf8", CFG, "is not UTF-8", ("--config={case}/bad.py",),
         "config file …/bad.py line 1: (unicode error) 'utf-8' codec can't decode byte 0xe9 "
         "in position 3: unexpected end of data",
         "Save the file as UTF-8.", setup=_file("bad.py", b'X = "caf\xe9"\n')),
    Case("config_no_get_config", CFG, "has no get_config", ("--config={case}/bad.py",),
         "config file …/bad.py defines no get_config()",
         "Define get_config() returning a ConfigDict.", setup=_file("bad.py", "X = 1\n")),
    Case("config_returns_none", CFG, "get_config returns nothing", ("--config={case}/bad.py",),
         "config file …/bad.py: get_config() returned None",
         "Return the ConfigDict.", setup=_file("bad.py", "def get_config():\n    pass\n")),
    Case("config_returns_list", CFG, "get_config returns a list", ("--config={case}/bad.py",),
         "the config must be a ConfigDict (a mapping), got [1, 2]",
         "Return a ConfigDict (start from configs/base.py).",
         setup=_file("bad.py", "def get_config():\n    return [1, 2]\n")),
    Case("config_bad_arg", CFG, "unknown config argument",
         ("--config=configs/qwen3_8b_chem.py:method=grpoo",),
         "config.algo.method (config argument method=) must be one of 'grpo', 'sdpo', 'srpo', "
         "'srpo_no_dw', 'advantage_mix', got 'grpoo'",
         "Use a listed method name."),
    # ------------------------------------------------------------------ settings
    Case("unknown_key", FLAG, "misspelt key", (DEMO, "--config.train.num_step=5"),
         "unknown config key config.train.num_step (did you mean config.train.num_steps?)",
         "Fix the spelling; the message lists the closest valid keys."),
    Case("wrong_type_bool", FLAG, "not a boolean", (DEMO, "--config.algo.add_tail=3"),
         "flag --config.algo.add_tail=3: ('Non-boolean argument to boolean flag', '3')",
         "Give True or False."),
    Case("wrong_type_int", FLAG, "not an integer", (DEMO, "--config.algo.group_size=2.5"),
         "flag --config.algo.group_size=2.5: invalid literal for int() with base 10: '2.5'",
         "Give an integer."),
    Case("lr_negative", FLAG, "out of range", (DEMO, "--config.optim.lr=-1"),
         "config.optim.lr must be > 0, got -1.0", "Use a value in the stated range."),
    Case("lr_inf", FLAG, "infinite", (DEMO, "--config.optim.lr=inf"),
         "config.optim.lr must be finite, got inf", "Give a finite number."),
    Case("lr_nan", FLAG, "not a number", (DEMO, "--config.optim.lr=nan"),
         "config.optim.lr must be finite, got nan", "Give a finite number."),
    Case("clip_inf", FLAG, "infinite (any float setting)", (DEMO, "--config.algo.clip_high=inf"),
         "config.algo.clip_high must be finite, got inf", "Give a finite number."),
    Case("group_size_one", FLAG, "a group of one", (DEMO, "--config.algo.group_size=1"),
         "config.algo.group_size must be >= 2, got 1",
         "Use at least 2 samples per prompt."),
    Case("num_steps_negative", FLAG, "negative count", (DEMO, "--config.train.num_steps=-1"),
         "config.train.num_steps must be >= 1, got -1", "Use a count >= 1."),
    Case("max_prompt_len_zero", FLAG, "zero length", (DEMO, "--config.data.max_prompt_len=0"),
         "config.data.max_prompt_len must be >= 1, got 0", "Use a length >= 1."),
    Case("temperature_negative", FLAG, "negative temperature",
         (DEMO, "--config.rollout.temperature=-1"),
         "config.rollout.temperature must be >= 0, got -1.0", "Use >= 0 (0: greedy)."),
    Case("top_p_big", FLAG, "top-p above 1", (DEMO, "--config.rollout.top_p=1.5"),
         "config.rollout.top_p must be in (0, 1], got 1.5", "Use a value in (0, 1]."),
    Case("overlap", FLAG, "rollout overlap other than 0 or 1",
         (DEMO, "--config.rollout.overlap=2"),
         "config.rollout.overlap must be 0 or 1, got 2",
         "Use 0 (on-policy) or 1 (one step off-policy)."),
    Case("dtype", FLAG, "unsupported dtype", (DEMO, "--config.model.dtype=float16"),
         "config.model.dtype must be one of 'bfloat16', 'float32', got 'float16'",
         "Use bfloat16 or float32."),
    Case("mini_batch", FLAG, "mini-batch does not divide the batch",
         (DEMO, "--config.train.mini_batch_prompts=3"),
         "config.train.mini_batch_prompts must divide config.train.prompts_per_step (16), got 3",
         "Choose a divisor of train.prompts_per_step."),
    Case("pack_budget", FLAG, "token budget below one stream",
         (DEMO, "--config.train.packed=true", "--config.train.micro_batch_tokens=64"),
         "config.train.micro_batch_tokens = 64 is less than config.train.pack_len = 272: a "
         "micro-batch must hold one stream",
         "Raise train.micro_batch_tokens to at least train.pack_len (or 0: one per mini-batch)."),
    Case("pack_budget_shards", FLAG, "token budget below one stream per batch shard",
         (DEMO, "--config.train.packed=true", "--config.mesh.fsdp=2",
          "--config.train.micro_batch_tokens=300"),
         "config.train.micro_batch_tokens = 300 is less than config.train.pack_len * "
         "mesh.data * mesh.fsdp = 544: a micro-batch must hold one stream per batch shard",
         "Raise train.micro_batch_tokens to at least pack_len x data x fsdp (or 0: one per "
         "mini-batch)."),
    Case("pack_len", FLAG, "a row longer than a packed stream",
         (DEMO, "--config.train.packed=true", "--config.train.pack_len=128"),
         "config.data.max_prompt_len + config.data.max_response_len = 144 is longer than "
         "config.train.pack_len = 128: a row must fit one packed stream",
         "Raise train.pack_len (or 0: the longest padded row)."),
    Case("mesh_rows", FLAG, "mesh cannot split the rows", (DEMO, "--config.mesh.fsdp=3"),
         "config.train.micro_batch_rows (rows per micro-batch = 128) must be divisible by "
         "mesh.data * mesh.fsdp = 3", "Make mesh.data * mesh.fsdp divide the rows."),
    Case("mesh_zero", FLAG, "mesh axis 0", (DEMO, "--config.mesh.fsdp=0"),
         "config.mesh: MeshConfig.fsdp must be a positive int, got 0",
         "Use axes >= 1."),
    Case("positional", FLAG, "stray argument", (DEMO, "extra"),
         "unexpected positional arguments: extra", "Remove it; flags start with --."),
    Case("unknown_flag", FLAG, "unknown flag", (DEMO, "--work_dir=/tmp/x"),
         "Unknown command line flag 'work_dir'. Did you mean: workdir ?",
         "Fix the spelling (--help lists the flags)."),
    Case("overrides_vocab", FLAG, "model override out of range",
         (DEMO, "--config.model.overrides.vocab_size=-1"),
         "config.model.overrides: Qwen3Config.vocab_size must be a positive int, got -1",
         "Use a positive size.",
         run="backend"),
    Case("topk_vocab", FLAG, "top-k larger than the vocabulary",
         (DEMO, "--config.algo.topk=100000"), "config.algo.topk must be <= the vocab_size "
         "(512), got 100000", "Use a top-k within the model's vocabulary.", run="backend"),
    Case("rollout_topk_vocab", FLAG, "sampling top-k larger than the vocabulary",
         (DEMO, "--config.rollout.top_k=100000"), "config.rollout.top_k must be -1 (off) or <= "
         "the vocab_size (512), got 100000", "Use -1 (off) or a top-k within the vocabulary.",
         run="backend"),
    Case("mesh_devices", FLAG, "mesh does not match the device count",
         (DEMO, "--config.mesh.fsdp=2"), "config.mesh data*fsdp*tensor = 1*2*1 = 2 must equal "
         "the number of devices (1); e.g. --config.mesh.fsdp=1", "Apply the suggested setting.",
         run="backend"),
    Case("mesh_tensor", FLAG, "tensor axis larger than the device count",
         (DEMO, "--config.mesh.tensor=3"),
         "config.mesh data*fsdp*tensor = 1*1*3 = 3 must equal the number of devices (1); e.g. "
         "--config.mesh.tensor=1",
         "Apply the suggested setting.", run="process"),
    # ------------------------------------------------------------------ workdir
    Case("workdir_missing", WD, "no --workdir", (DEMO,),
         "--workdir is required (checkpoints and metrics go there)", "Pass --workdir.",
         workdir=False),
    Case("workdir_file", WD, "is a file", (DEMO, "--workdir={case}/file"),
         "--workdir …/file is not a directory",
         "Point --workdir at a folder (created when missing).", workdir=False,
         setup=_file("file", "x")),
    Case("workdir_uncreatable", WD, "cannot be created", (DEMO, "--workdir={case}/file/wd"),
         "--workdir …/file/wd cannot be created: …/file is not a writable directory",
         "Choose a writable location.", workdir=False, setup=_file("file", "x")),
    Case("ckpt_other_shape", WD, "holds a checkpoint of another model", (DEMO,),
         "checkpoint step 1 in …/wd/checkpoints does not match the train state (different "
         "model shape?): leaf params/embed/value has shape (512, 32) float32 in the "
         "checkpoint, expected (512, 64) float32; leaf params/final_norm/value has shape "
         "(32,) float32 in the checkpoint, expected (64,) float32; leaf "
         "params/layers/attn_norm/value has shape (2, 32) float32 in the checkpoint, expected "
         "(2, 64) float32; leaf params/layers/down_proj/value has shape (2, 128, 32) float32 "
         "in the checkpoint, expected (2, 128, 64) float32; leaf "
         "params/layers/gate_proj/value has shape (2, 32, 128) float32 in the checkpoint, "
         "expected (2, 64, 128) float32 (and 43 more)",
         "Use a fresh --workdir, or the model config the checkpoint was written with.",
         setup=_narrow_checkpoint, run="backend"),
    # ------------------------------------------------------------------ HF directory
    Case("hf_missing", HF, "does not exist", (DEMO, "--config.model.hf_path=/does/not/exist"),
         "config.model.hf_path has no config.json: '/does/not/exist/config.json' not found",
         "Check the path.", run="process"),
    Case("hf_is_file", HF, "is a file", (DEMO, "--config.model.hf_path={case}/f"),
         "config.model.hf_path has no config.json: '…/f/config.json' not found",
         "Name the folder that holds config.json.", setup=_file("f", "x"), run="backend"),
    Case("hf_config_truncated", HF, "config.json truncated", H,
         "…/hf/config.json:1: malformed JSON (Unterminated string starting at at column 25)",
         "Re-download config.json.",
         setup=_hf_file("config.json", '{"model_type": "qwen3", "vocab'), run="backend"),
    Case("hf_config_not_utf8", HF, "config.json not UTF-8", H,
         "…/hf/config.json: not UTF-8 (byte 0xff at 16)",
         "Re-download config.json.",
         setup=_hf_file("config.json", b'{"model_type": "\xff"}'), run="backend"),
    Case("hf_config_list", HF, "config.json holds a list", H,
         "…/hf/config.json: expected a JSON object, got list",
         "Re-download config.json.",
         setup=_hf_file("config.json", "[1, 2]"), run="backend"),
    Case("hf_config_range", HF, "config.json value out of range", H,
         "…/hf/config.json: Qwen3Config.rms_norm_eps and rope_theta must be > 0, got -1.0 and "
         "10000.0",
         "Re-download config.json.", setup=_hf_config(rms_norm_eps=-1), run="backend"),
    Case("hf_config_type", HF, "config.json value of the wrong type", H,
         "…/hf/config.json: could not convert string to float: 'small'",
         "Re-download config.json.", setup=_hf_config(rms_norm_eps="small"), run="backend"),
    Case("hf_no_weights", HF, "no safetensors", H,
         "checkpoint tensor 'model.embed_tokens.weight': file …/hf/model.safetensors does not "
         "exist",
         "Download the weights.",
         setup=_hf_without("model.safetensors"), run="backend"),
    Case("hf_weights_truncated", HF, "safetensors truncated", H,
         "…/hf/model.safetensors is not a readable safetensors file: Error while "
         "deserializing header: incomplete metadata, file not fully covered",
         "Re-download the weights.",
         setup=_hf_truncated_weights, run="backend"),
    Case("hf_weights_garbage", HF, "safetensors holds no safetensors header", H,
         "…/hf/model.safetensors is not a readable safetensors file: Error while "
         "deserializing header: header too large",
         "Re-download the weights.", setup=_hf_file("model.safetensors", b"\xff" * 64),
         run="backend"),
    Case("hf_index_truncated", HF, "safetensors index truncated", H,
         "…/hf/model.safetensors.index.json: not a safetensors index "
         "(JSONDecodeError('Unterminated string starting at: line 1 column 17 (char 16)'))",
         "Re-download model.safetensors.index.json.",
         setup=_hf_file("model.safetensors.index.json", '{"weight_map": {"a'), run="backend"),
    Case("hf_missing_tensor", HF, "a tensor is missing",
         (*H, *CHEM, "--config.data.data_dir={data}", "--config.data.max_prompt_len=70"),
         "checkpoint tensor 'model.layers.1.mlp.up_proj.weight' is missing from …/hf",
         "Re-download or re-export the weights.", setup=_hf_tensor(missing=True), run="backend"),
    Case("hf_wrong_shape", HF, "a tensor of the wrong shape", H,
         "checkpoint tensor 'model.layers.0.self_attn.k_proj.weight' in "
         "…/hf/model.safetensors has shape (40, 64), expected (32, 64)",
         "The weights belong to another architecture: check config.json.",
         setup=_hf_tensor(missing=False), run="backend"),
    # ------------------------------------------------------------------ tokenizer
    Case("tok_missing", TOK, "does not exist", (DEMO, "--config.tokenizer.path=/does/not/exist"),
         "tokenizer directory not found: /does/not/exist (load_tokenizer reads local files "
         "only; build one with build_tiny_tokenizer / build_qwen_tokenizer or point at a "
         "local HF checkpoint directory)",
         "Check the path.", run="process"),
    Case("tok_no_files", TOK, "holds no tokenizer files", (DEMO, "--config.tokenizer.path={case}"),
         "… holds neither tokenizer.json nor tokenizer_config.json; not a HF tokenizer dir",
         "Point at the folder with tokenizer.json.", run="backend"),
    Case("tok_no_fast", TOK, "no tokenizer.json", T,
         "tokenizer directory …/tok cannot be loaded: You need to have sentencepiece or "
         "tiktoken installed to convert a slow tokenizer to a fast one.",
         "Add tokenizer.json (a fast tokenizer).",
         setup=_tok_file("tokenizer.json", None), run="backend"),
    Case("tok_truncated", TOK, "tokenizer.json truncated", T,
         "…/tok/tokenizer.json:1: malformed JSON (Unterminated string starting at at column "
         "20)",
         "Re-download tokenizer.json.",
         setup=_tok_file("tokenizer.json", '{"version": "1.0", "trunc'), run="backend"),
    Case("tok_config_not_utf8", TOK, "tokenizer_config.json not UTF-8", T,
         "…/tok/tokenizer_config.json: not UTF-8 (byte 0xff at 2)",
         "Re-download tokenizer_config.json.",
         setup=_tok_file("tokenizer_config.json", b'{"\xff": 1}'), run="backend"),
    Case("tok_config_list", TOK, "tokenizer_config.json holds a list", T,
         "…/tok/tokenizer_config.json: expected a JSON object, got list",
         "Re-download tokenizer_config.json.", setup=_tok_file("tokenizer_config.json", "[1]"),
         run="backend"),
    Case("tok_too_big", TOK, "more tokens than the model's vocabulary",
         (DEMO, "--config.model.overrides.vocab_size=64", "--config.tokenizer.path={tok}"),
         "tokenizer has 512 tokens but the model's vocab_size is 64: set "
         "config.model.overrides.vocab_size",
         "Set config.model.overrides.vocab_size, or use the model's tokenizer.", run="backend"),
    # ------------------------------------------------------------------ data
    Case("data_missing", DATA, "does not exist",
         (DEMO, *CHEM, "--config.data.data_dir=/does/not/exist"),
         "config.data.data_dir '/does/not/exist' is not a directory",
         "Check the path.",
         run="backend"),
    Case("data_is_file", DATA, "is a file", (DEMO, *CHEM, "--config.data.data_dir={case}/f"),
         "config.data.data_dir '…/f' is not a directory",
         "Name the data folder.", setup=_file("f", "x"), run="backend"),
    Case("split_unshipped", DATA, "a split neither there nor shipped",
         (DEMO, "--config.data.task=tooluse", "--config.data.data_dir={data}"),
         "…/data/tooluse/train.json is missing. tooluse/train.json (4 MiB) is not shipped "
         "with the package. Download it with `python -m srpo_jax.data.fetch` (into the user "
         "data folder, read when data.data_dir is empty) or `python -m srpo_jax.data.fetch "
         "--out=DIR` (then --config.data.data_dir=DIR); it fetches "
         "datasets/tooluse/train.json from https://github.com/lasgroup/SDPO at commit "
         "0e6d5106abe69f578c63bf38a9394e22905c8773 and checks its `git hash-object` is "
         "b3f1449172a9a98389c03d38f83ab2795426d7f8.",
         "Download it as the message says.", run="backend"),
    Case("split_truncated", DATA, "a truncated line", D,
         "…/data/sciknoweval/chemistry/train.json:2: malformed JSON (Expecting value at "
         "column 19)",
         "Fix or remove that line.",
         setup=_split("train", GOOD + '\n{"idx": 2, "kind":'), run="backend"),
    Case("split_not_utf8", DATA, "not UTF-8", D,
         "…/data/sciknoweval/chemistry/train.json:2: not UTF-8 (byte 0xff at 22)",
         "Save the file as UTF-8.",
         setup=_split("train", GOOD.encode() + b'\n{"idx": 2, "prompt": "\xff"}\n'),
         run="backend"),
    Case("split_list_row", DATA, "a row that is not an object", D,
         "…/data/sciknoweval/chemistry/train.json:2: expected a JSON object, got list",
         "Each line is one JSON object.", setup=_split("train", GOOD + "\n[1, 2]\n"),
         run="backend"),
    Case("split_missing_field", DATA, "a row without a field", D,
         "…/data/sciknoweval/chemistry/train.json:2: missing field(s) ['prompt']",
         "Every row needs idx, kind, dataset, prompt, system (may be null), answer.",
         setup=_split("train", GOOD + "\n" + json.dumps(NO_PROMPT)), run="backend"),
    Case("split_wrong_type", DATA, "a field of the wrong type", D,
         "…/data/sciknoweval/chemistry/train.json:1: field 'idx' has the wrong type: '3'",
         "Fix the row.",
         setup=_split("train", json.dumps({**ROW, "idx": "3"})), run="backend"),
    Case("split_unknown_kind", DATA, "unknown kind", D,
         "…/data/sciknoweval/chemistry/train.json:1: unknown kind 'essay', expected one of "
         "('mcq', 'tooluse')",
         "Use mcq or tooluse.",
         setup=_split("train", json.dumps({**ROW, "kind": "essay"})), run="backend"),
    Case("split_empty", DATA, "empty split", D,
         "…/data/sciknoweval/chemistry/train.json: empty split (no rows)",
         "Point config.data.data_dir at the data.",
         setup=_split("train", "\n  \n"), run="backend"),
    Case("all_too_long", DATA, "every prompt longer than data.max_prompt_len",
         (DEMO, *CHEM, "--config.data.data_dir={data}", "--config.data.max_prompt_len=1",
          "--config.tokenizer.path={tok}"),
         "PromptSet: all 5 prompts exceed max_prompt_len=1; nothing left to train or evaluate "
         "on",
         "Raise config.data.max_prompt_len.",
         run="backend"),
    # ------------------------------------------------------------------ other entry points
    Case("compare_config_missing", OTHER, "config file does not exist",
         ("--config=configs/nope.py", "--out={wd}"),
         "--config 'configs/nope.py' is not a file",
         "Check the path.", entry=COMPARE,
         workdir=False),
    Case("compare_lr_inf", OTHER, "infinite setting",
         ("--config=configs/demo.py", "--config.optim.lr=inf", "--out={wd}"),
         "config.optim.lr must be finite, got inf", "Give a finite number.", entry=COMPARE,
         workdir=False),
    Case("compare_unknown_key", OTHER, "misspelt key",
         ("--config=configs/demo.py", "--config.optim.lrr=1", "--out={wd}"),
         "override 'optim.lrr': config has no key 'lrr' under optim",
         "Fix the spelling.", entry=COMPARE, workdir=False),
    Case("compare_methods", OTHER, "unknown method", ("--methods=nope", "--out={wd}"),
         "--methods: unknown method 'nope'; valid: grpo, sdpo, srpo, srpo_no_dw, advantage_mix",
         "Use a listed method.", entry=COMPARE, workdir=False),
    Case("export_no_checkpoint", OTHER, "export of a run with no checkpoint",
         ("--workdir={case}/run", "--out={wd}"),
         "…/run has no checkpoint (nothing in …/run/checkpoints)",
         "Export a run that wrote a checkpoint (checkpoint.every_steps).", entry=EXPORT,
         setup=_run_dir(), workdir=False, run="process"),
    Case("export_step_missing", OTHER, "export of a step never checkpointed",
         ("--workdir={case}/run", "--out={wd}", "--step=3"),
         "--step=3, which has no checkpoint in …/run/checkpoints; the nearest checkpointed "
         "steps: 2 and 4",
         "Use a checkpointed step, latest or best.", entry=EXPORT, setup=_run_dir(2, 4),
         workdir=False, run="process"),
    Case("export_out_not_empty", OTHER, "export into a non-empty folder",
         ("--workdir={case}/run", "--out={wd}"),
         "--out=…/wd exists and is not empty (pass --force to replace it)",
         "Give a new or empty --out, or --force to replace it.", entry=EXPORT,
         setup=_run_dir(2, full_out=True), workdir=False, run="process"),
    Case("evaluate_both_sources", OTHER, "evaluate given a run and an HF model",
         ("--workdir={case}/run", "--hf_path={hf}", "--out={wd}"),
         "evaluate takes exactly one of --workdir (a run) or --hf_path (an HF model): both "
         "--workdir and --hf_path given",
         "Give one of --workdir or --hf_path.", entry=EVALUATE, setup=_run_dir(2),
         workdir=False, run="process"),
    Case("evaluate_no_source", OTHER, "evaluate given nothing to evaluate",
         ("--out={wd}",),
         "evaluate takes exactly one of --workdir (a run) or --hf_path (an HF model): "
         "neither given",
         "Give one of --workdir or --hf_path.", entry=EVALUATE, workdir=False, run="process"),
    Case("plan_config_missing", OTHER, "config file does not exist",
         ("--config=configs/nope.py",),
         "cannot read config file 'configs/nope.py': No such file or directory",
         "Check the path.", entry=PLAN, workdir=False,
         run="process"),
    Case("plan_lr_inf", OTHER, "infinite setting",
         ("--config=configs/demo.py", "--config.optim.lr=inf"),
         "config.optim.lr must be finite, got inf", "Give a finite number.", entry=PLAN,
         workdir=False, run="process"),
    Case("plan_lengths_bad_line", OTHER, "plan length mix with a broken line",
         ("--config=configs/demo.py", "--lengths={case}/lengths.jsonl"),
         "…/lengths.jsonl line 2: not JSON (Expecting ',' delimiter)",
         "One JSON array [prompt_len, response_len] (or with teacher_prompt_len) per line.",
         entry=PLAN, setup=_lengths_file("[12, 10]", "[12, 10"), workdir=False,
         run="process"),
    Case("plan_lengths_short", OTHER, "plan length mix with fewer rows than a step",
         ("--config=configs/demo.py", "--lengths={case}/lengths.jsonl"),
         "…/lengths.jsonl: 2 rows, but one step has 128 (train.prompts_per_step x "
         "algo.group_size)",
         "Give at least one step's rows (the plan reads the first step's worth).",
         entry=PLAN, setup=_lengths_file("[12, 10]", "[12, 10, 40]"), workdir=False,
         run="process"),
]
# fmt: on
