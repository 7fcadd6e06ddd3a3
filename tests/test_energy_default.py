"""Energy on by default: every pruning run tracked (offline codecarbon), in pruning_report.json and the card's
co2_eq_emissions (grams); --no-energy turns it off; a codecarbon failure is a warning the card explains;
one codecarbon tracker per process, phases nest."""

from __future__ import annotations

import json
import types

import codecarbon
import pytest
from huggingface_hub import ModelCard

from conftest import tiny_model
from pruning_hf import prune
from pruning_hf.cli import main
from pruning_hf.evaluation.energy import EnergyTracker


def _prune_cli(folder, out, *extra):
    return main(["prune", str(folder), "--method", "magnitude", "--sparsity", "0.5", "--output", str(out),
                 "--no-progress", *extra])


def test_a_default_prune_writes_energy_to_the_report_and_the_card_in_grams(make_checkpoint, tmp_path, capsys):
    folder = make_checkpoint("llama")
    assert _prune_cli(folder, tmp_path / "default") == 0
    printed = capsys.readouterr().out
    assert "energy of the pruning run: " in printed and " g CO2e in " in printed and "estimate" in printed
    energy = json.loads((tmp_path / "default" / "pruning_report.json").read_text())["energy"]
    co2 = ModelCard.load(tmp_path / "default" / "README.md").data.co2_eq_emissions
    assert co2["emissions"] > 0 and co2["emissions"] == pytest.approx(energy["emissions_kg"] * 1000, rel=1e-5)
    assert co2["training_type"] == "pruning" and "codecarbon" in co2["source"]
    assert energy["energy_kwh"] > 0 and energy["seconds"] > 0 and energy["tracking"]["summary"]
    assert co2["geographical_location"] == "world average" and energy["country_iso_code"] is None  # codecarbon's
    assert "codecarbon's default: no country set" in (tmp_path / "default" / "README.md").read_text()

    assert _prune_cli(folder, tmp_path / "fra", "--country-iso", "FRA") == 0
    card = ModelCard.load(tmp_path / "fra" / "README.md")
    assert card.data.co2_eq_emissions["geographical_location"] == "France"
    assert "France (set with country_iso_code / --country-iso)" in card.text


def test_no_energy_writes_no_energy_fields(make_checkpoint, tmp_path):
    assert _prune_cli(make_checkpoint("llama"), tmp_path / "off", "--no-energy") == 0
    assert "energy" not in json.loads((tmp_path / "off" / "pruning_report.json").read_text())
    card = ModelCard.load(tmp_path / "off" / "README.md")
    assert "co2_eq_emissions" not in card.data.to_dict() and "Energy" not in card.text


class BrokenTracker:
    """codecarbon failing as on an unsupported platform."""

    def __init__(self, **kwargs) -> None:
        self._start_time = None

    def start(self) -> None:
        raise RuntimeError("no power reading on this platform")


def test_a_codecarbon_failure_is_a_warning_and_the_card_says_why(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", BrokenTracker)
    model = tiny_model("llama")
    with pytest.warns(RuntimeWarning, match="energy and CO2 are not measured"):
        report = prune(model, {"method": "magnitude", "sparsity": 0.5}, tokenizer, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)  # the run went on
    model.save_pretrained(tmp_path / "pruned")
    energy = json.loads((tmp_path / "pruned" / "pruning_report.json").read_text())["energy"]
    assert "no power reading on this platform" in energy["error"] and "energy_kwh" not in energy
    card = ModelCard.load(tmp_path / "pruned" / "README.md")
    assert "co2_eq_emissions" not in card.data.to_dict()
    assert "Not measured: codecarbon could not start (RuntimeError: no power reading on this platform)" in card.text


class CountingTracker:
    """One kWh and one kg per codecarbon task; counts how many trackers the process built."""

    built = 0

    def __init__(self, country_iso_code=None, **kwargs) -> None:
        CountingTracker.built += 1
        self._hardware, self._start_time, self._country_iso_code = [], None, country_iso_code

    def start(self) -> None:
        self._start_time = 0.0

    def stop(self) -> None:
        pass

    def start_task(self, name) -> None:
        pass

    def stop_task(self, name):
        return types.SimpleNamespace(energy_consumed=1.0, cpu_energy=1.0, gpu_energy=0.0, ram_energy=0.0, emissions=1.0)


def test_one_tracker_per_process_and_phases_nest(tokenizer, monkeypatch):
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", CountingTracker)
    CountingTracker.built = 0
    model = tiny_model("llama")
    with EnergyTracker("FRA") as outer:
        with outer.phase("job") as job:
            prune(model, {"method": "magnitude", "sparsity": 0.5}, tokenizer, progress=False)  # a nested phase
            with outer.phase("after"):
                pass
    assert CountingTracker.built == 1  # prune reused the open tracker
    # each phase opening or closing ends a codecarbon task ("segment"): job, job+pruning, job, job+after, job
    assert model.pruning_energy["energy_kwh"] == 1.0 and outer.phases["after"].energy_kwh == 1.0
    assert job.energy_kwh == 5.0 and job.emissions_g == 5000.0  # it contains both inner phases
    assert model.pruning_energy["country_iso_code"] == "FRA"  # the outer tracker's grid
    prune(tiny_model("llama"), {"method": "magnitude", "sparsity": 0.5}, tokenizer, progress=False)
    assert CountingTracker.built == 2  # no tracker open any more: the run had its own
