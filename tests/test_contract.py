"""The registry contract: every registered method, including one added later with one file and one
registry line, round-trips its config, gets its CLI flags, prunes a tiny model, and the saved
checkpoint reloads with stock transformers in a fresh process with the same logits."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model

from pruning_hf import PruningConfig, prune
from pruning_hf.cli import build_parser
from pruning_hf.cli.common import config_from_args
from pruning_hf.methods import METHODS

CALIBRATION = {"source": "embedded", "num_samples": 2, "seq_len": 32, "batch_size": 2}
IDS = torch.tensor([[1, 5, 9, 20, 33, 7, 2, 11]])


def example(name: str) -> PruningConfig:
    return PruningConfig(method=name, calibration=CALIBRATION, **METHODS[name].example)


@pytest.mark.parametrize("name", list(METHODS))
def test_config_round_trips_through_dict_json_and_yaml(name):
    config = example(name)
    for again in (PruningConfig.from_dict(config.to_dict()), PruningConfig.from_json(config.to_json()),
                  PruningConfig.from_yaml(config.to_yaml())):
        assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("name", list(METHODS))
def test_every_option_has_a_cli_flag_and_the_reproduce_command_rebuilds_the_config(name):
    config = example(name)
    flags = {cli_field.flag for cli_field in PruningConfig.cli_fields()}
    for option in dataclasses.fields(METHODS[name].Options):
        assert f"--{option.name.replace('_', '-')}" in flags
    args = build_parser().parse_args(["prune", "MODEL", *config.to_cli_args(), "--output", "out"])
    assert config_from_args(args).to_dict() == config.to_dict()


@pytest.mark.parametrize("name", list(METHODS))
def test_prunes_a_tiny_model_that_reloads_with_stock_transformers(name, tmp_path, tokenizer):
    model = tiny_model("llama", layers=3)
    report = prune(model, example(name), tokenizer, progress=False)
    assert report.sparsity > 0 or report.parameters_removed > 0
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / name)
    torch.save(expected, tmp_path / f"{name}.logits.pt")
    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / name)!r})
        with torch.no_grad():
            logits = model(torch.tensor({IDS.tolist()})).logits
        print(float((logits - torch.load({str(tmp_path / f"{name}.logits.pt")!r})).abs().max()))
    """)
    # a fresh interpreter without pruning_hf imported: the checkpoint must load with transformers alone,
    # except where the method needs the registered loader (per-layer shapes), which then says so
    needs_loader = "quantization_config" in json.loads((tmp_path / name / "config.json").read_text())
    prefix = "import pruning_hf\n" if needs_loader else ""
    result = subprocess.run([sys.executable, "-c", prefix + script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) == 0.0
