"""Energy and CO2 of any workload, with codecarbon's offline tracker (no network).

Usage::

    with EnergyTracker(country_iso_code="FRA") as energy:
        with energy.phase("pruning"):
            prune(model, cfg, tokenizer)
        with energy.phase("generation", generated_tokens=512):
            model.generate(...)
    energy.to_dict()   # {"country_iso_code", "tracking", "phases": {name: {...}}}

Each phase reports ``energy_kwh``, ``emissions_kg``, ``emissions_g`` (CO2-equivalent), ``seconds``,
the CPU / GPU / RAM split, and ``kwh_per_1k_tokens`` / ``g_per_1k_tokens`` when the phase generated
tokens. Emissions are energy times the grid carbon intensity of ``country_iso_code`` (codecarbon's
2023 energy-mix table; default :data:`DEFAULT_COUNTRY_ISO`, i.e. the USA).

``tracking`` says what codecarbon actually measured, so an estimate is never mistaken for a meter
reading: CPU power from Intel/AMD RAPL counters (a measurement) or, without RAPL (most VMs and
containers), from CPU load x the CPU's TDP (an estimate); GPU power from NVIDIA's NVML energy
counter (a measurement); RAM power always from codecarbon's per-GB model (an estimate).

Nothing is written to disk unless ``output_file`` is given; codecarbon's lock file is not used.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["DEFAULT_COUNTRY_ISO", "EnergyTracker", "PhaseEnergy", "check_country_iso", "country_name", "describe_source",
           "EnergyError"]

DEFAULT_COUNTRY_ISO = "USA"

_CPU_MODES = {
    "intel_rapl": ("RAPL energy counters", True),
    "intel_power_gadget": ("Intel Power Gadget", True),
    "apple_powermetrics": ("Apple powermetrics", True),
    "windows_emi": ("Windows energy meter interface", True),
    "cpu_load": ("estimate from CPU load x TDP (no RAPL counters readable)", False),
    "constant": ("estimate: constant share of TDP (no RAPL, no load reading)", False),
}


class EnergyError(ValueError):
    """Energy tracking cannot be set up as asked (e.g. an unknown country code)."""


def _known_countries() -> dict[str, str]:
    from codecarbon.input import DataSource

    return {code: data.get("country_name", code) for code, data in DataSource().get_global_energy_mix_data().items()}


def country_name(code: str) -> str:
    """codecarbon's name for an ISO alpha-3 country code (``"FRA"`` -> ``"France"``)."""
    return _known_countries().get(code.upper(), code)


def check_country_iso(code: str) -> str:
    """Return the upper-cased 3-letter ISO code if codecarbon has its energy mix, else raise EnergyError."""
    if not isinstance(code, str) or not code.strip():
        raise EnergyError(f"country_iso_code must be a 3-letter ISO code such as 'USA' or 'FRA', got {code!r}")
    known = _known_countries()
    upper = code.strip().upper()
    if upper not in known:
        hint = "" if len(upper) == 3 else " (3 letters: 'FRA', not 'FR')"
        raise EnergyError(f"unknown country code {code!r}{hint}: codecarbon has no energy mix for it; "
                          f"use one of its {len(known)} ISO 3166-1 alpha-3 codes, e.g. USA, FRA, DEU, GBR, CHN, IND")
    return upper


@dataclass
class PhaseEnergy:
    """Energy of one tracked phase. kWh and kg come from codecarbon; g = 1000 x kg."""

    name: str
    seconds: float = 0.0
    energy_kwh: float = 0.0
    cpu_kwh: float = 0.0
    gpu_kwh: float = 0.0
    ram_kwh: float = 0.0
    emissions_kg: float = 0.0
    generated_tokens: int | None = None

    @property
    def emissions_g(self) -> float:
        return self.emissions_kg * 1000.0

    def per_1k_tokens(self) -> dict[str, float] | None:
        if not self.generated_tokens:
            return None
        scale = 1000.0 / self.generated_tokens
        return {"kwh_per_1k_tokens": self.energy_kwh * scale, "g_per_1k_tokens": self.emissions_g * scale}

    @classmethod
    def combined(cls, name: str, records: Sequence["PhaseEnergy"]) -> "PhaseEnergy":
        """One record summing ``records`` (e.g. the rounds of one workload)."""
        tokens = sum(r.generated_tokens or 0 for r in records)
        total = cls(name=name, generated_tokens=tokens or None)
        for key in ("seconds", "energy_kwh", "cpu_kwh", "gpu_kwh", "ram_kwh", "emissions_kg"):
            setattr(total, key, sum(getattr(r, key) for r in records))
        return total

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["emissions_g"] = self.emissions_g
        data.update(self.per_1k_tokens() or {})
        return data


def describe_source(energy: dict[str, Any]) -> str:
    """``"codecarbon <version>: <what was measured or estimated>"`` for an :meth:`EnergyTracker.to_dict`."""
    return f"codecarbon {energy.get('codecarbon_version')}: {(energy.get('tracking') or {}).get('summary', '?')}"


def _hardware_name(tracker) -> str:
    """``"<CPU model> (<n> CPU threads)[, <k> x <GPU>]"`` as codecarbon detected it."""
    from codecarbon.core.util import count_cpus

    name = "CPU"
    gpus = []
    for hardware in getattr(tracker, "_hardware", None) or []:
        kind = type(hardware).__name__
        if kind in ("CPU", "AppleSiliconChip") and hasattr(hardware, "get_model"):
            name = hardware.get_model() or name
        elif kind == "GPU":
            gpus = [gpu.get("name", "GPU") for gpu in hardware.devices.get_gpu_static_info()] \
                if hasattr(hardware, "devices") else ["GPU"]
    described = f"{name} ({count_cpus()} CPU threads)"
    return described + (f", {len(gpus)} x {gpus[0]}" if gpus else "")


class EnergyTracker:
    """codecarbon ``OfflineEmissionsTracker`` measuring named phases of a workload.

    Args:
        country_iso_code: grid whose carbon intensity converts kWh to CO2e (validated here).
        output_file: also write codecarbon's CSV there (default: write nothing).
        tracking_mode: ``"process"`` (this process's share of CPU load and RAM; fair on a shared
            machine) or ``"machine"`` (the whole machine).
        measure_power_secs: power sampling interval inside a phase.
    """

    def __init__(self, country_iso_code: str = DEFAULT_COUNTRY_ISO, output_file: str | None = None,
                 tracking_mode: str = "process", measure_power_secs: float = 1.0) -> None:
        self.country_iso_code = check_country_iso(country_iso_code)
        if tracking_mode not in ("process", "machine"):
            raise EnergyError(f"tracking_mode must be 'process' or 'machine', got {tracking_mode!r}")
        self.tracking_mode = tracking_mode
        self.output_file = output_file
        self.measure_power_secs = measure_power_secs
        self.phases: dict[str, PhaseEnergy] = {}
        self.tracking: dict[str, Any] | None = None  # what codecarbon measures here; set on start
        self._tracker = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "EnergyTracker":
        from codecarbon import OfflineEmissionsTracker
        from codecarbon.output import OutputMethod

        if self._tracker is not None:
            return self
        kwargs: dict[str, Any] = {"output_methods": []}
        if self.output_file:
            path = Path(self.output_file).absolute()
            kwargs = {"output_methods": [OutputMethod.CSV], "output_dir": str(path.parent), "output_file": path.name}
        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its per-second INFO lines drown progress bars
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country_iso_code, tracking_mode=self.tracking_mode,
            measure_power_secs=self.measure_power_secs, allow_multiple_runs=True, log_level="error",
            project_name="pruning_hf", **kwargs)
        self._tracker.start()
        if getattr(self._tracker, "_start_time", None) is None:
            self._tracker = None
            raise EnergyError("codecarbon could not start its tracker (see the codecarbon log above)")
        self.tracking = self._describe_tracking()
        return self

    def stop(self) -> None:
        if self._tracker is not None:
            self._tracker.stop()
            self._tracker = None

    def __enter__(self) -> "EnergyTracker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- measuring -----------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str, generated_tokens: int | None = None) -> Iterator[PhaseEnergy]:
        """Measure the enclosed block as phase ``name``; the yielded record is filled on exit.

        Set ``record.generated_tokens`` inside the block when the count is known only then.
        """
        if name in self.phases:
            raise ValueError(f"energy phase {name!r} was already measured; give each phase its own name")
        self.start()
        record = PhaseEnergy(name=name, generated_tokens=generated_tokens)
        started = time.perf_counter()
        self._tracker.start_task(name)
        try:
            yield record
        finally:
            data = self._tracker.stop_task(name)
            record.seconds = time.perf_counter() - started
            if data is not None:
                record.energy_kwh = float(data.energy_consumed)
                record.cpu_kwh = float(data.cpu_energy)
                record.gpu_kwh = float(data.gpu_energy)
                record.ram_kwh = float(data.ram_energy)
                record.emissions_kg = float(data.emissions)
            self.phases[name] = record

    def _describe_tracking(self) -> dict[str, Any]:
        """What codecarbon measures vs estimates for CPU, GPU and RAM on this machine."""
        info: dict[str, Any] = {"tracking_mode": self.tracking_mode, "cpu": None, "gpu": None,
                                "ram": "estimate from installed RAM (codecarbon's per-GB model)"}
        measured = []
        for hardware in getattr(self._tracker, "_hardware", None) or []:
            kind = type(hardware).__name__
            if kind == "CPU":
                mode = getattr(hardware, "_mode", "unknown")
                label, is_measured = _CPU_MODES.get(mode, (f"codecarbon mode {mode!r}", False))
                info["cpu"] = f"{mode}: {label}"
                if is_measured:
                    measured.append("cpu")
            elif kind == "GPU":
                info["gpu"] = "nvml: NVIDIA energy counter"
                measured.append("gpu")
            elif kind == "AppleSiliconChip":
                info["cpu"] = "apple_powermetrics: Apple powermetrics"
                measured.append("cpu")
        info["hardware"] = _hardware_name(self._tracker)
        info["measured"] = measured
        info["summary"] = ("measured: " + ", ".join(measured) + "; RAM estimated") if measured else \
            "estimate (no hardware energy counter readable; codecarbon estimated CPU power from load x TDP)"
        return info

    def to_dict(self) -> dict[str, Any]:
        import codecarbon

        return {"country_iso_code": self.country_iso_code, "codecarbon_version": codecarbon.__version__,
                "tracking": self.tracking, "phases": {name: p.to_dict() for name, p in self.phases.items()}}
