"""Recipes: YAML schema errors, round trip YAML -> run -> checkpoint -> rerun, --check, shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from pruning_hf import EvaluationReport, AutoPrunedModel, Recipe, prune
from pruning_hf.cli import main
from pruning_hf.workflows.recipes import RecipeError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _recipe_text(model: Path, output: Path, expected: str = "") -> str:
    return f"""\
name: tiny-wanda
description: tiny Llama, Wanda 50%
model:
  id: {model}
  dtype: float32
pruning:
  method: wanda
  sparsity: 0.5
calibration:
  num_samples: 4
  seq_len: 64
evaluation:
  seq_len: 64
  max_windows: 4
output: {output}
{expected}"""


def test_round_trip_yaml_run_checkpoint_and_rerun_from_the_saved_recipe(make_checkpoint, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(_recipe_text(make_checkpoint("llama"), tmp_path / "out"))
    recipe = Recipe.from_yaml(path)
    assert Recipe.from_yaml(recipe.to_yaml()).to_dict() == recipe.to_dict()

    result = recipe.run(progress=False)
    folder = tmp_path / "out"
    assert result.output == folder and result.passed and result.checks == []
    assert {"config.json", "model.safetensors", "recipe.yaml", "evaluation_report.json", "README.md"} <= \
        {p.name for p in folder.iterdir()}
    assert "evaluation.json" not in {p.name for p in folder.iterdir()}  # one evaluation file
    saved = Recipe.from_yaml(str(folder / "recipe.yaml"))
    assert saved.pruning.to_dict() == recipe.pruning.to_dict() and saved.model == recipe.model
    evaluation = EvaluationReport.load(folder / "evaluation_report.json")
    assert [entry["name"] for entry in evaluation.models] == ["dense", recipe.pruning.describe()]
    assert evaluation.metrics()["perplexity"] == pytest.approx(result.metrics["perplexity"])
    assert result.metrics["ppl_increase"] == pytest.approx(
        result.metrics["perplexity"] / result.metrics["dense_perplexity"] - 1)

    again = saved.run(output=tmp_path / "again", progress=False)  # reproduced from the checkpoint's own folder
    assert again.metrics["perplexity"] == pytest.approx(result.metrics["perplexity"], rel=1e-6)
    assert again.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_check_exits_nonzero_with_a_diff_table_when_values_leave_the_tolerance(make_checkpoint, tmp_path, capsys):
    model = make_checkpoint("opt")
    probe = tmp_path / "probe.yaml"
    probe.write_text(_recipe_text(model, tmp_path / "probe"))
    measured = Recipe.from_yaml(probe).run(progress=False).metrics

    good = tmp_path / "good.yaml"
    good.write_text(_recipe_text(model, tmp_path / "good", f"""\
expected:
  perplexity: {{value: {measured['perplexity']}, rel_tol: 0.001}}
  sparsity: {{value: 0.5, abs_tol: 0.001}}
"""))
    assert main(["run", str(good), "--check", "--no-progress"]) == 0
    assert "all within tolerance" in capsys.readouterr().out

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(_recipe_text(model, tmp_path / "wrong", f"""\
expected:
  perplexity: {{value: {measured['perplexity'] * 1.5}, rel_tol: 0.05}}
  dense_perplexity: {{value: {measured['dense_perplexity']}, rel_tol: 0.001}}
"""))
    assert main(["run", str(wrong), "--check", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "OUT OF TOLERANCE" in out
    diff = out.split("OUT OF TOLERANCE")[1].splitlines()
    row = next(line for line in diff if line.startswith("| perplexity |"))
    assert row.endswith("| NO |") and "-33.33%" in row
    assert next(line for line in diff if line.startswith("| dense_perplexity |")).endswith("| yes |")
    assert main(["run", str(wrong), "--no-progress", "--output", str(tmp_path / "nocheck")]) == 0


@pytest.mark.parametrize("patch, message", [
    ({"evaluation": {"seq_len": "long"}}, r":\d+: evaluation.seq_len: expected an integer, got 'long' \(str\)"),
    ({"evaluation": {"max_window": 3}}, r":\d+: evaluation.max_window: unknown key; allowed in evaluation: text"),
    ({"modle": {"id": "x"}}, r":\d+: modle: unknown key; allowed at the top level"),
    ({"model": {"dtype": "float32"}}, r"model.id: required key is missing"),
    ({"pruning": {"method": "wanda", "sparsity": "half"}}, r":\d+: pruning: sparsity must be a number"),
    ({"pruning": {"method": "wanda", "sparsity": 0.5, "dampening": 0.1}},
     r":\d+: pruning: unknown pruning config key\(s\) \['dampening'\]"),
    ({"calibration": {"num_samples": 0}}, r":\d+: calibration: calibration.num_samples must be an integer >= 1"),
    ({"expected": {"perplexity": 12.0}}, r"expected.perplexity: give a mapping"),
    ({"expected": {"perplexity": {"value": 12.0}}}, r"expected.perplexity: give a tolerance"),
    ({"expected": {"prefill_ms": {"value": 1.0, "rel_tol": 0.5}}},
     r"expected.prefill_ms: this recipe does not measure 'prefill_ms' \(turn on"),
    ({"expected": {"accuracy_piqa": {"value": 1.0, "rel_tol": 0.5}}}, r"does not measure 'accuracy_piqa'; it measures"),
    ({"evaluation": {"energy": True, "country_iso_code": "XYZ"}}, r"unknown country code 'XYZ'"),
    ({"evaluation": {"tasks": "piqa"}}, r"evaluation.tasks: expected a list of strings, got 'piqa'"),
    ({"evaluation": {"tasks": ["nope"]}}, r"unknown task 'nope'"),
    ({"hub": {"private": "yes"}}, r"hub.private: expected true or false, got 'yes'"),
])
def test_schema_errors_name_the_file_line_and_yaml_path(tmp_path, patch, message):
    data = yaml.safe_load(_recipe_text(Path("embedded:smollm2-135m"), tmp_path / "out"))
    for key, value in patch.items():
        data[key] = value if key not in data or key in ("pruning", "expected") else {**data[key], **value}
    if "model" in patch:
        data["model"] = patch["model"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RecipeError, match=message) as err:
        Recipe.from_yaml(path)
    assert str(err.value).startswith(str(path))


def test_quick_overrides_merge_and_cli_reports_bad_recipes_in_one_line(tmp_path, capsys):
    text = _recipe_text(Path("embedded:smollm2-135m"), tmp_path / "out") + """\
expected:
  perplexity: {value: 20.0, rel_tol: 0.02}
quick:
  calibration: {num_samples: 2}
  evaluation: {max_windows: 2}
  expected:
    sparsity: {value: 0.5, abs_tol: 0.001}
"""
    full, quick = Recipe.from_yaml(text), Recipe.from_yaml(text, quick=True)
    assert (full.pruning.calibration.num_samples, quick.pruning.calibration.num_samples) == (4, 2)
    assert (quick.pruning.calibration.seq_len, quick.evaluation.max_windows, quick.evaluation.seq_len) == (64, 2, 64)
    assert list(full.expected) == ["perplexity"] and list(quick.expected) == ["sparsity"]  # replaced, not merged
    assert quick.quick is None and "quick" not in quick.to_dict()
    with pytest.raises(RecipeError, match="no 'quick' section"):
        Recipe.from_yaml(_recipe_text(Path("m"), tmp_path), quick=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {id: m}\npruning: {method: nope, sparsity: 0.5}\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pruning: method='nope' is not a known pruning method" in err and ":3:" in err


#: WikiText-2 perplexity at seq len 2048, 128 C4 calibration windows (SparseGPT and Wanda papers; DESIGN.md §4)
PAPERS = {"opt-125m": {"dense": 27.66, "magnitude 50%": 193, "sparsegpt 50%": 36.9, "wanda 50%": 39.3,
                       "sparsegpt 2:4": 60.7, "wanda 2:4": 81.6},
          "opt-1.3b": {"dense": 14.62, "magnitude 50%": 1700, "sparsegpt 50%": 17.5, "wanda 50%": 18.3,
                       "sparsegpt 2:4": 23.8, "wanda 2:4": 27.8}}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_is_valid_and_has_real_expected_values(path):
    recipe = Recipe.from_yaml(path)
    forms = [recipe] + ([Recipe.from_yaml(path, quick=True)] if recipe.quick else [])
    for form in forms:
        assert form.expected, f"{path.name} has no expected values"
        assert form.model.id.startswith(("embedded:", "facebook/"))
        expected = form.expected
        if "sparsity" in expected:  # the achieved sparsity the config asks for
            assert abs(expected["sparsity"].value - form.pruning.sparsity) <= expected["sparsity"].allowed()
        if "perplexity" in expected and "dense_perplexity" in expected:  # pruning costs quality
            assert expected["perplexity"].value > expected["dense_perplexity"].value
        for metric in ("perplexity", "dense_perplexity"):
            if metric in expected:  # a real tolerance, neither zero nor so wide that any run passes
                assert 0 < expected[metric].allowed() <= 0.25 * expected[metric].value, (path.name, metric)
        if form.model.id.startswith("facebook/"):  # published-number reproductions expect the papers' values
            model = form.model.id.split("/")[1]
            setting = "2:4" if form.pruning.pattern == "2:4" else f"{form.pruning.sparsity:.0%}"
            assert expected["dense_perplexity"].value == PAPERS[model]["dense"], path.name
            assert expected["perplexity"].value == PAPERS[model][f"{form.pruning.method} {setting}"], path.name


def _offline_quick_recipes() -> list[Path]:
    return [p for p in sorted(RECIPES.glob("*.yaml")) if "embedded:" in p.read_text() and "\nquick:" in p.read_text()]


@pytest.mark.slow
@pytest.mark.parametrize("path", _offline_quick_recipes(), ids=lambda p: p.stem)
def test_offline_recipes_reproduce_their_expected_values_in_quick_form(path, tmp_path, capsys):
    """What CI runs: each offline recipe, quick form, with --check against the values measured here."""
    code = main(["run", str(path), "--quick", "--check", "--no-progress", "--output", str(tmp_path / path.stem)])
    out = capsys.readouterr().out
    assert code == 0, out
    card = ModelCard.load(tmp_path / path.stem / "README.md")  # every recipe records energy: the card carries it
    assert card.data.co2_eq_emissions["emissions"] > 0 and "| energy per 1k generated tokens (Wh) |" in card.text


def test_reloaded_checkpoint_saved_again_keeps_its_recipe_and_measurements(make_checkpoint, tmp_path):
    recipe = Recipe.from_dict({
        "name": "tiny-wanda", "model": {"id": str(make_checkpoint("llama")), "dtype": "float32"},
        "pruning": {"method": "wanda", "sparsity": 0.5}, "calibration": {"num_samples": 2, "seq_len": 32},
        "evaluation": {"seq_len": 32, "max_windows": 2}, "output": str(tmp_path / "first")})
    first = recipe.run(progress=False).output
    reloaded = AutoPrunedModel.from_pretrained(first)
    reloaded.save_pretrained(tmp_path / "copy")
    for name in ("recipe.yaml", "evaluation_report.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (first / name).read_bytes()
    assert "pruning-hf run recipe.yaml" in (tmp_path / "copy" / "README.md").read_text()
    prune(reloaded, {"method": "magnitude", "sparsity": 0.7}, progress=False)  # a new pruning: old files no longer apply
    reloaded.save_pretrained(tmp_path / "repruned")
    assert not (tmp_path / "repruned" / "recipe.yaml").exists() and not (tmp_path / "repruned" / "evaluation.json").exists()
