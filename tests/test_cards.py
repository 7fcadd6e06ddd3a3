"""Model cards: Hub metadata (model-index, co2_eq_emissions in grams), body, regeneration on save."""

from __future__ import annotations

import types

import codecarbon
import pytest
from huggingface_hub import ModelCard

from pruning_hf import Recipe, prune
from pruning_hf.hf.cards import base_model_id, render_model_card
from pruning_hf.cli import main
from pruning_hf.evaluation.energy import EnergyTracker
from pruning_hf import AutoPrunedModel
from pruning_hf.hf.loading import load_model

KG_PER_RUN = 0.0025  # what the fake tracker reports, in kilograms as codecarbon does
KWH_PER_RUN = 0.01


class FakeCPU:
    _mode = "cpu_load"

    def get_model(self) -> str:
        return "Test CPU"


FakeCPU.__name__ = "CPU"  # the tracker reads hardware kinds by class name, as codecarbon names them


class FakeTracker:
    """Stands in for codecarbon's OfflineEmissionsTracker with known readings per task."""

    def __init__(self, country_iso_code: str | None = None, **kwargs) -> None:
        self._hardware = [FakeCPU()]
        self._start_time = None
        self._country_iso_code = country_iso_code

    def start(self) -> None:
        self._start_time = 0.0

    def stop(self) -> None:
        pass

    def start_task(self, name: str) -> None:
        pass

    def stop_task(self, name: str):
        return types.SimpleNamespace(energy_consumed=KWH_PER_RUN, cpu_energy=KWH_PER_RUN, gpu_energy=0.0,
                                     ram_energy=0.0, emissions=KG_PER_RUN)


def test_card_metadata_parses_with_model_index_and_co2_in_grams(make_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", FakeTracker)
    recipe = Recipe.from_dict({
        "name": "tiny-sparsegpt", "model": {"id": str(make_checkpoint("llama")), "dtype": "float32"},
        "pruning": {"method": "sparsegpt", "pattern": "2:4"}, "calibration": {"num_samples": 4, "seq_len": 64},
        "evaluation": {"seq_len": 64, "max_windows": 4, "energy": True, "country_iso_code": "FRA"},
        "output": str(tmp_path / "tiny-sparsegpt")})
    result = recipe.run(progress=False)
    card = ModelCard.load(result.output / "README.md")

    co2 = card.data.co2_eq_emissions
    assert co2["emissions"] == pytest.approx(KG_PER_RUN * 1000)  # grams, the Hub convention
    assert co2["geographical_location"] == "France" and co2["hardware_used"].startswith("Test CPU (")
    assert "codecarbon" in co2["source"] and "estimated" in co2["source"]
    assert co2["training_type"] == "pruning"
    (evaluated,) = card.data.eval_results
    assert evaluated.metric_type == "perplexity" and evaluated.task_type == "text-generation"
    assert evaluated.metric_value == pytest.approx(result.metrics["perplexity"], rel=1e-4)
    assert (evaluated.dataset_type, evaluated.dataset_split) == ("python-docs-prose", "test")
    assert card.data.model_name == "tiny-sparsegpt"
    assert "model-index" in card.content and card.data.library_name == "transformers"
    assert {"pruning_hf", "pruned", "sparsegpt", "2-4-sparsity"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder is not a Hub id

    body = card.text
    assert "## Dense vs pruned" in body and "| perplexity |" in body and "| non-zero parameters |" in body
    assert "0.01 kWh, 2.5 g CO2e" in body and "**estimate**" in body  # the pruning run, from the fake readings
    assert "France (set with country_iso_code / --country-iso)" in body
    assert "method: sparsegpt" in body and "pattern: '2:4'" in body  # how it was pruned
    assert "name: tiny-sparsegpt" in body and "pruning-hf run recipe.yaml" in body  # recipe + reproduction
    assert "sparse tensor cores" in body  # limitation specific to N:M
    assert f'from_pretrained("{result.output}")' in body


def test_real_codecarbon_reading_is_in_grams_and_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with EnergyTracker("USA") as tracker, tracker.phase("work") as energy:
        sum(i * i for i in range(2_000_000))
    assert energy.energy_kwh > 0
    intensity = energy.emissions_g / energy.energy_kwh  # grid carbon intensity, g CO2e per kWh
    assert 50 < intensity < 1500  # grams; kilograms would give ~0.4
    assert list(tmp_path.iterdir()) == []


def test_card_is_regenerated_on_every_save_and_by_the_cli(make_checkpoint, tokenizer, tmp_path, capsys):
    model = load_model(make_checkpoint("opt"))
    model.config.pruned_from = "facebook/opt-125m"  # as if loaded from the Hub
    prune(model, {"method": "magnitude", "sparsity": 0.3}, tokenizer, progress=False)
    folder = tmp_path / "opt-magnitude"
    model.save_pretrained(folder)
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "facebook/opt-125m" and "magnitude 30% unstructured" in card.text
    assert "pruning-hf prune facebook/opt-125m --method magnitude --sparsity 0.3" in card.text
    assert card.data.eval_results is None  # nothing evaluated; the pruning run's energy is tracked by default
    assert card.data.co2_eq_emissions["emissions"] > 0

    reloaded = AutoPrunedModel.from_pretrained(folder)
    prune(reloaded, {"method": "magnitude", "sparsity": 0.6}, tokenizer, progress=False)
    reloaded.save_pretrained(folder)  # same folder, new pruning: the card follows
    card = ModelCard.load(folder / "README.md")
    assert "magnitude 60% unstructured" in card.text and card.data.base_model == "facebook/opt-125m"

    (folder / "README.md").unlink()
    assert main(["card", str(folder)]) == 0 and (folder / "README.md").is_file()
    assert "magnitude 60%" in ModelCard.load(folder / "README.md").text
    assert main(["card", str(make_checkpoint("llama", name="dense"))]) == 2  # a dense checkpoint has no card
    assert "not a pruned checkpoint" in capsys.readouterr().err
    assert render_model_card(folder, repo_id="alice/opt-mag").data.model_name == "opt-mag"


def test_base_model_ids():
    assert base_model_id("embedded:smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("embedded:gemma3-270m") == "google/gemma-3-270m"
    assert base_model_id("facebook/opt-1.3b") == "facebook/opt-1.3b"
    assert base_model_id("/tmp/some/folder") is None and base_model_id(None) is None
    from pruning_hf.models.embedded import cache_root, public_model_name

    assert public_model_name(str(cache_root() / "embedded" / "smollm2-135m")) == "embedded:smollm2-135m"
    assert public_model_name("facebook/opt-125m") == "facebook/opt-125m"


def test_card_of_a_structurally_pruned_model_says_what_was_removed_and_how_to_load(tmp_path):
    from test_structured import pruned, structured

    model, report = pruned("llama", structured(target="mlp", sparsity=0.5, importance="random",
                                               allocation="adaptive"), layers=4)
    model.save_pretrained(tmp_path / "shrunk")
    card = (tmp_path / "shrunk" / "README.md").read_text()
    assert f"{report.parameters_removed:.2%} of all parameters are physically removed" in card
    assert "structured-pruning" in card and "import pruning_hf  # pip install pruning-hf: rebuilds" in card
    assert "smaller and faster with ordinary dense kernels" in card and "sparse tensor cores" not in card


def test_card_shows_the_dense_vs_pruned_report_of_an_evaluated_prune(make_checkpoint, text_file, tmp_path, monkeypatch):
    """`from_pretrained(..., evaluate=...)` (or `pruning-hf prune --eval-text`) writes evaluation_report.json:
    its perplexity, speed, task accuracy and energy reach the card."""
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", FakeTracker)
    task = tmp_path / "yesno.jsonl"
    task.write_text('{"context": "The sky is", "choices": [" blue", " green"], "label": 0}\n' * 3)
    model = AutoPrunedModel.from_pretrained(
        make_checkpoint("llama"), pruning={"method": "magnitude", "sparsity": 0.5}, progress=False,
        evaluate={"text": str(text_file), "seq_len": 32, "max_windows": 2, "tasks": [f"yesno={task}"],
                  "samples": False, "efficiency": True, "repeats": 1, "decode_batches": [1], "new_tokens": 4,
                  "disk": False, "energy": True, "energy_batch": 1, "energy_new_tokens": 2, "progress": False})
    model.save_pretrained(tmp_path / "evaluated")
    card = ModelCard.load(tmp_path / "evaluated" / "README.md")
    report = model.evaluation_report.to_dict()
    pruned_ppl = report["models"][-1]["perplexity"]["perplexity"]
    assert card.data.eval_results[0].metric_value == pytest.approx(pruned_ppl, rel=1e-4)
    for row in ("| perplexity |", "| non-zero parameters |", "| decode speed (tokens/s, batch 1) |",
                "| yesno accuracy |", "| CO2e of the evaluation workload (g) |"):
        assert row in card.text, row
    assert card.data.co2_eq_emissions["emissions"] == pytest.approx(KG_PER_RUN * 1000)  # the pruning phase


def test_a_checkpoint_with_the_old_evaluation_file_still_loads_renders_and_keeps_it(make_checkpoint, tokenizer,
                                                                                    tmp_path):
    """pruning_hf 0.1 recipes and sweeps wrote flat metrics to evaluation.json; such checkpoints keep working."""
    import json

    model = load_model(make_checkpoint("llama"))
    prune(model, {"method": "magnitude", "sparsity": 0.5}, tokenizer, progress=False)
    folder = tmp_path / "old"
    model.save_pretrained(folder)
    legacy = {"settings": {"text": "embedded@test", "seq_len": 64},
              "dense": {"perplexity": 12.5, "params_nonzero": 1000, "eval_windows": 4, "eval_tokens": 252},
              "pruned": {"perplexity": 19.25, "params_nonzero": 600, "eval_windows": 4, "eval_tokens": 252},
              "pruning_energy": None}
    (folder / "evaluation.json").write_text(json.dumps(legacy))
    assert main(["card", str(folder)]) == 0
    card = ModelCard.load(folder / "README.md")
    assert "## Dense vs pruned" in card.text and "| perplexity | 12.500 | 19.250 | 1.540x |" in card.text
    reloaded = AutoPrunedModel.from_pretrained(folder)
    reloaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "evaluation.json").read_text()) == legacy
    assert "| perplexity | 12.500 | 19.250 | 1.540x |" in (tmp_path / "again" / "README.md").read_text()
