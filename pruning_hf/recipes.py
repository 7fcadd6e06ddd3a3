"""Recipes: one YAML file that says how a pruned model is made, measured and published.

```yaml
name: smollm2-135m-wanda-50          # required; default output folder out/<name>
description: ...
model: {id: embedded:smollm2-135m, dtype: float32}     # id: Hub id, local folder or embedded:NAME
pruning: {method: wanda, sparsity: 0.5}                 # any PruningConfig field (any registered method)
calibration: {source: embedded, num_samples: 32, seq_len: 512}
evaluation: {text: embedded@test, seq_len: 512, max_windows: 40, dense: true, efficiency: false, energy: false}
output: out/smollm2-135m-wanda-50
hub: {repo_id: USER/NAME, private: false}               # used by `run --push-to-hub`
expected:                                               # checked by `run --check`
  perplexity: {value: 17.4, rel_tol: 0.02}
quick: {calibration: {num_samples: 8}, expected: {...}} # overrides merged by --quick (CI)
```

Unknown keys and wrong types are :class:`RecipeError` naming the file, line and YAML path. The recipe
actually run is saved as ``recipe.yaml`` next to the checkpoint, so every published model can be
rebuilt from its own folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cards import EVALUATION_FILE, RECIPE_FILE
from .config import CalibrationConfig, PruningConfig
from .measurements import MeasureSettings, is_metric

__all__ = ["Recipe", "RecipeError", "RecipeResult", "Expectation", "Check"]


class RecipeError(ValueError):
    """A recipe file is malformed; the message names the file, line and key path."""


@dataclass
class ModelSection:
    id: str = field(metadata={"help": "Hub id, local checkpoint folder, or embedded:NAME."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision."})
    dtype: str = field(default="auto", metadata={"help": "torch dtype: auto, float32, bfloat16, float16."})
    device_map: str | None = field(default=None, metadata={"help": "accelerate device map, e.g. auto."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})

    def hf_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dtype": self.dtype, "trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.device_map:
            kwargs["device_map"] = self.device_map
        return kwargs


@dataclass
class EvaluationSection:
    text: str = field(default="embedded@test", metadata={"help": "Evaluation text source."})
    seq_len: int = field(default=512, metadata={"help": "Tokens per window."})
    max_windows: int | None = field(default=40, metadata={"help": "Windows evaluated (null: whole text)."})
    text_column: str = "text"
    batch_size: int = 4
    dense: bool = field(default=True, metadata={"help": "Also measure the dense model (dense_* metrics)."})
    efficiency: bool = False
    energy: bool = False
    country_iso_code: str = "USA"
    tasks: list[str] = field(default_factory=list, metadata={"help": "Accuracy tasks; metrics <name>_acc."})
    task_limit: int | None = None

    def settings(self) -> MeasureSettings:
        return MeasureSettings(text=self.text, seq_len=self.seq_len, max_windows=self.max_windows,
                               text_column=self.text_column, batch_size=self.batch_size,
                               efficiency=self.efficiency, energy=self.energy,
                               country_iso_code=self.country_iso_code, tasks=self.tasks, task_limit=self.task_limit)


@dataclass
class HubSection:
    repo_id: str | None = None
    private: bool = False


@dataclass
class Expectation:
    """An expected value; measured ``m`` passes when ``|m - value| <= max(abs_tol, rel_tol * |value|)``."""

    value: float
    rel_tol: float | None = None
    abs_tol: float | None = None

    def allowed(self) -> float:
        return max(self.abs_tol or 0.0, (self.rel_tol or 0.0) * abs(self.value))

    def describe(self) -> str:
        parts = [f"±{self.rel_tol:.1%}" if self.rel_tol is not None else "",
                 f"±{self.abs_tol:g}" if self.abs_tol is not None else ""]
        return " or ".join(p for p in parts if p)


@dataclass
class Check:
    metric: str
    expected: Expectation
    measured: float | None

    @property
    def passed(self) -> bool:
        return self.measured is not None and math.isfinite(self.measured) and \
            abs(self.measured - self.expected.value) <= self.expected.allowed()


_TOP_KEYS = ["name", "description", "model", "pruning", "calibration", "evaluation", "output", "hub", "expected",
             "quick"]


def _type_name(hint) -> str:
    if typing.get_origin(hint) is list:
        item = _type_name(typing.get_args(hint)[0])
        return f"a list of {item.split(' ', 1)[-1]}s"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _check_value(value: Any, hint, where: str) -> Any:
    """``value`` if it fits the type hint (``X``, ``X | None``), else a message-bearing RecipeError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool, dict) and isinstance(value, option):
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [_check_value(element, item, f"{where}[{i}]") for i, element in enumerate(value)]
    wanted = " or ".join(_type_name(o) if o is not type(None) else "null" for o in options)
    raise RecipeError(f"{where}: expected {wanted}, got {value!r} ({type(value).__name__})")


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, value: Any, where: str):
    """Build a section dataclass from a YAML mapping, rejecting unknown keys and wrong types."""
    data = _mapping(value, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise RecipeError(f"{where}.{key}: unknown key; allowed in {where}: {', '.join(names)}")
    for f in dataclasses.fields(cls):
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}.{f.name}: required key is missing")
    return cls(**{key: _check_value(item, hints[key], f"{where}.{key}") for key, item in data.items()})


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "expected":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _line_of(root, dotted: str) -> int | None:
    """1-based line of the YAML node at ``dotted`` (``evaluation.seq_len``), or of its nearest parent."""
    node, line = root, None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                node, line = value_node, key_node.start_mark.line + 1
                break
        else:
            break
    return line


@dataclass
class RecipeResult:
    """What a recipe run measured, where it saved the checkpoint, and the expectation checks."""

    recipe: "Recipe"
    metrics: dict[str, float]
    output: Path | None
    checks: list[Check]
    url: str | None = None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def check_table(self) -> str:
        """Markdown diff table: expected vs measured per metric."""
        lines = ["| metric | expected | tolerance | measured | deviation | ok |", "|---|---|---|---|---|---|"]
        for check in self.checks:
            exp = check.expected
            if check.measured is None:
                measured, deviation = "not measured", "-"
            else:
                measured = f"{check.measured:.6g}"
                deviation = f"{check.measured - exp.value:+.4g}"
                if exp.value:
                    deviation += f" ({(check.measured - exp.value) / abs(exp.value):+.2%})"
            lines.append(f"| {check.metric} | {exp.value:.6g} | {exp.describe()} | {measured} | {deviation} | "
                         f"{'yes' if check.passed else 'NO'} |")
        return "\n".join(lines)


@dataclass
class Recipe:
    """A validated recipe. Build with :meth:`from_yaml` / :meth:`from_dict`; run with :meth:`run`."""

    name: str
    model: ModelSection
    pruning: PruningConfig
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    description: str | None = None
    output: str | None = None
    hub: HubSection = field(default_factory=HubSection)
    expected: dict[str, Expectation] = field(default_factory=dict)
    quick: dict | None = None
    source: str = "<recipe>"

    # --- loading --------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike, quick: bool = False) -> "Recipe":
        """Load a recipe file (or YAML text). ``quick=True`` merges the recipe's ``quick`` overrides."""
        text, source = str(path_or_text), "<recipe>"
        if "\n" not in text and (Path(text).suffix in (".yaml", ".yml") or Path(text).is_file()):
            if not Path(text).is_file():
                raise FileNotFoundError(f"recipe file {text!r} does not exist")
            source, text = text, Path(text).read_text(encoding="utf-8")
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError(f"{source}: not valid (safe) YAML: {' '.join(str(err).split())}") from None
        try:
            return cls.from_dict(data, quick=quick, source=source)
        except RecipeError as err:
            message = str(err)
            where = message.split(":", 1)[0]
            line = _line_of(root, where.split("[")[0]) if root is not None else None
            raise RecipeError(f"{source}{f':{line}' if line else ''}: {message}") from None

    @classmethod
    def from_dict(cls, data: Any, quick: bool = False, source: str = "<recipe>") -> "Recipe":
        """Validate a recipe mapping. Errors are RecipeErrors starting with the YAML key path."""
        data = _mapping(data, "recipe")
        for key in data:
            if key not in _TOP_KEYS:
                raise RecipeError(f"{key}: unknown key; allowed at the top level: {', '.join(_TOP_KEYS)}")
        if quick:
            if not data.get("quick"):
                raise RecipeError("quick: --quick was asked for but the recipe has no 'quick' section")
            overrides = _mapping(data["quick"], "quick")
            for key in overrides:
                if key not in _TOP_KEYS or key in ("name", "quick"):
                    raise RecipeError(f"quick.{key}: cannot be overridden; allowed: "
                                      f"{', '.join(k for k in _TOP_KEYS if k not in ('name', 'quick'))}")
            data = {k: v for k, v in _deep_merge(data, overrides).items() if k != "quick"}
        for key in ("name", "model", "pruning"):
            if key not in data:
                raise RecipeError(f"{key}: required key is missing")
        name = _check_value(data["name"], str, "name")
        calibration = data.get("calibration")
        try:
            calibration = CalibrationConfig.coerce(_mapping(calibration, "calibration") if calibration else None)
        except ValueError as err:
            raise RecipeError(f"calibration: {err}") from None
        pruning = dict(_mapping(data["pruning"], "pruning"))
        if "calibration" in pruning and data.get("calibration"):
            raise RecipeError("pruning.calibration: give calibration once, at the top level")
        pruning.setdefault("calibration", dataclasses.asdict(calibration))
        try:
            pruning_config = PruningConfig.from_dict(pruning)
        except ValueError as err:
            raise RecipeError(f"pruning: {err}") from None
        expected = {}
        for metric, spec in _mapping(data.get("expected") or {}, "expected").items():
            where = f"expected.{metric}"
            if isinstance(spec, (int, float)) and not isinstance(spec, bool):
                raise RecipeError(f"{where}: give a mapping {{value: {spec}, rel_tol: 0.02}} (or abs_tol)")
            expectation = _build(Expectation, spec, where)
            if expectation.rel_tol is None and expectation.abs_tol is None:
                raise RecipeError(f"{where}: give a tolerance, rel_tol (fraction) and/or abs_tol")
            expected[metric] = expectation
        recipe = cls(
            name=name, model=_build(ModelSection, data["model"], "model"), pruning=pruning_config,
            evaluation=_build(EvaluationSection, data.get("evaluation") or {}, "evaluation"),
            description=_check_value(data.get("description"), str | None, "description"),
            output=_check_value(data.get("output"), str | None, "output"),
            hub=_build(HubSection, data.get("hub") or {}, "hub"), expected=expected,
            quick=_mapping(data["quick"], "quick") if data.get("quick") else None, source=source)
        try:
            recipe.evaluation.settings()
        except ValueError as err:
            raise RecipeError(f"evaluation: {err}") from None
        recipe._check_expected_metrics()
        return recipe

    def metric_names(self) -> list[str]:
        """Every metric a run of this recipe produces (the keys ``expected`` may use)."""
        measured = self.evaluation.settings().metric_names()
        names = measured + ["sparsity", "pruning_seconds"]
        if self.evaluation.energy:
            names += ["pruning_energy_kwh", "pruning_emissions_g"]
        if self.evaluation.dense:
            names += ["ppl_increase", "size_ratio"] + [f"dense_{name}" for name in measured]
        return names

    def _check_expected_metrics(self) -> None:
        allowed = self.metric_names()
        for metric in self.expected:
            if metric not in allowed:
                known = is_metric(metric.removeprefix("dense_"))
                why = " (turn on the evaluation option that measures it)" if known else ""
                raise RecipeError(f"expected.{metric}: this recipe does not measure {metric!r}{why}; "
                                  f"it measures: {', '.join(allowed)}")

    # --- saving ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        pruning = self.pruning.to_dict()
        calibration = pruning.pop("calibration")
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data.update(model=dataclasses.asdict(self.model), pruning=pruning, calibration=calibration,
                    evaluation=dataclasses.asdict(self.evaluation))
        if self.output:
            data["output"] = self.output
        data["hub"] = dataclasses.asdict(self.hub)
        if self.expected:
            data["expected"] = {k: {key: v for key, v in dataclasses.asdict(e).items() if v is not None}
                                for k, e in self.expected.items()}
        if self.quick:
            data["quick"] = copy.deepcopy(self.quick)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # --- running --------------------------------------------------------------------------------
    def output_path(self, output: str | os.PathLike | None = None) -> Path:
        return Path(output or self.output or Path("out") / self.name)

    def run(self, check: bool = False, push_to_hub: str | bool | None = None, output: str | os.PathLike | None = None,
            token: str | None = None, progress: bool = True) -> RecipeResult:
        """Load, (measure dense,) prune, measure, save with card + ``recipe.yaml``, then check and push.

        ``check=True`` skips the push when an expectation fails. ``push_to_hub``: a repo id, or
        ``True`` for the recipe's ``hub.repo_id``.
        """
        from .calibration import load_texts
        from .hub import push_folder
        from .measurements import evaluation_tokens, measure_model, prune_measured, relative_metrics
        from .modeling import load_model, load_tokenizer, resolve_name, windows_before_loading
        from .storage import check_output_dir

        repo_id = self.hub.repo_id if push_to_hub is True else (push_to_hub or None)
        if push_to_hub is True and not repo_id:
            raise RecipeError(f"{self.source}: hub.repo_id: --push-to-hub needs a repo id here or on the command line")
        target = self.output_path(output)
        check_output_dir(target.absolute())
        settings = self.evaluation.settings()
        load_texts(settings.text, settings.text_column)
        if self.pruning.needs_calibration:
            load_texts(self.pruning.calibration.source, self.pruning.calibration.text_column)
        name = resolve_name(self.model.id)
        tokenizer = load_tokenizer(name, **self.model.hf_kwargs())
        tokens = evaluation_tokens(settings, tokenizer)
        windows = windows_before_loading(self.pruning, tokenizer, name, self.model.hf_kwargs())
        model = load_model(name, **self.model.hf_kwargs())
        dense = measure_model(model, tokenizer, tokens, settings) if self.evaluation.dense else None
        pruning = prune_measured(model, self.pruning, tokenizer, windows, settings, progress=progress)
        pruned = measure_model(model, tokenizer, tokens, settings)
        metrics = {**pruned, **pruning["metrics"]}
        if dense is not None:
            metrics.update(relative_metrics(pruned, dense))
            metrics.update({f"dense_{key}": value for key, value in dense.items() if is_metric(key)})
        evaluation = {"settings": settings.to_dict(), "dense": dense, "pruned": pruned,
                      "pruning_energy": pruning["energy"]}
        ran = dataclasses.replace(self, output=str(target))
        model.attachments = {RECIPE_FILE: ran.to_yaml(), EVALUATION_FILE: json.dumps(evaluation, indent=2)}
        model.save_pretrained(target)
        checks = [Check(metric, expectation, metrics.get(metric)) for metric, expectation in self.expected.items()]
        result = RecipeResult(self, {k: v for k, v in metrics.items() if not isinstance(v, dict)}, target, checks)
        if repo_id and (result.passed or not check):
            result.url = push_folder(target, repo_id, private=self.hub.private or None, token=token)
        return result
