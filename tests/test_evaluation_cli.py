"""`pruning-hf eval` and the evaluation flags of `pruning-hf prune`."""

from __future__ import annotations

import json
import re

import pytest

import transformers
from pruning_hf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_two_models_one_table(make_checkpoint, text_file, tmp_path, capsys):
    first, second = make_checkpoint("llama", seed=0, name="a"), make_checkpoint("llama", seed=1, name="b")
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text('{"context": "Q: up?\\nA:", "choices": ["sky", "ground"], "label": 0}\n'
                    '{"context": "Q: down?\\nA:", "choices": ["sky", "ground"], "label": 1}\n')
    out = tmp_path / "reports" / "eval.json"
    code = main(["eval", str(first), str(second), "--names", "dense,other", "--text", str(text_file),
                 "--seq-len", "64", "--max-windows", "3", "--tasks", f"quiz={quiz}", "--no-samples",
                 "--json", str(out), "--markdown", str(tmp_path / "eval.md"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| metric | dense | other |") and "| quiz acc (%) |" in printed
    report = json.loads(out.read_text())
    assert [m["name"] for m in report["models"]] == ["dense", "other"]
    assert report["models"][0]["model"]["name_or_path"].endswith("a")
    assert report["data"]["text"]["windows"] == 3 and "perplexity" in report["ratios"]["other"]
    assert (tmp_path / "eval.md").read_text().startswith("| metric | dense | other |")


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were validated")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "piqq"], "unknown task 'piqq'"),
    (["--tasks", "piqa"], "cannot fetch task 'piqa' from the Hub .* --tasks piqa=FILE.jsonl"),
    (["--seq-len", "4096"], "seq_len=4096 is longer than the context of .* 256"),
    (["--energy", "--country-iso", "XYZ"], "unknown country code 'XYZ'"),
    (["--text", "EMPTY"], "contains no text"),
    (["--text", "ROWS"], "no text column 'text'"),
    (["--names", "x,y"], "--names gives 2 names for 1 models"),
])
def test_eval_bad_input_exits_2_before_loading(make_checkpoint, text_file, tmp_path, capsys, no_model_load,
                                                extra, message):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "rows.jsonl").write_text('{"body": "text"}\n')
    extra = [{"EMPTY": str(tmp_path / "empty.txt"), "ROWS": str(tmp_path / "rows.jsonl")}.get(a, a) for a in extra]
    args = ["eval", str(make_checkpoint("llama")), "--text", str(text_file), "--seq-len", "64",
            "--json", str(tmp_path / "r.json"), *extra]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pruning-hf eval: error:") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "r.json").exists()


def test_prune_with_energy_saves_the_dense_vs_pruned_report(make_checkpoint, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", str(make_checkpoint("llama")), "--method", "magnitude", "--sparsity", "0.5",
                 "--eval-text", str(text_file), "--eval-seq-len", "32", "--eval-windows", "2", "--energy",
                 "--no-samples", "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| energy, pruning (Wh) |" in printed and "| perplexity |" in printed
    report = json.loads((out / "evaluation_report.json").read_text())
    assert report["models"][1]["energy"]["pruning"]["energy_kwh"] > 0
    assert report["models"][1]["pruning"]["sparsity"] == pytest.approx(0.5, abs=0.01)
