"""Energy and CO2 of any workload, with codecarbon's offline tracker (no network).

Usage::

    with EnergyTracker(country_iso_code="FRA") as energy:
        with energy.phase("pruning"):
            prune(model, cfg, tokenizer)
        with energy.phase("generation", generated_tokens=512):
            model.generate(...)
    energy.to_dict()   # {"country_iso_code", "country", "country_source", "tracking", "phases": {name: {...}}}

    with tracked("my-job") as summary:      # one block; reuses a tracker already open in the process
        ...
    summary["emissions_g"], summary["source"]

Each phase reports ``energy_kwh``, ``emissions_kg``, ``emissions_g`` (CO2-equivalent), ``seconds``,
the CPU / GPU / RAM split, and ``kwh_per_1k_tokens`` / ``g_per_1k_tokens`` when the phase generated
tokens. Emissions are energy times the grid carbon intensity of ``country_iso_code`` (codecarbon's
energy-mix table). Without a country (:data:`DEFAULT_COUNTRY_ISO` is ``None``) codecarbon's own
default applies: the country of its configuration (``CODECARBON_COUNTRY_ISO_CODE`` or
``.codecarbon.config``), else the world-average carbon intensity; ``country_source`` says which.

``tracking`` says what codecarbon actually measured, so an estimate is never mistaken for a meter
reading: CPU power from Intel/AMD RAPL counters (a measurement) or, without RAPL (most VMs and
containers), from CPU load x the CPU's TDP (an estimate); GPU power from NVIDIA's NVML energy
counter (a measurement); RAM power always from codecarbon's per-GB model (an estimate).

One codecarbon tracker per process: an :class:`EnergyTracker` started while another is open shares
its tracker (and its country), and phases nest (an outer phase includes its inner ones). If
codecarbon cannot run (not installed, unsupported platform, any error while starting), the work
goes on: a warning is issued and every phase carries ``error`` (why energy is missing) instead of
numbers. Nothing is written to disk unless ``output_file`` is given; codecarbon's lock file is not used.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

__all__ = ["DEFAULT_COUNTRY_ISO", "EnergyTracker", "PhaseEnergy", "check_country_iso", "country_name", "describe_source",
           "EnergyError", "tracked"]

#: no country: codecarbon's own default (its configuration, else the world average)
DEFAULT_COUNTRY_ISO: str | None = None
WORLD_AVERAGE = "world average"

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


def country_name(code: str | None) -> str:
    """codecarbon's name for an ISO alpha-3 country code (``"FRA"`` -> ``"France"``; ``None``: world average)."""
    if not code:
        return WORLD_AVERAGE
    try:
        return _known_countries().get(code.upper(), code)
    except Exception:  # codecarbon missing: the code is all we know
        return code


def check_country_iso(code: str | None) -> str | None:
    """The upper-cased 3-letter ISO code if codecarbon has its energy mix (``None`` passes), else EnergyError."""
    if code is None:
        return None
    if not isinstance(code, str) or not code.strip():
        raise EnergyError(f"country_iso_code must be a 3-letter ISO code such as 'USA' or 'FRA', got {code!r}")
    upper = code.strip().upper()
    try:
        known = _known_countries()
    except ImportError:  # without codecarbon energy is not measured; the code cannot be checked
        return upper
    if upper not in known:
        hint = "" if len(upper) == 3 else " (3 letters: 'FRA', not 'FR')"
        raise EnergyError(f"unknown country code {code!r}{hint}: codecarbon has no energy mix for it; "
                          f"use one of its {len(known)} ISO 3166-1 alpha-3 codes, e.g. USA, FRA, DEU, GBR, CHN, IND")
    return upper


@dataclass
class PhaseEnergy:
    """Energy of one tracked phase. kWh and kg come from codecarbon; g = 1000 x kg.

    ``error`` (why nothing was measured) replaces the numbers when codecarbon could not run.
    """

    name: str
    seconds: float = 0.0
    energy_kwh: float = 0.0
    cpu_kwh: float = 0.0
    gpu_kwh: float = 0.0
    ram_kwh: float = 0.0
    emissions_kg: float = 0.0
    generated_tokens: int | None = None
    error: str | None = None

    @property
    def emissions_g(self) -> float:
        return self.emissions_kg * 1000.0

    def add(self, data) -> None:
        """Add one codecarbon reading (an ``EmissionsData``)."""
        self.energy_kwh += float(data.energy_consumed)
        self.cpu_kwh += float(data.cpu_energy)
        self.gpu_kwh += float(data.gpu_energy)
        self.ram_kwh += float(data.ram_energy)
        self.emissions_kg += float(data.emissions)

    def per_1k_tokens(self) -> dict[str, float] | None:
        if not self.generated_tokens or self.error:
            return None
        scale = 1000.0 / self.generated_tokens
        return {"kwh_per_1k_tokens": self.energy_kwh * scale, "g_per_1k_tokens": self.emissions_g * scale}

    @classmethod
    def combined(cls, name: str, records: Sequence["PhaseEnergy"]) -> "PhaseEnergy":
        """One record summing ``records`` (e.g. the rounds of one workload)."""
        tokens = sum(r.generated_tokens or 0 for r in records)
        total = cls(name=name, generated_tokens=tokens or None,
                    error=next((r.error for r in records if r.error), None))
        for key in ("seconds", "energy_kwh", "cpu_kwh", "gpu_kwh", "ram_kwh", "emissions_kg"):
            setattr(total, key, sum(getattr(r, key) for r in records))
        return total

    def to_dict(self) -> dict[str, Any]:
        if self.error:
            return {"name": self.name, "seconds": self.seconds, "generated_tokens": self.generated_tokens,
                    "error": self.error}
        data = {k: v for k, v in asdict(self).items() if k != "error"}
        data["emissions_g"] = self.emissions_g
        data.update(self.per_1k_tokens() or {})
        return data


def describe_source(energy: dict[str, Any]) -> str:
    """``"codecarbon <version>: <what was measured or estimated>"`` for an :meth:`EnergyTracker.to_dict`
    (or a :meth:`EnergyTracker.summary`); ``"not measured: <why>"`` when codecarbon could not run."""
    if energy.get("error"):
        return f"not measured: {energy['error']}"
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


def _describe_tracking(tracker, tracking_mode: str) -> dict[str, Any]:
    """What codecarbon measures vs estimates for CPU, GPU and RAM on this machine."""
    info: dict[str, Any] = {"tracking_mode": tracking_mode, "cpu": None, "gpu": None,
                            "ram": "estimate from installed RAM (codecarbon's per-GB model)"}
    measured = []
    for hardware in getattr(tracker, "_hardware", None) or []:
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
    info["hardware"] = _hardware_name(tracker)
    info["measured"] = measured
    info["summary"] = ("measured: " + ", ".join(measured) + "; RAM estimated") if measured else \
        "estimate (no hardware energy counter readable; codecarbon estimated CPU power from load x TDP)"
    return info


class _Meter:
    """The process's one codecarbon tracker, shared by the :class:`EnergyTracker` objects open at once.

    codecarbon measures one task at a time, so phases may nest: each open phase adds the readings of
    the segments (codecarbon tasks) it was open for; opening or closing a phase ends a segment.
    """

    active: ClassVar["_Meter | None"] = None

    def __init__(self, country_iso_code: str | None, output_file: str | None, tracking_mode: str,
                 measure_power_secs: float) -> None:
        from codecarbon import OfflineEmissionsTracker
        from codecarbon.output import OutputMethod

        kwargs: dict[str, Any] = {"output_methods": []}
        if output_file:
            path = Path(output_file).absolute()
            kwargs = {"output_methods": [OutputMethod.CSV], "output_dir": str(path.parent), "output_file": path.name}
        if country_iso_code:  # otherwise codecarbon's own configuration / default decides
            kwargs["country_iso_code"] = country_iso_code
        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its per-second INFO lines drown progress bars
        self.tracker = OfflineEmissionsTracker(tracking_mode=tracking_mode, measure_power_secs=measure_power_secs,
                                               allow_multiple_runs=True, log_level="error", project_name="pruning_hf",
                                               **kwargs)
        self.tracker.start()
        if getattr(self.tracker, "_start_time", None) is None:
            raise RuntimeError("codecarbon's tracker did not start (see the codecarbon log)")
        configured = getattr(self.tracker, "_country_iso_code", None)
        self.country_iso_code = country_iso_code or (configured.upper() if configured else None)
        self.country_source = ("set with country_iso_code / --country-iso" if country_iso_code else
                               "from codecarbon's configuration" if configured else
                               "codecarbon's default: no country set")
        self.tracking = _describe_tracking(self.tracker, tracking_mode)
        self.users = 0
        self.open: list[PhaseEnergy] = []
        self._segments = 0

    def _cut(self) -> None:
        data = self.tracker.stop_task(f"segment-{self._segments}")
        if data is not None:
            for record in self.open:
                record.add(data)

    def _begin(self) -> None:
        self._segments += 1
        self.tracker.start_task(f"segment-{self._segments}")

    def enter(self, record: PhaseEnergy) -> None:
        if self.open:
            self._cut()
        self.open.append(record)
        self._begin()

    def leave(self, record: PhaseEnergy) -> None:
        self._cut()
        self.open.remove(record)
        if self.open:
            self._begin()

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            _Meter.active = None
            self.tracker.stop()


class EnergyTracker:
    """codecarbon ``OfflineEmissionsTracker`` measuring named phases of a workload.

    Args:
        country_iso_code: grid whose carbon intensity converts kWh to CO2e (validated here);
            ``None``: codecarbon's configuration, else the world average.
        output_file: also write codecarbon's CSV there (default: write nothing).
        tracking_mode: ``"process"`` (this process's share of CPU load and RAM; fair on a shared
            machine) or ``"machine"`` (the whole machine).
        measure_power_secs: power sampling interval inside a phase.

    Started while another tracker of this process is open, it shares that one's codecarbon tracker
    (its country, output file and mode); a different country asked for is warned about.
    """

    def __init__(self, country_iso_code: str | None = DEFAULT_COUNTRY_ISO, output_file: str | None = None,
                 tracking_mode: str = "process", measure_power_secs: float = 1.0) -> None:
        self.requested_country = check_country_iso(country_iso_code)
        if tracking_mode not in ("process", "machine"):
            raise EnergyError(f"tracking_mode must be 'process' or 'machine', got {tracking_mode!r}")
        self.tracking_mode = tracking_mode
        self.output_file = output_file
        self.measure_power_secs = measure_power_secs
        self.phases: dict[str, PhaseEnergy] = {}
        self.error: str | None = None  # why codecarbon could not run; set on start
        self._meter: _Meter | None = None
        self._info: dict[str, Any] = {}

    @property
    def country_iso_code(self) -> str | None:
        return self._info.get("country_iso_code", self.requested_country)

    @property
    def tracking(self) -> dict[str, Any] | None:
        return self._info.get("tracking")

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "EnergyTracker":
        """Start (or join) the process's codecarbon tracker; on failure warn and record why (no exception)."""
        if self._meter is not None or self.error is not None:
            return self
        meter = _Meter.active
        if meter is None:
            try:
                meter = _Meter(self.requested_country, self.output_file, self.tracking_mode, self.measure_power_secs)
            except Exception as err:  # ImportError, unsupported platform, codecarbon bugs: never stop the work
                self.error = f"codecarbon could not start ({type(err).__name__}: {str(err).strip() or 'no details'})"
                warnings.warn(f"energy and CO2 are not measured: {self.error}", RuntimeWarning, stacklevel=2)
                return self
            _Meter.active = meter
        elif self.requested_country and self.requested_country != meter.country_iso_code:
            warnings.warn(f"country_iso_code={self.requested_country!r} ignored: this process already tracks energy "
                          f"with {meter.country_iso_code or WORLD_AVERAGE!r} (one codecarbon tracker per process)",
                          RuntimeWarning, stacklevel=2)
        meter.users += 1
        self._meter = meter
        self._info = {"country_iso_code": meter.country_iso_code, "country": country_name(meter.country_iso_code),
                      "country_source": meter.country_source, "tracking": meter.tracking}
        return self

    def stop(self) -> None:
        if self._meter is not None:
            meter, self._meter = self._meter, None
            meter.release()

    def __enter__(self) -> "EnergyTracker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- measuring -----------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str, generated_tokens: int | None = None) -> Iterator[PhaseEnergy]:
        """Measure the enclosed block as phase ``name``; the yielded record is filled on exit.

        Set ``record.generated_tokens`` inside the block when the count is known only then. Phases
        may nest; an outer phase includes the inner ones.
        """
        if name in self.phases:
            raise ValueError(f"energy phase {name!r} was already measured; give each phase its own name")
        self.start()
        record = PhaseEnergy(name=name, generated_tokens=generated_tokens, error=self.error)
        meter = self._meter
        started = time.perf_counter()
        if meter is not None:
            meter.enter(record)
        try:
            yield record
        finally:
            if meter is not None:
                meter.leave(record)
            record.seconds = time.perf_counter() - started
            self.phases[name] = record

    def info(self) -> dict[str, Any]:
        """``{"country_iso_code", "country", "country_source", "codecarbon_version", "tracking"}``, or ``{"error"}``."""
        if self.error:
            return {"error": self.error}
        import codecarbon

        return {**self._info, "codecarbon_version": codecarbon.__version__}

    def summary(self, record: PhaseEnergy) -> dict[str, Any]:
        """One phase with what it was measured with (country, codecarbon version, ``source`` line)."""
        data = {**record.to_dict(), **self.info()}
        data["source"] = describe_source(data)
        return data

    def to_dict(self) -> dict[str, Any]:
        return {**self.info(), "phases": {name: p.to_dict() for name, p in self.phases.items()}}


@contextmanager
def tracked(name: str, country_iso_code: str | None = DEFAULT_COUNTRY_ISO,
            generated_tokens: int | None = None) -> Iterator[dict[str, Any]]:
    """Energy of the enclosed block as one dict, filled on exit (:meth:`EnergyTracker.summary`).

    Reuses the tracker already open in this process (as a nested phase), else runs one for the block.
    """
    summary: dict[str, Any] = {}
    with EnergyTracker(country_iso_code) as tracker:
        with tracker.phase(name, generated_tokens) as record:
            yield summary
        summary.update(tracker.summary(record))
