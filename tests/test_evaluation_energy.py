"""Energy tracking with codecarbon: offline, positive kWh, no files written."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import pytest

from pruning_hf.evaluation.energy import EnergyError, EnergyTracker, check_country_iso


def _busy(seconds: float) -> int:
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count


def _codecarbon_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if "codecarbon" in p.name.lower() or "emissions" in p.name.lower()}


def test_tracker_runs_offline_measures_and_writes_nothing(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the energy tracker tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    shared_tmp = Path(tempfile.gettempdir())
    before = _codecarbon_files(shared_tmp)
    with EnergyTracker(country_iso_code="fra") as energy:
        with energy.phase("work", generated_tokens=500) as record:
            _busy(1.5)
    assert record.energy_kwh > 0 and record.emissions_kg > 0 and record.seconds >= 1.5
    assert record.cpu_kwh + record.gpu_kwh + record.ram_kwh == pytest.approx(record.energy_kwh, rel=1e-6)
    data = energy.to_dict()
    phase = data["phases"]["work"]
    assert phase["emissions_g"] == pytest.approx(1000 * phase["emissions_kg"])
    assert phase["kwh_per_1k_tokens"] == pytest.approx(phase["energy_kwh"] * 2)
    assert data["country_iso_code"] == "FRA"
    tracking = data["tracking"]
    assert tracking["cpu"] and tracking["summary"]
    assert ("cpu" in tracking["measured"]) == tracking["cpu"].startswith(("intel_rapl", "intel_power_gadget",
                                                                           "apple_powermetrics", "windows_emi"))
    assert list(tmp_path.iterdir()) == []
    assert _codecarbon_files(shared_tmp) <= before
    with pytest.raises(ValueError, match="already measured"):
        with energy.phase("work"):
            pass


def test_output_file_only_when_asked(tmp_path):
    target = tmp_path / "out" / "energy.csv"
    target.parent.mkdir()
    with EnergyTracker(output_file=str(target)) as energy:
        with energy.phase("short"):
            _busy(0.2)
    assert target.is_file() and "energy_consumed" in target.read_text()


@pytest.mark.parametrize("code, message", [("XXX", "unknown country code 'XXX'"), ("FR", "3 letters: 'FRA'"),
                                           ("", "3-letter ISO code")])
def test_unknown_country_codes_are_rejected(code, message):
    with pytest.raises(EnergyError, match=message):
        check_country_iso(code)
    with pytest.raises(EnergyError):
        EnergyTracker(country_iso_code=code)


def test_known_country_codes():
    assert check_country_iso("usa") == "USA"
    assert check_country_iso(" DEU ") == "DEU"
