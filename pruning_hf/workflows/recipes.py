"""Recipes: one YAML file that says how a pruned model is made, measured and published.

```yaml
name: smollm2-135m-wanda-50          # required; default output folder out/<name>
description: ...
model: {id: embedded:smollm2-135m, dtype: float32}     # id: Hub id, local folder or embedded:NAME
pruning: {method: wanda, sparsity: 0.5}                 # any PruningConfig field (any registered method)
calibration: {source: embedded, num_samples: 32, seq_len: 512}
evaluation: {text: embedded@test, seq_len: 512, max_windows: 40, dense: true}  # EvaluationConfig fields + dense
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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import CalibrationConfig, PruningConfig
from ..evaluation.report import is_metric, relative_metrics
from ..evaluation.session import EvaluationSession
from ..evaluation.settings import COMPACT, EvaluationConfig
from ..hf.files import RECIPE_FILE
from ..hf.hub import push_folder
from ..hf.loading import preflight
from ..hf.pruning import prune
from ..utils.checks import YamlAnchorError, safe_yaml_load
from .recipe_schema import (TOP_KEYS, Check, Expectation, HubSection, ModelSection, RecipeError, build_section,
                            check_value, deep_merge, line_of, mapping)

__all__ = ["Recipe", "RecipeError", "RecipeResult", "Expectation", "Check", "RECIPE_EVALUATION"]

#: a recipe's evaluation unless it says otherwise (it measures two models: keep it compact)
RECIPE_EVALUATION = dict(COMPACT)


def _evaluation_section(value: Any) -> tuple[EvaluationConfig, bool]:
    """The ``evaluation`` mapping: EvaluationConfig fields plus ``dense`` (also measure the dense model)."""
    data = dict(mapping(value, "evaluation"))
    dense = check_value(data.pop("dense", True), bool, "evaluation.dense")
    data.pop("progress", None)
    try:
        return build_section(EvaluationConfig, {**RECIPE_EVALUATION, **data}, "evaluation"), dense
    except RecipeError:
        raise
    except ValueError as err:
        raise RecipeError(f"evaluation: {err}") from None


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
    evaluation: EvaluationConfig = field(default_factory=lambda: EvaluationConfig(**RECIPE_EVALUATION))
    dense: bool = True  # also measure the dense model (dense_* metrics, ppl_increase, size_ratio)
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
            data = safe_yaml_load(text)
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except YamlAnchorError as err:
            raise RecipeError(f"{source}:{err.line}: {err}") from None
        except yaml.YAMLError as err:
            raise RecipeError(f"{source}: not valid (safe) YAML: {' '.join(str(err).split())}") from None
        try:
            return cls.from_dict(data, quick=quick, source=source)
        except RecipeError as err:
            message = str(err)
            where = message.split(":", 1)[0]
            line = line_of(root, where.split("[")[0]) if root is not None else None
            raise RecipeError(f"{source}{f':{line}' if line else ''}: {message}") from None

    @classmethod
    def from_dict(cls, data: Any, quick: bool = False, source: str = "<recipe>") -> "Recipe":
        """Validate a recipe mapping. Errors are RecipeErrors starting with the YAML key path."""
        data = mapping(data, "recipe")
        for key in data:
            if key not in TOP_KEYS:
                raise RecipeError(f"{key}: unknown key; allowed at the top level: {', '.join(TOP_KEYS)}")
        if quick:
            if not data.get("quick"):
                raise RecipeError("quick: --quick was asked for but the recipe has no 'quick' section")
            overrides = mapping(data["quick"], "quick")
            for key in overrides:
                if key not in TOP_KEYS or key in ("name", "quick"):
                    raise RecipeError(f"quick.{key}: cannot be overridden; allowed: "
                                      f"{', '.join(k for k in TOP_KEYS if k not in ('name', 'quick'))}")
            data = {k: v for k, v in deep_merge(data, overrides).items() if k != "quick"}
        for key in ("name", "model", "pruning"):
            if key not in data:
                raise RecipeError(f"{key}: required key is missing")
        name = check_value(data["name"], str, "name")
        calibration = data.get("calibration")
        try:
            calibration = CalibrationConfig.coerce(mapping(calibration, "calibration") if calibration else None)
        except ValueError as err:
            raise RecipeError(f"calibration: {err}") from None
        pruning = dict(mapping(data["pruning"], "pruning"))
        if "calibration" in pruning and data.get("calibration"):
            raise RecipeError("pruning.calibration: give calibration once, at the top level")
        pruning.setdefault("calibration", dataclasses.asdict(calibration))
        try:
            pruning_config = PruningConfig.from_dict(pruning)
        except ValueError as err:
            raise RecipeError(f"pruning: {err}") from None
        expected = {}
        for metric, spec in mapping(data.get("expected") or {}, "expected").items():
            where = f"expected.{metric}"
            if isinstance(spec, (int, float)) and not isinstance(spec, bool):
                raise RecipeError(f"{where}: give a mapping {{value: {spec}, rel_tol: 0.02}} (or abs_tol)")
            expectation = build_section(Expectation, spec, where)
            if expectation.rel_tol is None and expectation.abs_tol is None:
                raise RecipeError(f"{where}: give a tolerance, rel_tol (fraction) and/or abs_tol")
            expected[metric] = expectation
        evaluation, dense = _evaluation_section(data.get("evaluation") or {})
        recipe = cls(
            name=name, model=build_section(ModelSection, data["model"], "model"), pruning=pruning_config,
            evaluation=evaluation, dense=dense,
            description=check_value(data.get("description"), str | None, "description"),
            output=check_value(data.get("output"), str | None, "output"),
            hub=build_section(HubSection, data.get("hub") or {}, "hub"), expected=expected,
            quick=mapping(data["quick"], "quick") if data.get("quick") else None, source=source)
        recipe._check_expected_metrics()
        return recipe

    def metric_names(self) -> list[str]:
        """Every metric a run of this recipe produces (the keys ``expected`` may use)."""
        measured = self.evaluation.metric_names()
        names = measured + ["sparsity", "pruning_seconds"]
        if self.evaluation.energy:
            names += ["pruning_energy_kwh", "pruning_emissions_g"]
        if self.dense:
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
                    evaluation={**{k: v for k, v in self.evaluation.to_dict().items() if k != "progress"},
                                "dense": self.dense})
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
        repo_id = self.hub.repo_id if push_to_hub is True else (push_to_hub or None)
        if push_to_hub is True and not repo_id:
            raise RecipeError(f"{self.source}: hub.repo_id: --push-to-hub needs a repo id here or on the command line")
        target = self.output_path(output)
        settings = dataclasses.replace(self.evaluation, progress=progress)
        ready = preflight(self.model.id, hf_kwargs=self.model.hf_kwargs(), pruning=self.pruning, evaluation=settings,
                          output=target)
        model = ready.load_model()
        with EvaluationSession(ready.evaluation) as session:
            if self.dense:
                session.add("dense", model, ready.tokenizer, keep_copy=True)
            name = self.pruning.describe()
            prune(model, self.pruning, ready.tokenizer, progress=progress, windows=ready.windows,
                  energy=settings.energy, country_iso_code=settings.country_iso_code)  # tracks its energy
            session.add(name, model, ready.tokenizer)
        report = session.report()
        metrics = report.metrics()
        if self.dense:
            dense = report.metrics(report.baseline)
            metrics.update(relative_metrics(metrics, dense))
            metrics.update({f"dense_{key}": value for key, value in dense.items() if is_metric(key)})
        ran = dataclasses.replace(self, output=str(target))
        model.evaluation_report = report
        model.attachments = {RECIPE_FILE: ran.to_yaml()}
        model.save_pretrained(target)
        checks = [Check(metric, expectation, metrics.get(metric)) for metric, expectation in self.expected.items()]
        result = RecipeResult(self, metrics, target, checks)
        if repo_id and (result.passed or not check):
            result.url = push_folder(target, repo_id, private=self.hub.private or None, token=token)
        return result
