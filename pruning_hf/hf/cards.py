"""Model cards for pruned checkpoints, rendered from ``model_cards/*.md`` Jinja templates.

A card is built only from the files of a saved checkpoint folder (``config.json`` with its
``pruning_config``, ``pruning_report.json``, and when present ``evaluation_report.json`` (or the
``evaluation.json`` of pruning_hf 0.1 checkpoints), ``recipe.yaml`` and sweep plots), so
``pruning-hf card DIR`` re-renders exactly what ``save_pretrained`` wrote. The YAML
metadata follows the Hub conventions: ``base_model``, ``library_name``, tags, ``model-index``
(:class:`~huggingface_hub.EvalResult`) and ``co2_eq_emissions`` in **grams** (codecarbon gives kg).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..config import PruningConfig
from ..data.text import parse_hub_source
from ..evaluation.energy import country_name, describe_source
from ..evaluation.report import EvaluationReport
from ..evaluation.tasks import TASK_SUFFIX
from ..models.embedded import EMBEDDED_MODELS, EMBEDDED_PREFIX, is_embedded
from ..utils.storage import atomic_file
from .files import CARD_FILE, EVALUATION_FILE, LEGACY_EVALUATION_FILE, RECIPE_FILE, SWEEP_PLOTS

__all__ = ["TEMPLATES", "render_model_card", "write_model_card", "reproduce_command", "base_model_id", "energy_line"]

TEMPLATES = Path(__file__).parent / "model_cards"  # a link to the repository's top-level model_cards/
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def base_model_id(pruned_from: str | None) -> str | None:
    """The Hub id a card names as ``base_model`` (embedded models map to their source repo)."""
    if not pruned_from:
        return None
    if is_embedded(pruned_from):
        entry = EMBEDDED_MODELS.get(pruned_from[len(EMBEDDED_PREFIX):])
        return entry.hub_id if entry else None
    if _HUB_ID.fullmatch(pruned_from) and not Path(pruned_from).exists():
        return pruned_from
    return None


def _dataset_fields(source: str) -> dict[str, str | None]:
    """EvalResult dataset fields for a text source string (see :mod:`pruning_hf.data.text`)."""
    name, _, split = source.partition("@")
    if name == "embedded":
        return {"dataset_type": "python-docs-prose", "dataset_split": split or "train",
                "dataset_name": f"Python documentation prose (shipped with CPython, {split or 'train'} split)"}
    if Path(source).expanduser().exists():
        return {"dataset_type": "local-text", "dataset_name": f"local text {Path(source).name}"}
    hub = parse_hub_source(source)
    label = hub.path + (f" ({hub.name})" if hub.name else "")
    return {"dataset_type": hub.path, "dataset_config": hub.name, "dataset_split": hub.split, "dataset_name": label}


def _count(value: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def _bytes(value: float) -> str:
    return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / 1e6:.1f} MB"


#: rows of the dense-vs-pruned table: metric key, label, formatter
_TABLE_ROWS = (
    ("perplexity", "perplexity", lambda v: f"{v:.3f}"),
    ("params_nonzero", "non-zero parameters", _count),
    ("params_total", "parameters", _count),
    ("weight_bytes", "weights as stored (dense safetensors)", _bytes),
    ("prefill_ms", "prefill latency (batch 1, ms)", lambda v: f"{v:.1f}"),
    ("decode_tokens_per_s", "decode speed (tokens/s, batch 1)", lambda v: f"{v:.1f}"),
    ("generation_wh_per_1k_tokens", "energy per 1k generated tokens (Wh)", lambda v: f"{v:.4f}"),
    ("generation_g_per_1k_tokens", "CO2e per 1k generated tokens (g)", lambda v: f"{v:.4f}"),
    ("energy_wh_per_1k_tokens", "energy per 1k evaluated tokens (Wh)", lambda v: f"{v:.4f}"),
    ("emissions_g", "CO2e of the evaluation workload (g)", lambda v: f"{v:.4f}"),
)


def energy_line(energy: dict) -> str:
    """One line for a pruning run's energy (:meth:`~pruning_hf.evaluation.energy.EnergyTracker.summary`)."""
    if energy.get("error"):
        return f"not measured ({energy['error']})"
    return (f"{energy['energy_kwh'] * 1e3:.4g} Wh, {energy['emissions_g']:.4g} g CO2e in {energy['seconds']:.1f} s "
            f"({energy['source']}; grid: {energy.get('country', '?')}, {energy.get('country_source', '?')})")


def _comparison_rows(evaluation: dict) -> list[dict[str, str]]:
    dense, pruned = evaluation.get("dense") or {}, evaluation.get("pruned") or {}
    rows = []
    tasks = tuple((key, f"{key.removesuffix(TASK_SUFFIX)} accuracy", lambda v: f"{v:.3f}")
                  for key in pruned if key.endswith(TASK_SUFFIX))
    timing = evaluation.get("timing") or {}  # speed ratios from paired interleaved rounds
    for key, label, fmt in _TABLE_ROWS + tasks:
        if key not in pruned:
            continue
        base = dense.get(key)
        ratio = f"{pruned[key] / base:.3f}x" if base else "-"
        if key in timing:
            ratio = f"{timing[key]['ratio']:.3f}x" if timing[key]["measurable"] else "no measurable difference"
        elif key in evaluation.get("timed_apart", ()):
            ratio = "timed apart: no ratio"
        rows.append({"metric": label, "dense": fmt(base) if base is not None else "-",
                     "pruned": fmt(pruned[key]), "ratio": ratio})
    return rows


def reproduce_command(pruning: dict, base: str, output: str = "pruned-model") -> str:
    """The ``pruning-hf prune`` command line that re-creates a checkpoint from its pruning config."""
    return " ".join(["pruning-hf prune", base, *PruningConfig.from_dict(pruning).to_cli_args(), "--output", output])


def _card_evaluation(folder: Path) -> dict:
    """Dense and pruned flat metrics, settings and energy from a folder's evaluation file (``{}`` without one)."""
    legacy = _read_json(folder / LEGACY_EVALUATION_FILE)
    if not (folder / EVALUATION_FILE).is_file():
        return legacy or {}
    report = EvaluationReport.load(folder / EVALUATION_FILE)
    if len(report.models) < 2:
        return legacy or {}
    converted = {"settings": {"text": report.settings.get("text"), "seq_len": report.settings.get("seq_len")},
                 "dense": report.metrics(report.baseline), "pruned": report.metrics(),
                 "timing": {r["metric"]: r for r in report.timing_ratios().values() if r.get("metric")},
                 "timed_apart": report.timed_apart()}
    if report.energy and not report.energy.get("error"):
        tracking = report.energy.get("tracking") or {}
        info = {"country": country_name(report.energy.get("country_iso_code")), "hardware": tracking.get("hardware", "?"),
                "source": describe_source(report.energy)}
        converted["pruned"]["energy_info"] = info
        pruning = (report.models[-1].get("energy") or {}).get("pruning")
        if pruning and "energy_kwh" in pruning:  # a report written before pruning_report.json held the energy
            converted["pruning_energy"] = {"tracking": tracking, "country_iso_code": report.energy.get("country_iso_code"),
                                           "codecarbon_version": report.energy.get("codecarbon_version"), **pruning}
    return converted


def _pruning_energy(report: dict, evaluation: dict) -> dict | None:
    """The pruning run's energy for the card: ``pruning_report.json`` (every run since it was on by default), else
    the evaluation report's ``pruning`` phase; with ``country`` / ``hardware`` / ``source`` filled in."""
    energy = report.get("energy") or evaluation.get("pruning_energy")
    if not energy or energy.get("error"):
        return energy
    return {**energy, "country": energy.get("country") or country_name(energy.get("country_iso_code")),
            "hardware": (energy.get("tracking") or {}).get("hardware", "?"),
            "source": energy.get("source") or describe_source(energy)}


def _co2_metadata(energy: dict | None) -> dict | None:
    if not energy or energy.get("error"):
        return None
    return {"emissions": float(f"{energy['emissions_g']:.6g}"), "source": energy["source"], "training_type": "pruning",
            "geographical_location": energy["country"], "hardware_used": energy["hardware"]}


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, location: str | None = None):
    """Build the :class:`~huggingface_hub.ModelCard` of the pruned checkpoint in ``folder``.

    ``repo_id`` (when pushing) or ``location`` (the final path, when ``folder`` is a temporary one)
    name the model in the card. Returns ``None`` for a folder without a ``pruning_config`` (dense).
    """
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    config = _read_json(folder / "config.json") or {}
    pruning = config.get("pruning_config")
    if not pruning:
        return None
    report = _read_json(folder / "pruning_report.json") or {}
    evaluation = _card_evaluation(folder)
    recipe = (folder / RECIPE_FILE).read_text(encoding="utf-8") if (folder / RECIPE_FILE).is_file() else None
    pruned_from = config.get("pruned_from")
    base = base_model_id(pruned_from)
    location = repo_id or location or str(folder)
    model_name = location.rstrip("/").split("/")[-1]
    shrunk = bool(report.get("parameters_removed"))  # structured / depth pruning: tensors got smaller
    pattern = str(pruning.get("pattern", "unstructured"))
    pattern_tag = "unstructured-sparsity" if pattern == "unstructured" else f"{pattern.replace(':', '-')}-sparsity"
    settings = evaluation.get("settings") or {}
    pruned_metrics = evaluation.get("pruned") or {}
    eval_results = None
    if "perplexity" in pruned_metrics:
        eval_results = [EvalResult(
            task_type="text-generation", task_name="Language modeling", metric_type="perplexity",
            metric_value=round(pruned_metrics["perplexity"], 4),
            metric_name=f"Perplexity ({pruned_metrics.get('eval_windows')} windows x {settings.get('seq_len')} tokens)",
            **_dataset_fields(settings.get("text", "embedded@test")))]
    calibration_source = (pruning.get("calibration") or {}).get("source", "embedded")
    datasets = None
    if pruning.get("method") != "magnitude" and not calibration_source.startswith("embedded") \
            and not Path(calibration_source).expanduser().exists():
        datasets = [parse_hub_source(calibration_source).path]
    energy = _pruning_energy(report, evaluation)
    card_data = ModelCardData(
        base_model=base, library_name="transformers", pipeline_tag="text-generation", model_name=model_name,
        datasets=datasets, tags=["pruning_hf", "pruned", pruning["method"],
                                 *(["structured-pruning"] if shrunk else ["sparse", pattern_tag])],
        eval_results=eval_results, co2_eq_emissions=_co2_metadata(energy))
    pruning_config = PruningConfig.from_dict(pruning)
    description = pruning_config.describe()
    source_for_command = pruned_from if pruned_from and not Path(pruned_from).exists() else "BASE_MODEL"
    plots = [name for name in SWEEP_PLOTS if (folder / name).is_file()]
    config_yaml = yaml.safe_dump(pruning_config.to_dict(applicable_only=True), sort_keys=False)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / "pruned_model.md"),
        title=f"{model_name}", description=description, base=base, pruned_from=pruned_from,
        pruning=pruning, config_yaml=config_yaml.strip(), report=report, recipe=recipe and recipe.strip(),
        evaluation=evaluation, settings=settings, rows=_comparison_rows(evaluation), energy=energy,
        plots=plots, load_from=location, repo_id=repo_id,
        command=reproduce_command(pruning, source_for_command, model_name),
        unstructured=pattern == "unstructured", pattern=pattern,
        compressed=bool((config.get("quantization_config") or {}).get("compression")),
        layer_shapes=bool((config.get("quantization_config") or {}).get("layer_shapes")),
        shrunk=shrunk,
        version=pruning.get("pruning_hf_version", "?"))


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None,
                     location: str | None = None) -> Path | None:
    """(Re)write ``folder/README.md`` atomically; returns its path (``None`` for a dense checkpoint)."""
    card = render_model_card(folder, repo_id, location)
    if card is None:
        return None
    target = Path(folder) / CARD_FILE
    with atomic_file(target) as tmp:
        tmp.write_text(str(card), encoding="utf-8")
    return target
