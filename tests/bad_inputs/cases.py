"""The bad-input corpus: one row per mistake a user can make, with the error it must produce.

A row either calls the Python API (``call``: must raise ``error`` whose message matches every regex
in ``match``) or runs the CLI (``argv``: exit code ``exit_code``, one stderr line matching ``match``).
Unless ``loads_model`` is set, the mistake must be caught before any model weights load and before
calibration runs (test_bad_inputs.py makes both fail the test). ``patch`` prepares a failure
(e.g. a full disk) and ``after`` checks what must have survived it.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pruning_hf import AutoPrunedModel, PruningConfig
from pruning_hf.models.architectures import UnsupportedModelError
from pruning_hf.data.text import DataSourceError, load_texts
from pruning_hf import prune
from pruning_hf.hf.loading import ModelLoadError, resolve_name
from pruning_hf.workflows.recipes import Recipe, RecipeError
from pruning_hf.utils.storage import CheckpointWriteError, OutputPathError


@dataclass
class Env:
    """What a case may build on: a temporary folder, tiny checkpoints, the byte tokenizer, real text."""

    tmp: Path
    make_checkpoint: Callable[..., Path]
    tokenizer: Any
    text_file: Path

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def calibration(self, source: Path | str, **extra) -> PruningConfig:
        return PruningConfig(method="wanda", sparsity=0.5,
                             calibration={"source": str(source), "num_samples": 2, "seq_len": 32, **extra})

    def pruned_model(self):
        """A tiny magnitude-pruned model (API save_pretrained attached), with a good checkpoint saved."""
        from conftest import tiny_model

        model = tiny_model("llama")
        prune(model, PruningConfig(method="magnitude", sparsity=0.5), self.tokenizer, progress=False)
        model.save_pretrained(self.tmp / "good")
        return model

    def recipe(self, body: str) -> Path:
        return self.file("recipe.yaml", body)


@dataclass
class Case:
    id: str
    match: tuple[str, ...]
    call: Callable[[Env], Any] | None = None
    error: type[BaseException] | None = None
    argv: Callable[[Env], list] | None = None
    exit_code: int = 2
    loads_model: bool = False
    patch: Callable[[Env, Any], None] | None = None
    after: Callable[[Env], None] | None = None


def _config(**kwargs) -> Callable[[Env], Any]:
    return lambda env: PruningConfig(**kwargs)


def _from_pretrained(folder: Callable[[Env], Path | str], source: Callable[[Env], Path | str] | None = None,
                     **extra) -> Callable[[Env], Any]:
    def call(env: Env):
        config = env.calibration(source(env) if source else env.text_file, **extra)
        return AutoPrunedModel.from_pretrained(folder(env), pruning=config, tokenizer=env.tokenizer, progress=False)
    return call


def _checkpoint_with(env: Env, name: str, weights: Callable[[bytes], bytes | None]) -> Path:
    """A tiny llama checkpoint whose model.safetensors is replaced by ``weights(original)`` (None: removed)."""
    folder = env.make_checkpoint("llama", name=name)
    original = (folder / "model.safetensors").read_bytes()
    new = weights(original)
    (folder / "model.safetensors").unlink()
    if new is not None:
        (folder / "model.safetensors").write_bytes(new)
    return folder


def _pickle_only(env: Env) -> Path:
    from safetensors.torch import load_file

    folder = env.make_checkpoint("llama", name="pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def _config_only(env: Env, config) -> Path:
    folder = env.tmp / config.model_type
    config.save_pretrained(folder)
    env.tokenizer.save_pretrained(folder)
    return folder


def _bert(env: Env) -> Path:
    from transformers import BertConfig, BertLMHeadModel

    folder = env.tmp / "bert"
    BertLMHeadModel(BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, is_decoder=True)).save_pretrained(folder)
    env.tokenizer.save_pretrained(folder)
    return folder


def _t5(env: Env) -> Path:
    from transformers import T5Config

    return _config_only(env, T5Config(vocab_size=300, d_model=16, num_layers=1, num_heads=2, d_ff=32))


def _jsonl(env: Env, rows: list, raw: str | None = None) -> Path:
    return env.file("data.jsonl", raw if raw is not None else "\n".join(json.dumps(r) for r in rows) + "\n")


def _unwritable_dir(env: Env) -> Path:
    """A folder the test process cannot write in: chmod for normal users; root ignores modes, so /proc."""
    if os.geteuid() == 0:
        return Path("/proc/pruning_hf_out")
    locked = env.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out"


def _fill_disk(self, folder, **kwargs):
    """Stands in for ``PreTrainedModel.save_pretrained``: the disk fills halfway through the weights."""
    (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _disk_full(env: Env, monkeypatch) -> None:
    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", _fill_disk)


def _save_on_full_disk(env: Env):
    """Save over a good checkpoint while the disk is full."""
    from unittest import mock

    import transformers

    model = env.pruned_model()
    with mock.patch.object(transformers.PreTrainedModel, "save_pretrained", _fill_disk):
        model.save_pretrained(env.tmp / "good")


def _good_checkpoint_survived(env: Env) -> None:
    from safetensors.torch import load_file

    good = env.tmp / "good"
    assert json.loads((good / "config.json").read_text())["pruning_config"]["method"] == "magnitude"
    assert load_file(good / "model.safetensors")  # still the full weights, not the half-written file
    assert [p.name for p in env.tmp.iterdir() if p.name.startswith(".good.")] == []  # no temp folder left


def _save(target: Callable[[Env], Path]) -> Callable[[Env], Any]:
    def call(env: Env):
        model = env.pruned_model()
        return model.save_pretrained(target(env))
    return call


def _prune_cli(env: Env, *args, model: Path | str | None = None, output: Path | str | None = None) -> list:
    model = model if model is not None else env.make_checkpoint("llama")
    return ["prune", model, "--method", "wanda", "--sparsity", "0.5", "--calibration", env.text_file,
            "--num-samples", "2", "--seq-len", "32", *args, "--output", output or env.tmp / "out", "--no-progress"]


RECIPE_OK = "name: x\nmodel: {id: MODEL}\npruning: {method: wanda, sparsity: 0.5}\n"

CASES: list[Case] = [
    # --- config values -------------------------------------------------------------------------------
    Case("sparsity-negative", (r"sparsity must be in \[0.0, 1.0\), got -0.1",), _config(method="wanda", sparsity=-0.1),
         ValueError),
    Case("sparsity-one", (r"sparsity must be in \[0.0, 1.0\), got 1.0",), _config(method="wanda", sparsity=1.0),
         ValueError),
    Case("sparsity-text", (r"sparsity must be a number .* got 'half' \(str\)",),
         _config(method="wanda", sparsity="half"), ValueError),
    Case("sparsity-missing", (r"sparsity is required for pattern='unstructured'", r"e\.g\. 0\.5"),
         _config(method="wanda"), ValueError),
    Case("pattern-4:2", (r"pattern='4:2' keeps N=4 of every M=2", r"need 1 <= N < M", "'2:4'"),
         _config(method="wanda", pattern="4:2"), ValueError),
    Case("pattern-2:4:8", (r"pattern='2:4:8' is not a sparsity pattern", r"use 'unstructured', 'N:M'"),
         _config(method="wanda", pattern="2:4:8"), ValueError),
    Case("method-unknown", (r"method='wandaa' is not a known pruning method", r"choose one of: magnitude, wanda"),
         _config(method="wandaa", sparsity=0.5), ValueError),
    Case("sparsegpt-option-with-wanda", (r"unknown option 'dampening' for method 'wanda'", r"option of: sparsegpt"),
         _config(method="wanda", sparsity=0.5, dampening=0.1), ValueError),
    Case("owl-with-2:4", (r"allocation='owl' .* pattern='2:4'", r"use pattern='unstructured'"),
         _config(method="wanda", pattern="2:4", allocation="owl"), ValueError),
    Case("scope-unknown", (r"scope='column' is not available for method 'wanda'", r"allowed: row, layer"),
         _config(method="wanda", sparsity=0.5, scope="column"), ValueError),
    Case("refine-with-structured", (r"refine=True .* method 'structured' removes whole units",),
         _config(method="structured", sparsity=0.5, refine=True), ValueError),
    Case("config-key-typo", (r"unknown pruning config key\(s\) \['sparsty'\]", r"allowed: .*'sparsity'"),
         lambda env: PruningConfig.from_dict({"method": "wanda", "sparsity": 0.5, "sparsty": 0.5}), ValueError),
    Case("calibration-seq-len", (r"calibration.seq_len must be an integer >= 2, got 1",),
         _config(method="wanda", sparsity=0.5, calibration={"seq_len": 1}), ValueError),
    Case("config-yaml-python-tag", (r"not valid \(safe\) YAML", r"python/object/apply:os.system"),
         lambda env: PruningConfig.from_yaml("method: !!python/object/apply:os.system ['echo pwned']\n"), ValueError),
    Case("targets-typo", (r"targets pattern 'q_prj' matches no Linear", r"Linear names: .*q_proj"),
         lambda env: AutoPrunedModel.from_pretrained(
             env.make_checkpoint("llama"), tokenizer=env.tokenizer, progress=False,
             pruning=PruningConfig(method="wanda", sparsity=0.5, targets=["q_prj"],
                                   calibration={"source": str(env.text_file), "num_samples": 2, "seq_len": 32})),
         ValueError, loads_model=True),
    Case("block-pattern-does-not-tile", (r"block:3x3", r"q_proj"),
         lambda env: AutoPrunedModel.from_pretrained(
             env.make_checkpoint("llama"), tokenizer=env.tokenizer, progress=False,
             pruning=PruningConfig(method="wanda", sparsity=0.5, pattern="block:3x3",
                                   calibration={"source": str(env.text_file), "num_samples": 2, "seq_len": 32})),
         ValueError, loads_model=True),

    # --- models --------------------------------------------------------------------------------------
    Case("model-missing", (r"model folder '.*nope' does not exist",), _from_pretrained(lambda env: env.tmp / "nope"),
         ModelLoadError),
    Case("model-no-config", (r"has no config.json", r"transformers checkpoint"),
         _from_pretrained(lambda env: (env.tmp / "empty").mkdir() or env.tmp / "empty"), ModelLoadError),
    Case("model-is-a-file", (r"is a file; give the checkpoint folder",),
         _from_pretrained(lambda env: env.file("weights.bin", b"x")), ModelLoadError),
    Case("model-embedded-unknown", (r"unknown embedded model 'embedded:nope'", r"available: embedded:smollm2-135m"),
         lambda env: resolve_name("embedded:nope"), ValueError),
    Case("model-t5-not-causal", (r"model_type='t5', which is not a decoder-only causal LM", r"supports: .*llama"),
         _from_pretrained(_t5), ModelLoadError),
    Case("model-bert-unsupported-family", (r"model_type='bert'", r"supported model types: .*llama"),
         _from_pretrained(_bert), UnsupportedModelError, loads_model=True),
    Case("model-corrupted-safetensors", (r"corrupted or truncated",),
         _from_pretrained(lambda env: _checkpoint_with(env, "garbage", lambda b: os.urandom(len(b)))),
         ModelLoadError, loads_model=True),
    Case("model-truncated-safetensors", (r"corrupted or truncated",),
         _from_pretrained(lambda env: _checkpoint_with(env, "truncated", lambda b: b[: len(b) // 2])),
         ModelLoadError, loads_model=True),
    Case("model-pickle-only", (r"refuses pickle checkpoints", r"save_pretrained\(dir, safe_serialization=True\)"),
         _from_pretrained(_pickle_only), ModelLoadError, loads_model=True),

    # --- data ----------------------------------------------------------------------------------------
    Case("data-empty-file", (r"text source '.*empty.txt' contains no text",),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: env.file("empty.txt", "")), DataSourceError),
    Case("data-binary-file", (r"blob.txt looks binary \(contains NUL bytes\)", r"give a text file"),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: env.file("blob.txt", b"PK\x03\x04\x00\x00" * 50)),
         DataSourceError),
    Case("data-not-utf8", (r"latin1.txt is not UTF-8 text",),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: env.file("latin1.txt", "café ".encode("latin-1") * 20)),
         DataSourceError),
    Case("data-shorter-than-a-window", (r"has 11 tokens, fewer than one window of seq_len=32",
                                        r"use more text or a smaller seq_len"),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: env.file("short.txt", "hello world")),
         DataSourceError),
    Case("data-jsonl-missing-column", (r"data.jsonl:1 has no text column 'text' \(found: \['body'\]\)",
                                       r"--text-column"),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: _jsonl(env, [{"body": "some text"}])),
         DataSourceError),
    Case("data-jsonl-broken-line", (r"data.jsonl:2 is not valid JSON",),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: _jsonl(env, [], '{"text": "a"}\n{"text": \n')),
         DataSourceError),
    Case("data-folder-without-text", (r"holds no .txt or .jsonl files",),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: (env.tmp / "docs").mkdir() or env.tmp / "docs"),
         DataSourceError),
    Case("data-hub-dataset-offline", (r"could not load Hub dataset 'no-such-org/no-such-dataset'",
                                      r"Without network access, pass a local .txt/.jsonl file"),
         lambda env: load_texts("no-such-org/no-such-dataset"), DataSourceError),

    # --- recipes -------------------------------------------------------------------------------------
    Case("recipe-unknown-key", (r"recipe.yaml:4: bogus: unknown key", r"allowed at the top level: name"),
         lambda env: Recipe.from_yaml(env.recipe(RECIPE_OK + "bogus: 1\n")), RecipeError),
    Case("recipe-wrong-type", (r"recipe.yaml:4: evaluation.seq_len: expected an integer, got 'long'",),
         lambda env: Recipe.from_yaml(env.recipe(RECIPE_OK + "evaluation: {seq_len: long}\n")), RecipeError),
    Case("recipe-missing-model", (r"recipe.yaml: model: required key is missing",),
         lambda env: Recipe.from_yaml(env.recipe("name: x\npruning: {method: wanda, sparsity: 0.5}\n")), RecipeError),
    Case("recipe-bad-sparsity", (r"recipe.yaml:3: pruning: sparsity must be in \[0.0, 1.0\), got 1.5",),
         lambda env: Recipe.from_yaml(env.recipe("name: x\nmodel: {id: m}\npruning: {method: wanda, sparsity: 1.5}\n")),
         RecipeError),
    Case("recipe-python-tag", (r"not valid \(safe\) YAML", r"python/object/apply:os.system"),
         lambda env: Recipe.from_yaml(env.recipe(RECIPE_OK.replace("name: x", "name: !!python/object/apply:os.system "
                                                                   "['touch pwned']"))), RecipeError),
    Case("recipe-file-missing", (r"recipe file '.*missing.yaml' does not exist",),
         lambda env: Recipe.from_yaml(str(env.tmp / "missing.yaml")), FileNotFoundError),

    # --- output --------------------------------------------------------------------------------------
    Case("output-is-a-file", (r"output path '.*notes.txt' is a file; give a folder path",),
         _save(lambda env: env.file("notes.txt", "x")), OutputPathError),
    Case("output-inside-a-file", (r"lies inside '.*notes.txt', which is a file",),
         _save(lambda env: env.file("notes.txt", "x") / "out"), OutputPathError),
    Case("output-not-writable", (r"cannot write in '.*' \(", r"choose another output folder"),
         _save(_unwritable_dir), OutputPathError),
    Case("output-foreign-folder", (r"is not empty and holds no checkpoint", r"nothing of yours is replaced"),
         _save(lambda env: env.file("notes.txt", "x").parent), OutputPathError),
    Case("output-disk-full", (r"could not write the checkpoint to '.*good' \(No space left on device\)",
                              r"the previous checkpoint there is unchanged"),
         _save_on_full_disk, CheckpointWriteError, after=_good_checkpoint_survived),

    # --- command line --------------------------------------------------------------------------------
    Case("cli-missing-flags", (r"^pruning-hf prune: error: the following arguments are required: --method, --output",),
         argv=lambda env: ["prune", env.tmp / "model"]),
    Case("cli-unknown-subcommand", (r"invalid choice: 'shrink' \(choose from 'prune'",),
         argv=lambda env: ["shrink", "model"]),
    Case("cli-bad-max-memory", (r"--max-memory: 'lots' is not DEVICE=AMOUNT", r"e\.g\. cpu=8GiB"),
         argv=lambda env: _prune_cli(env, "--max-memory", "lots")),
    Case("cli-sparsity-text", (r"argument --sparsity: invalid float value: 'half'",),
         argv=lambda env: _prune_cli(env, "--sparsity", "half")),
    Case("cli-pattern-2:4:8", (r"pattern='2:4:8' is not a sparsity pattern",),
         argv=lambda env: _prune_cli(env, "--pattern", "2:4:8")),
    Case("cli-owl-with-2:4", (r"allocation='owl' .* pattern='2:4'",),
         argv=lambda env: _prune_cli(env, "--pattern", "2:4", "--allocation", "owl")),
    Case("cli-sparsegpt-option-with-wanda", (r"unknown option 'dampening' for method 'wanda'",),
         argv=lambda env: _prune_cli(env, "--dampening", "0.1")),
    Case("cli-activation-storage", (r"activation_storage='floppy' is neither 'disk' nor a torch device",),
         argv=lambda env: _prune_cli(env, "--activation-storage", "floppy")),
    Case("cli-model-missing", (r"model folder '.*nope' does not exist",),
         argv=lambda env: _prune_cli(env, model=env.tmp / "nope")),
    Case("cli-output-inside-a-file", (r"lies inside '.*notes.txt', which is a file",),
         argv=lambda env: _prune_cli(env, output=env.file("notes.txt", "x") / "out")),
    Case("cli-short-calibration-text", (r"fewer than one window of seq_len=32",),
         argv=lambda env: _prune_cli(env, "--calibration", env.file("short.txt", "hello world"))),
    Case("cli-targets-typo", (r"targets pattern 'q_prj' matches no Linear",),
         argv=lambda env: _prune_cli(env, "--targets", "q_prj"), loads_model=True),
    Case("cli-sweep-bad-level", (r"sparsity level 'abc' is not a number",),
         argv=lambda env: ["sweep", env.make_checkpoint("llama"), "--sparsities", "0.1,abc", "--output", env.tmp / "s"]),
    Case("cli-sweep-bad-budget", (r"budget metric 'speed' is not measured by this sweep",),
         argv=lambda env: ["sweep", env.make_checkpoint("llama"), "--budget", "speed<=2", "--output", env.tmp / "s"]),
    Case("cli-eval-json-is-folder", (r"--json '.*' is a folder; give a file path",),
         argv=lambda env: ["eval", env.make_checkpoint("llama"), "--json", env.tmp]),
    Case("cli-run-recipe-unknown-key", (r"recipe.yaml:4: bogus: unknown key",),
         argv=lambda env: ["run", env.recipe(RECIPE_OK + "bogus: 1\n")]),
    Case("cli-card-not-a-checkpoint", (r"is not a saved checkpoint folder \(no config.json\)",),
         argv=lambda env: ["card", env.tmp]),
    Case("cli-disk-full", (r"^pruning-hf prune: error: could not write the checkpoint to .*No space left on device",
                           r"nothing was written there"),
         argv=lambda env: ["prune", env.make_checkpoint("llama"), "--method", "magnitude", "--sparsity", "0.5",
                           "--output", env.tmp / "out", "--no-progress"],
         exit_code=1, loads_model=True, patch=_disk_full),
]


# --- issue 13 (hardening, round 2) -------------------------------------------------------------------------
def _iterative_cli(env: Env, *args) -> list:
    """`pruning-hf iterative` on a tiny checkpoint with small calibration and validation slices."""
    return ["iterative", env.make_checkpoint("llama"), "--calibration", env.text_file, "--num-samples", "2",
            "--seq-len", "32", "--validation", env.text_file, "--validation-seq-len", "32", "--validation-windows",
            "2", *args, "--output", env.tmp / "it", "--no-progress"]


CASES += [
    # item 1: iterative undoes rejected steps by restoring weights, which cannot undo removed structure
    Case("cli-iterative-structured", (r"iterative pruning .*method 'structured' removes whole", r"pruning-hf prune"),
         argv=lambda env: _iterative_cli(env, "--method", "structured", "--target", "mlp", "--steps", "0.2,0.4",
                                         "--max-ppl-increase", "0.0")),
    Case("cli-iterative-depth", (r"iterative pruning .*method 'depth' removes whole",),
         argv=lambda env: _iterative_cli(env, "--method", "depth", "--num-layers", "1")),
    # item 4: YAML anchors / aliases (alias bombs hang the parser's consumers) are refused with their line
    Case("config-yaml-anchor", (r"YAML anchors and aliases are not allowed", r"&m"),
         lambda env: PruningConfig.from_yaml("method: &m wanda\nsparsity: 0.5\n"), ValueError),
    Case("recipe-yaml-alias", (r"recipe.yaml:4: YAML anchors and aliases are not allowed", r"&d"),
         lambda env: Recipe.from_yaml(env.recipe(RECIPE_OK + "description: &d tiny\noutput: *d\n")), RecipeError),
    Case("cli-run-recipe-alias", (r"recipe.yaml:4: YAML anchors and aliases are not allowed",),
         argv=lambda env: ["run", env.recipe(RECIPE_OK + "description: &d tiny\noutput: *d\n")]),
    # item 5: more windows than the text has distinct ones; JSONL text that is not a string
    Case("data-num-samples-beyond-the-text", (r"num_samples=1000000000000 ", r"distinct windows of seq_len=32",
                                              r"use num_samples <= \d+"),
         _from_pretrained(lambda env: env.make_checkpoint(), num_samples=10**12), DataSourceError),
    Case("cli-iterative-num-samples-beyond-the-text", (r"num_samples=1000000000000 ", r"distinct windows"),
         argv=lambda env: _iterative_cli(env, "--method", "wanda", "--sparsity", "0.5", "--num-samples",
                                         str(10**12))),
    Case("data-jsonl-null-text", (r"data.jsonl:1: text column 'text' holds null, not a string",),
         _from_pretrained(lambda env: env.make_checkpoint(), lambda env: _jsonl(env, [{"text": None}])),
         DataSourceError),
    Case("data-jsonl-list-text", (r"data.jsonl:2: text column 'text' holds a list, not a string",),
         _from_pretrained(lambda env: env.make_checkpoint(),
                          lambda env: _jsonl(env, [{"text": "plenty of words " * 20}, {"text": ["a", "b"]}])),
         DataSourceError),
    # item 7: a Hub id while offline names the model, the reason and what works offline, before any retry
    Case("model-hub-id-offline", (r"'no-such-org/no-such-model'", r"HF_HUB_OFFLINE is set",
                                  r"local checkpoint folder", r"embedded:smollm2-135m"),
         _from_pretrained(lambda env: "no-such-org/no-such-model"), ModelLoadError),
    Case("cli-hub-id-offline", (r"'no-such-org/no-such-model'", r"HF_HUB_OFFLINE is set", r"embedded:smollm2-135m"),
         argv=lambda env: ["prune", "no-such-org/no-such-model", "--method", "magnitude", "--sparsity", "0.5",
                           "--output", env.tmp / "out"]),
]
