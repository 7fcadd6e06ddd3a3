"""Reports: several models on identical data, dense vs pruned in one call, JSON round trip, bad input."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_model
from pruning_hf import AutoPrunedModel, EvaluationReport, PruningConfig, compare_models, evaluate_model
from pruning_hf.data.text import DataSourceError
from pruning_hf.evaluation.energy import EnergyError
from pruning_hf import prune_and_compare
from pruning_hf.evaluation.tasks import TaskError

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"seq_len": 64, "max_windows": 4, "samples": False, "progress": False}


@pytest.fixture
def quiz(tmp_path):
    path = tmp_path / "quiz.jsonl"
    rows = [{"context": f"Question: {q}\nAnswer:", "choices": ["yes", "no", "maybe"], "label": i % 3}
            for i, q in enumerate(["is water wet", "is fire cold", "can cats fly", "is two even"])]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return f"quiz={path}"


def test_compare_models_uses_identical_data_and_reports_ratios(tokenizer, text_file, quiz):
    dense, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    report = compare_models({"dense": dense, "other": other}, tokenizer, text=str(text_file), tasks=[quiz], **FAST)
    first, second = report.models
    assert [first["name"], second["name"]] == ["dense", "other"] and report.baseline == "dense"
    assert first["perplexity"]["tokens"] == second["perplexity"]["tokens"] == 4 * 63
    assert report.data["tasks"]["quiz"]["examples"] == 4 and first["tasks"]["quiz"]["examples"] == 4
    ratios = report.ratios()["other"]
    assert ratios["perplexity"] == pytest.approx(second["perplexity"]["perplexity"] / first["perplexity"]["perplexity"])
    assert ratios["quiz acc (%)"] == pytest.approx(100 * (second["tasks"]["quiz"]["acc"] - first["tasks"]["quiz"]["acc"]))
    markdown = report.to_markdown()
    assert markdown.startswith("| metric | dense | other |")
    assert f"({ratios['perplexity']:.2f}x)" in markdown and "4 windows x 64 tokens" in markdown
    data = json.loads(report.to_json())
    assert data["schema"] == "pruning_hf.evaluation/3" and data["versions"]["torch"]
    assert data["settings"]["text"] == str(text_file) and data["data"]["text"]["seq_len"] == 64
    assert EvaluationReport.from_dict(data).to_dict()["models"] == data["models"]


def test_evaluate_model_samples_and_single_entry(tokenizer, text_file):
    report = evaluate_model(tiny_model("opt"), tokenizer, text=str(text_file), seq_len=32, max_windows=2,
                            sample_tokens=4, progress=False, name="opt")
    entry = report["opt"]
    assert entry["perplexity"]["windows"] == 2 and entry["efficiency"] is None
    assert entry["energy"]["perplexity"]["energy_kwh"] > 0  # energy is on by default
    assert entry["energy"]["generation"]["generated_tokens"] == 3 * 8 * 8  # rounds x batch x new tokens
    assert [s["prompt"] for s in entry["samples"]][:1] == ["The capital of France is"]
    assert all(s["new_tokens"] <= 4 for s in entry["samples"])
    assert "Greedy samples:" in report.to_markdown() and report.ratios() == {}


def test_from_pretrained_evaluate_gives_dense_vs_pruned_and_saves_it(make_checkpoint, text_file, tmp_path):
    folder = make_checkpoint("llama")
    config = PruningConfig(method="wanda", sparsity=0.5, calibration={"source": str(text_file), "num_samples": 4,
                                                                      "seq_len": 32})
    model = AutoPrunedModel.from_pretrained(folder, pruning=config, progress=False, evaluate={
        "text": str(text_file), "repeats": 1, "new_tokens": 3, "decode_batches": [1], "energy_batch": 2,
        "energy_new_tokens": 4, **FAST})
    report = model.evaluation_report
    dense, pruned = report.models
    assert dense["name"] == "dense" and dense["pruning"] is None
    assert pruned["name"] == config.describe()
    assert pruned["pruning"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert pruned["pruning"]["config"]["calibration"]["num_samples"] == 4
    assert pruned["size"]["parameters"]["nonzero"] < dense["size"]["parameters"]["nonzero"]
    assert pruned["energy"]["pruning"]["energy_kwh"] > 0 and pruned["energy"]["generation"]["generated_tokens"] == 3 * 2 * 4
    assert pruned["energy"]["generation"]["interleaved_with"] == ["dense"]  # rounds alternate with the dense copy
    assert report.energy["tracking"]["summary"]
    assert "energy, pruning (Wh)" in report.to_markdown()

    out = tmp_path / "pruned"
    model.save_pretrained(out)
    saved = json.loads((out / "evaluation_report.json").read_text())
    assert saved["models"][1]["pruning"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    reloaded = AutoPrunedModel.from_pretrained(out)
    assert reloaded.evaluation_report.to_dict()["models"] == saved["models"]


def test_several_prunings_of_one_dense_model(tokenizer, text_file):
    model = tiny_model("llama")
    runs = {"mag 50%": PruningConfig(method="magnitude", sparsity=0.5),
            "mag 2:4": PruningConfig(method="magnitude", pattern="2:4")}
    report = prune_and_compare(model, tokenizer, runs, text=str(text_file), efficiency=True, side_by_side=True,
                               repeats=1, new_tokens=2, decode_batches=[1], disk=False, **FAST)
    assert [entry["name"] for entry in report.models] == ["dense", "mag 50%", "mag 2:4"]
    nonzero = {name: report[name]["size"]["parameters"]["nonzero"] for name in ("dense", "mag 50%", "mag 2:4")}
    assert nonzero["dense"] > nonzero["mag 50%"] == nonzero["mag 2:4"]  # timed at the end: dense was kept as a copy
    assert report["dense"]["pruning"] is None
    # 2:4 started from the dense weights, not from the 50% model: exactly half of the weights are zero
    assert report["mag 2:4"]["pruning"]["sparsity"] == 0.5
    assert report["mag 50%"]["pruning"]["config"]["pattern"] == "unstructured"
    assert model.pruning_config.pattern == "2:4"  # the last config prunes the given model in place
    assert set(report.ratios()) == {"mag 50%", "mag 2:4"}


def test_side_by_side_alternates_speed_and_energy_runs(tokenizer, text_file):
    dense, other = tiny_model("llama", seed=0), tiny_model("opt", seed=0)
    report = compare_models({"dense": dense, "other": other}, tokenizer, text=str(text_file), efficiency=True,
                            energy=True, side_by_side=True, repeats=2, new_tokens=3, decode_batches=[1],
                            energy_batch=2, energy_new_tokens=3, energy_rounds=2, disk=False, **FAST)
    for name, partner in (("dense", "other"), ("other", "dense")):
        entry = report[name]
        assert entry["efficiency"]["timed_with"] == [partner] and entry["efficiency"]["checkpoint_bytes"] is None
        assert entry["efficiency"]["decode"]["1"]["tokens_per_second"] > 0
        assert entry["energy"]["generation"]["generated_tokens"] == 2 * 2 * 3  # rounds x batch x tokens
        assert entry["energy"]["perplexity"]["energy_kwh"] > 0
    assert report["dense"]["efficiency"]["flops_per_token"]["total"] != report["other"]["efficiency"]["flops_per_token"]["total"]


def test_bad_input_is_rejected_before_any_model_work(tokenizer, tmp_path, text_file):
    model = tiny_model("llama")  # context: 256 positions
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    no_text = tmp_path / "rows.jsonl"
    no_text.write_text('{"content": "hello"}\n')
    cases = [
        ({"text": str(empty)}, DataSourceError, "contains no text"),
        ({"text": str(no_text)}, DataSourceError, "no text column 'text'"),
        ({"text": str(text_file), "seq_len": 512}, ValueError, "seq_len=512 is longer than the context of .* 256"),
        ({"text": str(text_file), "tasks": ["piqq"]}, TaskError, "unknown task 'piqq'"),
        ({"text": str(text_file), "energy": True, "country_iso_code": "XX"}, EnergyError, "unknown country code"),
        ({"text": str(text_file), "windows": 3}, ValueError, r"unknown evaluation setting\(s\) \['windows'\]"),
    ]
    for settings, error, message in cases:
        with pytest.raises(error, match=message):
            evaluate_model(model, tokenizer, **settings)


def test_a_version_1_report_still_loads_with_its_parameter_counts():
    """Reports written by pruning_hf 0.1 kept the parameter counts under `efficiency`."""
    entry = {"name": "dense", "perplexity": {"perplexity": 10.0, "tokens": 100, "windows": 2, "seq_len": 51},
             "efficiency": {"parameters": {"total": 50, "nonzero": 40}, "weights_bytes": 200,
                            "prefill": {"median_seconds": 0.5}, "decode": {"1": {"tokens_per_second": 8.0}}}}
    report = EvaluationReport.from_dict({"schema": "pruning_hf.evaluation/1", "settings": {}, "data": {},
                                         "models": [entry, {**entry, "name": "pruned"}]})
    metrics = report.metrics("pruned")
    assert (metrics["params_total"], metrics["params_nonzero"], metrics["weight_bytes"]) == (50, 40, 200)
    assert metrics["prefill_ms"] == 500.0 and metrics["decode_tokens_per_s"] == 8.0
    assert report.to_dict()["schema"] == "pruning_hf.evaluation/3"
    with pytest.raises(ValueError, match="not a pruning_hf evaluation report"):
        EvaluationReport.from_dict({"schema": "something/1"})


def test_report_names_an_embedded_model_not_its_cache_folder():
    """Reports (and the results JSON written from them) carry ``embedded:NAME``, never a machine path."""
    from types import SimpleNamespace

    import torch

    from pruning_hf.evaluation.session import _model_info
    from pruning_hf.models.embedded import cache_root

    embeddings = torch.nn.Embedding(4, 2)
    model = SimpleNamespace(config=SimpleNamespace(name_or_path=str(cache_root() / "embedded" / "smollm2-135m"),
                                                   model_type="llama"),
                            dtype=torch.float32, get_input_embeddings=lambda: embeddings)
    assert _model_info(model)["name_or_path"] == "embedded:smollm2-135m"
