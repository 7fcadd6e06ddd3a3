"""Sweeps: every point measured on shared data, table + plots, budgeted recommendation, resume."""

from __future__ import annotations

import csv
import json
import math

import pytest

import pruning_hf.workflows.sweep as sweep_module
from pruning_hf import sweep
from pruning_hf.cli import main
from pruning_hf.evaluation.session import EvaluationSession
from pruning_hf.workflows.pareto import Budget, SweepError, pareto_front, parse_levels, recommend

MEASURED = ("perplexity", "ppl_increase", "sparsity", "size_ratio", "params_nonzero", "params_total", "weight_bytes",
            "prefill_ms", "decode_tokens_per_s", "energy_kwh", "emissions_g", "energy_wh_per_1k_tokens",
            "pruning_seconds", "pruning_energy_kwh", "pruning_emissions_g")
SMALL = {"calibration": {"num_samples": 4, "seq_len": 64},
         "evaluation": {"seq_len": 64, "max_windows": 4, "repeats": 1, "new_tokens": 4}}


def _count_calls(monkeypatch, owner, name: str) -> list:
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_cli_sweep_three_points_table_plots_then_budgeted_rerun_skips_done_points(make_checkpoint, tmp_path,
                                                                                   monkeypatch, capsys):
    model = make_checkpoint("llama")
    out = tmp_path / "sweep"
    code = main(["sweep", str(model), "--methods", "wanda", "--sparsities", "0.2,0.6", "--patterns",
                 "unstructured,2:4", "--num-samples", "4", "--seq-len", "64", "--eval-seq-len", "64",
                 "--eval-windows", "4", "--budget", "", "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 point(s) measured, 0 reused" in printed and "| wanda 2:4 |" in printed.replace("*", "")

    state = json.loads((out / "sweep.json").read_text())
    assert len(state["points"]) == 3
    for row in state["points"].values():
        assert all(math.isfinite(row[m]) for m in MEASURED)
        assert all(row[m] >= 0 for m in MEASURED if m != "ppl_increase")
        assert row["energy_kwh"] > 0 and row["prefill_ms"] > 0
    assert sorted(r["sparsity"] for r in state["points"].values()) == pytest.approx([0.2, 0.5, 0.6], abs=0.02)
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["label"] for r in rows] == ["dense", "wanda 20%", "wanda 60%", "wanda 2:4"]
    assert all(r["perplexity"] for r in rows)
    for plot in ("sweep_perplexity.png", "sweep_pareto.png"):
        data = (out / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        assert matplotlib.image.imread(out / plot).shape[0] > 100

    # A budget between the measured increases: rerun re-ranks without pruning or measuring anything.
    increases = sorted(r["ppl_increase"] for r in state["points"].values())
    limit = (increases[0] + increases[1]) / 2
    pruned = _count_calls(monkeypatch, sweep_module, "prune")
    measured = _count_calls(monkeypatch, EvaluationSession, "add")
    result = sweep(str(model), ["wanda"], [0.2, 0.6], ["unstructured", "2:4"], budget=f"ppl_increase<={limit}",
                   calibration=SMALL["calibration"], evaluation={"seq_len": 64, "max_windows": 4}, output=out,
                   hf_kwargs={"dtype": "auto", "trust_remote_code": False}, progress=False)
    assert (result.measured, result.reused, pruned, measured) == (0, 3, [], [])
    chosen = next(r for r in result.rows if r["key"] == result.recommendation["key"])
    assert chosen["ppl_increase"] <= limit
    assert [r["within_budget"] for r in result.rows] == [r["ppl_increase"] <= limit for r in result.rows]
    assert all(r["params_nonzero"] >= chosen["params_nonzero"] for r in result.rows if r["within_budget"])
    assert "within budget" in result.recommendation["reason"] and chosen["label"] in result.recommendation["reason"]


def test_interrupted_sweep_resumes_and_unreachable_budget_names_the_closest_point(make_checkpoint, tmp_path,
                                                                                  monkeypatch):
    model = str(make_checkpoint("opt"))
    out = tmp_path / "sweep"
    original = sweep_module.prune
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "prune", interrupt_second)
    common = dict(methods=["magnitude"], sparsities="0.2,0.4,...,0.6", output=out, progress=False,
                  evaluation={**SMALL["evaluation"], "efficiency": False, "energy": False})
    with pytest.raises(KeyboardInterrupt):
        sweep(model, **common)
    assert len(json.loads((out / "sweep.json").read_text())["points"]) == 1
    monkeypatch.setattr(sweep_module, "prune", original)
    result = sweep(model, **common, budget="ppl_increase<=-50%")
    assert (result.measured, result.reused) == (2, 1)
    assert result.recommendation["key"] is None and "no point meets the budget" in result.recommendation["reason"]
    assert not any(r["within_budget"] for r in result.rows)
    with pytest.raises(SweepError, match="another setup"):
        sweep(model, **{**common, "evaluation": {"seq_len": 32, "efficiency": False, "energy": False}})


def test_objectives_use_their_metric_and_ties_break_on_quality():
    dense = {"perplexity": 10.0, "params_nonzero": 100, "prefill_ms": 10.0, "energy_wh_per_1k_tokens": 1.0}
    rows = [{"key": "a", "label": "a", "pattern": "unstructured", "perplexity": 10.5, "params_nonzero": 50,
             "prefill_ms": 9.0, "energy_wh_per_1k_tokens": 0.5, "ppl_increase": 0.05},
            {"key": "b", "label": "b", "pattern": "unstructured", "perplexity": 10.2, "params_nonzero": 50,
             "prefill_ms": 8.0, "energy_wh_per_1k_tokens": 0.9, "ppl_increase": 0.02},
            {"key": "c", "label": "c", "pattern": "unstructured", "perplexity": 14.0, "params_nonzero": 30,
             "prefill_ms": 5.0, "energy_wh_per_1k_tokens": 0.1, "ppl_increase": 0.40}]
    budget = Budget.parse("ppl_increase<=10%", ["ppl_increase"])
    assert recommend(rows, dense, budget, "smallest")["key"] == "b"  # a and b tie on size; b has lower ppl
    assert recommend(rows, dense, budget, "fastest")["key"] == "b"
    assert recommend(rows, dense, budget, "lowest-energy")["key"] == "a"
    assert recommend(rows, dense, Budget(), "smallest")["key"] == "c"
    relative = Budget.parse("prefill_ms<=0.85x", ["prefill_ms"])
    assert recommend(rows, dense, relative, "smallest")["key"] == "c"
    assert [r["key"] for r in pareto_front(rows, "params_nonzero")] == ["c", "b"]


def test_levels_and_budget_parsing_and_validation(make_checkpoint, tmp_path):
    assert parse_levels("0.1,0.2,...,0.7") == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert parse_levels("0.5") == [0.5]
    with pytest.raises(SweepError, match="needs two levels"):
        parse_levels("0.1,...,0.5")
    with pytest.raises(SweepError, match="'half' is not a number"):
        parse_levels("0.1,half")
    with pytest.raises(SweepError, match="not measured by this sweep"):
        Budget.parse("accuracy>=0.6", ["perplexity"])
    with pytest.raises(SweepError, match="is not METRIC<=VALUE"):
        Budget.parse("ppl_increase=10", ["ppl_increase"])
    model = str(make_checkpoint("llama"))
    with pytest.raises(SweepError, match="needs 'energy_wh_per_1k_tokens'"):
        sweep(model, objective="lowest-energy", evaluation={"energy": False}, output=tmp_path / "s")
    with pytest.raises(SweepError, match="no valid sweep point"):
        sweep(model, methods=["wanda"], sparsities=[1.5], output=tmp_path / "s")
    assert not (tmp_path / "s" / "sweep.json").exists()


def test_task_accuracy_is_a_sweep_metric_and_a_budget(make_checkpoint, tmp_path, capsys):
    """A minimum task accuracy as the budget: every point is scored on the task, the table shows it, and
    the recommendation is a point whose accuracy meets the limit (measured: known only after the run)."""
    task = tmp_path / "colours.jsonl"
    task.write_text("".join(json.dumps({"context": f"Item {i}: the sky is", "choices": [" blue", " green", " red"],
                                        "label": i % 3}) + "\n" for i in range(6)))
    out = tmp_path / "sweep"
    evaluation = dict(SMALL["evaluation"], tasks=[f"colours={task}"], efficiency=False, energy=False)
    result = sweep(str(make_checkpoint("llama")), ["magnitude"], [0.2, 0.9], ["unstructured"], budget="",
                   calibration=SMALL["calibration"], evaluation=evaluation, output=out, progress=False)
    accuracies = [row["colours_acc"] for row in result.rows]
    assert all(0.0 <= acc <= 1.0 for acc in accuracies) and 0.0 <= result.dense["colours_acc"] <= 1.0
    assert "colours_acc" in result.table() and "colours_acc" in (out / "sweep.csv").read_text().splitlines()[0]
    limit = min(accuracies)
    again = sweep(str(make_checkpoint("llama")), ["magnitude"], [0.2, 0.9], ["unstructured"],
                  budget=f"colours_acc>={limit * 100:g}%", calibration=SMALL["calibration"], evaluation=evaluation,
                  output=out, progress=False)
    chosen = next(r for r in again.rows if r["key"] == again.recommendation["key"])
    assert chosen["colours_acc"] >= limit and again.measured == 0
    with pytest.raises(SweepError, match="budget metric 'piqa_acc' is not measured"):
        Budget.parse("piqa_acc>=0.5", ["perplexity", "colours_acc"])
