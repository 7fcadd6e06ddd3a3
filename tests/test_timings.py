"""Timings a user can trust: interleaved rounds with their spread, paired ratios flagged when within noise,
each model's own peak memory, models reloaded per round when they do not fit; fast evaluation: checkpoint
bytes without a write, perplexity batches sized to the machine, a progress bar per phase."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, tiny_model
from pruning_hf import PruningConfig, compare_models, evaluate_model, prune
from pruning_hf.evaluation import rounds, session as session_module
from pruning_hf.evaluation.efficiency import checkpoint_bytes, measure_efficiencies
from pruning_hf.evaluation.rounds import paired_ratio
from pruning_hf.hf.loading import load_model
from pruning_hf.workflows import compare as compare_module

perplexity_module = importlib.import_module("pruning_hf.evaluation.perplexity")
pytestmark = pytest.mark.usefixtures("one_thread")
SPEED = {"prefill_seq_len": 96, "decode_batches": (1,), "prompt_len": 4, "new_tokens": 3, "repeats": 5,
         "disk": False}


class Clock:
    """A deterministic timer for the rounds: every forward pass of a model takes 1 ms, plus what a hook adds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def attach(self, model, slow_calls: set[int] = frozenset(), seconds: float = 0.0) -> None:
        """Each forward pass advances the clock 1 ms; the prefill runs (the only 96-token forward passes) whose
        index is in ``slow_calls`` (0: warm-up) also "sleep" ``seconds``."""
        calls = []

        def hook(module, args, kwargs):
            self.now += 0.001
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[-1] == SPEED["prefill_seq_len"]:
                if len(calls) in slow_calls:
                    self.now += seconds
                calls.append(1)

        model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(rounds, "_clock", fake)
    return fake


def _prefill_ratio(results):
    return paired_ratio(results["slowed"]["prefill"]["rounds_seconds"], results["dense"]["prefill"]["rounds_seconds"])


def test_a_model_slowed_in_one_round_only_gives_no_confident_ratio(clock):
    dense = tiny_model("llama")
    slowed = tiny_model("llama")  # the same weights and speed, except for one slow round
    clock.attach(dense)
    clock.attach(slowed, {3}, 0.4)
    results = measure_efficiencies({"dense": dense, "slowed": slowed}, **SPEED)
    ratio = _prefill_ratio(results)
    assert not ratio["measurable"] and ratio["ratio"] == pytest.approx(1.0) and ratio["max"] > 100  # flagged
    prefill = results["slowed"]["prefill"]
    assert prefill["max_seconds"] >= 0.4 > prefill["median_seconds"] and len(prefill["rounds_seconds"]) == 5
    assert results["slowed"]["timing"]["mode"] == "interleaved"

    always = tiny_model("llama")  # control: slow in every round -> a measurable ratio
    clock.attach(always, set(range(10)), 0.05)
    results = measure_efficiencies({"dense": dense, "slowed": always}, **SPEED)
    assert _prefill_ratio(results)["measurable"] and _prefill_ratio(results)["ratio"] == pytest.approx(51)


def test_a_real_sleep_in_one_round_is_seen_in_the_spread_not_in_the_ratio():
    """The same with the real timer and a real ``time.sleep`` in a hook: the slow round widens the spread; the ratio
    stays near 1.0 (no flag is asserted: on a busy machine two identical tiny models may differ by a few %)."""
    import time

    dense, slowed = tiny_model("llama"), tiny_model("llama")
    calls = []

    def sleepy(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[-1] == SPEED["prefill_seq_len"]:
            if len(calls) == 3:  # the third timed round (0: warm-up)
                time.sleep(0.5)
            calls.append(1)

    slowed.register_forward_pre_hook(sleepy, with_kwargs=True)
    ratio = _prefill_ratio(measure_efficiencies({"dense": dense, "slowed": slowed}, **SPEED))
    assert ratio["max"] > 5 and 0.5 < ratio["ratio"] < 1.5 and ratio["rounds"] == 5


def test_the_report_flags_a_ratio_within_noise(tokenizer, text_file, clock):
    dense, slowed = tiny_model("llama"), tiny_model("llama")
    clock.attach(dense)
    clock.attach(slowed, {2}, 0.4)  # call 0: perplexity, 1: warm-up, 2: the first timed round
    report = compare_models({"dense": dense, "slowed": slowed}, tokenizer, text=str(text_file), seq_len=96,
                            max_windows=1, samples=False, efficiency=True, energy=False, decode_batches=[1],
                            new_tokens=3, progress=False)
    row = next(line for line in report.to_markdown().splitlines() if line.startswith("| prefill latency (ms) |"))
    assert "1.0 [1.0–1.0]" in row and "[1.0–401.0] (no measurable difference: 1.00–1.00x)" in row
    assert report.timing_ratios()["prefill latency (ms)"]["measurable"] is False
    assert report.ratios()["slowed"]["prefill latency (ms)"] == pytest.approx(1.0)  # not the 80x of the mean
    assert "alternating round by round" in report.to_markdown()


def _wide(layers: int = 4):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", layers=layers)
    config.hidden_size, config.intermediate_size = 256, 1024
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_peak_memory_is_each_models_own():
    big, small = _wide(), tiny_model("llama")
    results = measure_efficiencies({"big": big, "small": small}, **{**SPEED, "repeats": 1})
    memory = {name: result["memory"] for name, result in results.items()}
    assert memory["big"]["weights_bytes"] > 10 * memory["small"]["weights_bytes"]
    assert memory["small"]["peak_bytes"] < memory["big"]["weights_bytes"]  # measured after the big model
    assert memory["small"]["process_peak_rss_bytes"] > memory["big"]["weights_bytes"]  # the process holds both


def test_checkpoint_bytes_of_a_loaded_folder_are_its_files_and_nothing_is_written(make_checkpoint, tokenizer,
                                                                                   monkeypatch):
    folder = make_checkpoint("opt")  # OPT ties the LM head: the files hold one copy
    files = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
    model = load_model(folder)

    def no_write(*args, **kwargs):
        raise AssertionError("checkpoint_bytes wrote a checkpoint")

    import safetensors.torch
    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", no_write)
    monkeypatch.setattr(safetensors.torch, "save_file", no_write)
    assert checkpoint_bytes(model) == files
    prune(model, PruningConfig(method="magnitude", sparsity=0.5), tokenizer, progress=False, energy=False)
    assert checkpoint_bytes(model) == files  # zeros are stored: same files
    monkeypatch.undo()


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2", "gemma3"])
def test_computed_checkpoint_bytes_match_a_real_save(family, tmp_path):
    from test_structured import pruned, structured

    model = tiny_model(family)
    model.save_pretrained(tmp_path / "plain")
    assert checkpoint_bytes(tiny_model(family)) == sum(p.stat().st_size for p in (tmp_path / "plain").glob("*.safetensors"))
    if family == "llama":  # shapes changed after loading: computed from the tensors
        shrunk, _ = pruned("llama", structured(target="mlp", sparsity=0.5, importance="random"))
        shrunk.save_pretrained(tmp_path / "shrunk")
        assert checkpoint_bytes(shrunk) == (tmp_path / "shrunk" / "model.safetensors").stat().st_size


def test_models_that_do_not_fit_together_are_reloaded_every_round(make_checkpoint, text_file, monkeypatch):
    loads = []
    real = compare_module.load_pretrained

    def counting(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(compare_module, "load_pretrained", counting)
    monkeypatch.setattr(session_module, "available_bytes", lambda device: 1)  # nothing fits
    first, second = make_checkpoint("llama", name="a"), make_checkpoint("llama", seed=1, name="b")
    report = compare_models({"a": str(first), "b": str(second)}, text=str(text_file), seq_len=32, max_windows=1,
                            samples=False, efficiency=True, energy=False, repeats=2, decode_batches=[1],
                            new_tokens=3, progress=False)
    assert loads.count(str(first)) == 1 + 2 and loads.count(str(second)) == 1 + 2  # quality, then every round
    timing = report["b"]["efficiency"]["timing"]
    assert timing["mode"].startswith("interleaved, reloaded every round") and timing["fits"] is False
    assert "reloaded every round" in report.to_markdown()
    assert report.timing_ratios("b")["prefill latency (ms)"]["rounds"] == 2


def test_perplexity_batches_are_sized_to_the_machine(tokenizer, monkeypatch):
    model = tiny_model("llama")
    windows = [torch.randint(0, 256, (64,)) for _ in range(6)]
    monkeypatch.setattr(perplexity_module, "available_bytes", lambda device: 10 ** 12)
    assert perplexity_module.auto_batch_size(model, 64, 6) == 6 and perplexity_module.auto_batch_size(model, 64, 20) == 8
    monkeypatch.setattr(perplexity_module, "available_bytes", lambda device: 10 ** 6)
    assert perplexity_module.auto_batch_size(model, 64, 6) == 1  # a quarter of 1 MB holds less than one window
    nll, count = perplexity_module.window_nll(model, windows, batch_size=None)
    reference, _ = perplexity_module.window_nll(model, windows, batch_size=1)
    assert count == 6 * 63 and nll == pytest.approx(reference, rel=1e-5)


def test_every_long_phase_has_a_progress_bar_naming_the_model(tokenizer, text_file, capsys):
    evaluate_model(tiny_model("llama"), tokenizer, text=str(text_file), seq_len=32, max_windows=2, sample_tokens=3,
                   efficiency=True, repeats=1, decode_batches=[1], new_tokens=3, energy_rounds=1, energy_new_tokens=3,
                   name="tiny", progress=True)
    err = capsys.readouterr().err
    for label in ("tiny: perplexity", "tiny: greedy samples", "speed and energy"):
        assert label in err, label
    assert "tiny, warm-up" in err and "tiny, round 1/1" in err


def _v2_entry(name: str, prefill: float, with_: list[str]) -> dict:
    """A model entry as schema pruning_hf.evaluation/2 wrote it: one median per timing, the process's peak RSS."""
    return {"name": name, "perplexity": {"perplexity": 10.0, "tokens": 100, "windows": 2, "seq_len": 51},
            "size": {"parameters": {"total": 50, "nonzero": 40 if with_ else 50}, "weights_bytes": 200},
            "efficiency": {"device": "cpu", "threads": 2, "warmup": 1, "repeats": 5, "checkpoint_bytes": 300,
                           "flops_per_token": {"linear": 1e6, "attention": 1e5, "total": 1.1e6, "sparse_skippable": 0,
                                               "seq_len": 51},
                           "prefill": {"batch": 1, "seq_len": 51, "median_seconds": prefill, "tokens_per_second": 51 / prefill},
                           "decode": {"1": {"batch": 1, "prompt_len": 32, "new_tokens": 32, "median_seconds": 1.0,
                                            "decode_seconds": 0.9, "tokens_per_second": 34.4}},
                           "memory": {"peak_rss_bytes": 5e8, "rss_peak_reset": True, "peak_gpu_bytes": None},
                           "timing": {"mode": "interleaved", "held": True}, "timed_with": with_}}


def test_a_version_2_report_still_loads_and_renders_in_the_table_and_the_card(make_checkpoint, tokenizer, tmp_path):
    import json

    from huggingface_hub import ModelCard

    from pruning_hf.cli import main
    from pruning_hf.evaluation.report import SCHEMA, EvaluationReport

    old = {"schema": "pruning_hf.evaluation/2", "settings": {"text": "embedded@test", "seq_len": 51}, "data": {},
           "models": [_v2_entry("dense", 0.4, ["pruned"]), _v2_entry("pruned", 0.1, ["dense"])]}
    report = EvaluationReport.from_dict(old)
    table = report.to_markdown()
    assert "| prefill latency (ms) | 400.0 | 100.0 (0.25x, median only, no spread recorded) |" in table
    assert "peak RSS of the process (MB) | 500 |" in table and "models timed side by side" in table
    assert report.ratios()["pruned"]["prefill latency (ms)"] == pytest.approx(0.25) and report.timing_ratios() == {}
    assert report.to_dict()["schema"] == SCHEMA != old["schema"]

    model = load_model(make_checkpoint("llama"))
    prune(model, {"method": "magnitude", "sparsity": 0.5}, tokenizer, progress=False, energy=False)
    folder = tmp_path / "old"
    model.save_pretrained(folder)
    (folder / "evaluation_report.json").write_text(json.dumps(old))
    assert main(["card", str(folder)]) == 0
    card = ModelCard.load(folder / "README.md")
    assert "| prefill latency (batch 1, ms) | 400.0 | 100.0 | 0.250x |" in card.text


def test_models_timed_apart_get_no_speed_ratio(tokenizer, text_file):
    report = compare_models({"a": tiny_model("llama"), "b": tiny_model("llama")}, tokenizer, text=str(text_file),
                            seq_len=32, max_windows=1, samples=False, efficiency=True, energy=False, repeats=2,
                            decode_batches=[1], new_tokens=3, side_by_side=False, progress=False)
    row = next(line for line in report.to_markdown().splitlines() if line.startswith("| prefill latency (ms) |"))
    assert row.endswith("(timed apart: no ratio) |") and "prefill latency (ms)" not in report.ratios()["b"]
    assert report.timed_apart("b") == ["prefill_ms", "decode_tokens_per_s"] and report.timing_ratios("b") == {}
    assert "a: alone; b: alone" in report.to_markdown()
