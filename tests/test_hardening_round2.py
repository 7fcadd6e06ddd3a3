"""Hardening, round 2 (issue 13): regressions found by users trying the README as written.

Public API and CLI only (``pruning_hf.*`` top-level names, ``pruning_hf.cli.main``), so these tests survive
the package's restructuring. Table-driven bad inputs of the same issue are in ``bad_inputs/cases.py``
(block "issue 13"); every supported family end to end is in ``test_families.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
import yaml
from conftest import byte_tokenizer, tiny_config, tiny_model
from safetensors import safe_open

import pruning_hf
from pruning_hf import AutoPrunedModel, PruningConfig, Recipe, iterative_prune, prune
from pruning_hf.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_samples": 4, "seq_len": 32, "batch_size": 2}
TOKEN = "hf_round2SECRETtoken0123456789"


def run_cli(*args) -> int:
    return main([str(arg) for arg in args])


def _in_forked_child(call, timeout: float) -> tuple[str, str]:
    """Run ``call()`` in a forked copy of this process; ``(exception type or 'ok', message)``.

    A hang in C code (``repr`` of a huge value) cannot be interrupted by a signal in-process; a child
    can be killed. The child only parses YAML and formats messages (no torch work after the fork).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            call()
            outcome = ("ok", "")
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            outcome = (type(err).__name__, str(err)[:2000])
        os.write(write, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write)
    import select

    ready, _, _ = select.select([read], [], [], timeout)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
        return "timeout", f"did not finish within {timeout} s"
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return tuple(json.loads(data))


# --- item 1: iterative + structured / depth ---------------------------------------------------------------
@pytest.mark.parametrize("options", [dict(method="structured", sparsity=0.4, target="mlp"),
                                     dict(method="depth", num_layers=1)], ids=["structured", "depth"])
def test_item1_iterative_refuses_methods_that_remove_structure_and_leaves_the_model_alone(options, text_file,
                                                                                          tokenizer):
    """A rejected structured step cannot be undone by restoring weights (the layers were replaced): refuse
    it before measuring or pruning anything, instead of saving a mislabelled model."""
    model = tiny_model("llama", layers=4)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = PruningConfig(**options, calibration={"source": str(text_file), **SMALL})
    steps = [0.2, 0.4] if options["method"] == "structured" else None
    with pytest.raises(ValueError, match=rf"iterative pruning .*method {options['method']!r}.*(structure|layer)"):
        iterative_prune(model, config, "embedded@test", tokenizer=tokenizer, steps=steps, validation_seq_len=32,
                        validation_windows=2, progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    assert getattr(model.config, "pruning_config", None) is None


# --- item 2: Falcon with 3+ layers -----------------------------------------------------------------------
@pytest.mark.parametrize("layers", [3, 4])
def test_item2_falcon_with_three_or_more_layers_prunes_with_calibration(layers):
    torch.manual_seed(0)
    config = tf.FalconConfig(vocab_size=260, hidden_size=32, num_attention_heads=4, num_hidden_layers=layers,
                             max_position_embeddings=256)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    report = prune(model, PruningConfig(method="wanda", sparsity=0.5, calibration={"batch_size": 2}),
                   windows=windows, progress=False)
    assert report.sparsity == pytest.approx(0.5)
    assert torch.isfinite(model(windows[:1]).logits).all()


# --- item 4: YAML alias bombs ----------------------------------------------------------------------------
def _alias_bomb(levels: int = 9) -> str:
    """A 'billion laughs' YAML sequence: 9 ** levels leaves from a few hundred bytes."""
    lines = ["  - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        lines.append(f"  - &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines)


def test_item4_yaml_alias_bombs_are_refused_in_seconds(tmp_path):
    config_text = f"method: wanda\nignore:\n{_alias_bomb()}\nsparsity: *l8\n"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"description:\n{_alias_bomb()}\nname: *l8\nmodel: {{id: m}}\npruning: {{method: wanda, "
                      "sparsity: 0.5}\n")
    for call in (lambda: PruningConfig.from_yaml(config_text), lambda: Recipe.from_yaml(str(recipe))):
        kind, message = _in_forked_child(call, timeout=10)
        assert kind in ("ValueError", "RecipeError"), (kind, message[:300])
        assert re.search(r"anchor|alias", message) and len(message) < 1000, message[:300]


def test_item4_values_in_error_messages_are_bounded():
    huge = list(range(100_000))
    with pytest.raises(ValueError) as caught:
        PruningConfig(method="wanda", sparsity=huge)
    assert "sparsity must be a number" in str(caught.value) and len(str(caught.value)) < 1000
    with pytest.raises(ValueError) as caught:
        Recipe.from_dict({"name": "x" * 100_000 + "y", "model": {"id": ["m"] * 100_000},
                          "pruning": {"method": "wanda", "sparsity": 0.5}})
    assert "model.id" in str(caught.value) and len(str(caught.value)) < 1000


# --- item 5: calibration gaps ----------------------------------------------------------------------------
def test_item5_capped_seq_len_is_recorded_as_used(make_checkpoint, text_file, tmp_path):
    """max_position_embeddings=256 caps seq_len=10**9: config.json, the report and the card say 256."""
    calibration = {"source": str(text_file), "num_samples": 2, "seq_len": 10**9, "batch_size": 2}
    model = AutoPrunedModel.from_pretrained(make_checkpoint("llama"), progress=False,
                                            pruning=PruningConfig(method="wanda", sparsity=0.5,
                                                                  calibration=calibration))
    assert model.pruning_config.calibration.seq_len == 256
    assert model.pruning_report.config["calibration"]["seq_len"] == 256
    assert model.pruning_report.calibration_tokens == 2 * 256
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["pruning_config"]
    assert saved["calibration"]["seq_len"] == 256
    card = (tmp_path / "out" / "README.md").read_text()
    assert "--seq-len 256" in card and str(10**9) not in card


# --- item 6: smaller ones --------------------------------------------------------------------------------
def test_item6_offloaded_save_of_tied_embeddings_writes_the_weight_once(tmp_path, tokenizer, text_file):
    """A forward pass through a disk-offloaded model unties lm_head from the embeddings (accelerate swaps the
    parameters); the pruned save must still store the tied matrix once, like plain transformers."""
    config = tiny_config("llama", layers=4)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    plain = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    plain.save_pretrained(tmp_path / "plain")
    model = AutoPrunedModel.from_pretrained(
        tmp_path / "src", pruning=PruningConfig(method="wanda", sparsity=0.5,
                                                calibration={"source": str(text_file), **SMALL}),
        progress=False, device_map="auto", max_memory={"cpu": 1000}, offload_folder=tmp_path / "offload")
    assert set(model.hf_device_map.values()) == {"disk"}
    model.save_pretrained(tmp_path / "pruned")

    def tensors(folder: Path) -> dict[str, int]:
        shapes = {}
        for file in folder.glob("*.safetensors"):
            with safe_open(file, "pt") as handle:
                shapes.update({key: handle.get_slice(key).get_shape() for key in handle.keys()})
        return shapes

    assert tensors(tmp_path / "pruned") == tensors(tmp_path / "plain")
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3, 4]])
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


class FailingHub:
    """A loopback Hub that creates repos but answers 503 to every upload request."""

    def __init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    status, payload = 200, {"url": f"{hub.url}/alice/tiny", "name": "alice/tiny"}
                elif path == "/api/validate-yaml":
                    status, payload = 200, {"errors": [], "warnings": []}
                else:
                    status, payload = 503, {"error": "maintenance"}
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET = do_POST  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FailingHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online_without_waiting(monkeypatch):
    """Pushing needs HF_HUB_OFFLINE off (the server is on loopback); huggingface_hub's backoff sleeps are
    skipped so that its retries cost nothing here (the test is about what the user reads)."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def test_item6_failed_pushes_say_one_true_line_and_leave_the_folder_alone(make_checkpoint, tokenizer, tmp_path,
                                                                       online_without_waiting, monkeypatch,
                                                                       capfd):
    model = AutoPrunedModel.from_pretrained(make_checkpoint("llama"), progress=False,
                                            pruning=PruningConfig(method="magnitude", sparsity=0.5))
    model.save_pretrained(tmp_path / "pruned")
    before = {p.name: p.read_bytes() for p in (tmp_path / "pruned").iterdir()}
    capfd.readouterr()
    with FailingHub() as hub:
        with pytest.raises(RuntimeError) as caught:
            model.push_to_hub("alice/tiny", token=TOKEN, endpoint=hub.url)
        assert "Retrying" not in capfd.readouterr().err
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code = run_cli("push", tmp_path / "pruned", "alice/tiny", "--token", TOKEN)
    message = str(caught.value)
    assert "503" in message and "alice/tiny" in message and TOKEN not in message
    assert "pruning_hf-push-" not in message  # the temporary folder it was staged in is gone
    assert code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pruning-hf push: error: could not push"), err
    assert "Retrying" not in err and "retried" in lines[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "pruned").iterdir()} == before  # README.md included


def test_item6_generic_family_warning_is_printed_once_per_run(caplog):
    """A family without a known layout is walked generically; say so once, not at every look-up."""
    config = tf.StableLmConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING"):
        prune(model, PruningConfig(method="wanda", sparsity=0.5, calibration={"batch_size": 2}), windows=windows,
              progress=False)
        prune(model, PruningConfig(method="depth", num_layers=1, calibration={"batch_size": 2}), windows=windows,
              progress=False)
    warnings = [r for r in caplog.records if "is not a known family" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5)],
                         ids=["np.float32", "np.float64", "torch-scalar"])
def test_item6_numpy_and_torch_scalars_are_accepted_as_plain_numbers(value):
    config = PruningConfig(method="wanda", sparsity=value,
                           calibration={"num_samples": np.int64(4), "seq_len": torch.tensor(32)})
    assert type(config.sparsity) is float and config.sparsity == 0.5
    assert type(config.calibration.num_samples) is int and type(config.calibration.seq_len) is int
    assert json.loads(config.to_json())["sparsity"] == 0.5
    assert PruningConfig.from_yaml(config.to_yaml()).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="sparsity must be a number"):
        PruningConfig(method="wanda", sparsity=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="sparsity must be a number"):
        PruningConfig(method="wanda", sparsity=np.bool_(True))


def test_item6_numpy_and_torch_scalars_in_method_options_become_plain_numbers():
    config = PruningConfig(method="sparsegpt", sparsity=0.5, dampening=np.float32(0.25), block_size=np.int64(64),
                           dampening_retries=torch.tensor(2))
    assert (type(config.options.dampening), type(config.options.block_size)) == (float, int)
    assert type(config.options.dampening_retries) is int
    assert PruningConfig.from_json(config.to_json()).to_dict() == config.to_dict()
    assert type(PruningConfig(method="depth", num_layers=torch.tensor(1)).options.num_layers) is int


def test_item6_depth_summary_says_how_many_layers_and_parameters_went(tmp_path, tokenizer, text_file, capsys):
    folder = tmp_path / "src"
    tiny_model("llama", layers=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    code = run_cli("prune", folder, "--method", "depth", "--num-layers", 1, "--calibration", text_file,
                   "--num-samples", 4, "--seq-len", 32, "--output", tmp_path / "out", "--no-progress")
    assert code == 0
    out = capsys.readouterr().out
    assert "depth -1" not in out and "targeted weights" not in out, out
    assert re.search(r"removed 1 of 4 decoder layers \(layer \d\)", out), out
    assert re.search(r"[\d,]+ of [\d,]+ parameters \(\d+\.\d+%\) removed", out), out


def test_item6_help_shows_readable_metavars(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = capsys.readouterr().out
    assert "OPTION_" not in text and "--dampening DAMPENING" in text and "--num-layers NUM_LAYERS" in text


# --- item 7: what a newcomer stumbled on -----------------------------------------------------------------
_UNREACHABLE = textwrap.dedent("""
    import json, sys, time
    from pruning_hf.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        start = time.perf_counter()
        code = main(argv)
        results.append([code, time.perf_counter() - start])
    print(json.dumps(results))
""")


def test_item7_unreachable_hub_fails_fast_naming_the_model_and_the_offline_alternatives(make_checkpoint,
                                                                                         tmp_path):
    """No network, no HF_HUB_OFFLINE: one short probe instead of ~50 s of huggingface_hub retries, then one
    line that names the model (or dataset), the reason and what works offline."""
    local = make_checkpoint("llama")
    argvs = [["prune", "facebook/opt-125m", "--method", "magnitude", "--sparsity", "0.5",
              "--output", str(tmp_path / "a"), "--no-progress"],
             ["prune", str(local), "--method", "wanda", "--sparsity", "0.5", "--calibration", "c4",
              "--output", str(tmp_path / "b"), "--no-progress"]]
    env = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _UNREACHABLE, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=180)
    (model_code, model_seconds), (data_code, data_seconds) = json.loads(done.stdout.strip().splitlines()[-1])
    errors = [line for line in done.stderr.splitlines() if line.startswith("pruning-hf")]
    assert "Retrying" not in done.stderr, done.stderr[-2000:]
    assert (model_code, data_code) == (2, 2) and len(errors) == 2, done.stderr[-2000:]
    assert model_seconds < 15 and data_seconds < 15, (model_seconds, data_seconds)
    model_error, data_error = errors
    assert "'facebook/opt-125m'" in model_error and "127.0.0.1:9" in model_error
    assert "embedded:smollm2-135m" in model_error and "local" in model_error
    assert "'c4'" in data_error and "127.0.0.1:9" in data_error and "'embedded'" in data_error


def test_item7_structured_summary_counts_units_per_kind_and_parameters(make_checkpoint, text_file, tmp_path,
                                                                     capsys):
    code = run_cli("prune", make_checkpoint("llama"), "--method", "structured", "--sparsity", "0.3",
                   "--target", "both", "--calibration", text_file, "--num-samples", 4, "--seq-len", 32,
                   "--output", tmp_path / "out", "--no-progress")
    assert code == 0
    out = capsys.readouterr().out
    assert "targeted weights" not in out, out
    # tiny llama: 2 layers x 64 MLP neurons (19 of each go), 2 layers x 2 KV groups of 2 query heads (1 goes)
    assert "removed 38 of 128 MLP neurons (29.7%) and 2 of 4 KV groups (50.0%)" in out, out
    assert re.search(r"[\d,]+ of [\d,]+ parameters \(\d+\.\d+%\) removed", out), out


def _card_config(folder: Path) -> dict:
    card = (folder / "README.md").read_text()
    block = card.split("## How it was pruned", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


@pytest.mark.parametrize("options,absent", [
    (dict(method="structured", sparsity=0.25, target="mlp", importance="magnitude"),
     {"pattern", "scope", "targets", "ignore", "owl_m", "owl_lambda", "refine", "refine_iterations"}),
    (dict(method="magnitude", sparsity=0.5), {"owl_m", "owl_lambda", "refine_iterations", "targets"}),
], ids=["structured", "magnitude"])
def test_item7_card_without_evaluation_lists_only_what_applies(options, absent, make_checkpoint, tmp_path):
    model = AutoPrunedModel.from_pretrained(make_checkpoint("llama"), pruning=PruningConfig(**options),
                                            progress=False)
    model.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "numbers above" not in card  # there are none: nothing was evaluated
    listed = _card_config(tmp_path / "out")
    assert not absent & set(listed), sorted(absent & set(listed))
    assert PruningConfig.from_dict(listed).to_dict() == model.pruning_config.to_dict()  # still reproducible
    assert f'pip install "pruning-hf=={pruning_hf.__version__}"' in card and "source checkout" in card


def test_item7_embedded_models_carry_no_gguf_leftovers(tmp_path, monkeypatch, tokenizer):
    """The cached conversion of an embedded model came with GGUF metadata in config.json
    (``_model_name_or_path``); neither the cache nor a pruned checkpoint keeps it."""
    monkeypatch.setenv("PRUNING_HF_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "embedded" / "smollm2-135m"
    tiny_model("llama").save_pretrained(cached)
    tokenizer.save_pretrained(cached)
    config = json.loads((cached / "config.json").read_text())
    (cached / "config.json").write_text(json.dumps({**config, "_model_name_or_path": "Smollm2 135M 8k Lc100K"}))
    model = AutoPrunedModel.from_pretrained("embedded:smollm2-135m", progress=False,
                                            pruning=PruningConfig(method="magnitude", sparsity=0.5))
    model.save_pretrained(tmp_path / "out")
    for folder in (cached, tmp_path / "out"):
        assert "_model_name_or_path" not in json.loads((folder / "config.json").read_text()), folder
    assert json.loads((tmp_path / "out" / "config.json").read_text())["pruned_from"] == "embedded:smollm2-135m"


def test_item7_methods_lists_the_allocation_and_refinement_options(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for flag in ("--allocation", "--owl-m", "--owl-lambda", "--refine", "--refine-iterations"):
        assert flag in out, flag
    assert re.search(r"--allocation .*uniform.*owl.*global", out) and "adaptive" in out


def test_item7_top_level_help_has_no_rest_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "`" not in out and "pruning-hf command line" in out
