"""Resumable pruning (``resume_dir`` / ``--resume``): an interrupted run continues after its last
finished layer and ends bit-identical to an uninterrupted run; a folder of another run is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

import pruning_hf.engine.loop
from pruning_hf import PruningConfig
from pruning_hf.data.text import calibration_windows
from pruning_hf.engine import prune_model
from pruning_hf.engine.resume import MANIFEST, ResumeError

LAYERS = 4


class Interrupted(Exception):
    pass


@pytest.fixture
def windows(tokenizer, text_file):
    config = PruningConfig(method="wanda", sparsity=0.5,
                           calibration={"source": str(text_file), "num_samples": 4, "seq_len": 32, "batch_size": 2})
    return calibration_windows(config.calibration, tokenizer)


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _interrupt_at(monkeypatch, layer: int) -> list[int]:
    """Make pruning fail when it reaches decoder layer ``layer``; returns the list of layers pruned."""
    original, pruned = pruning_hf.engine.loop._prune_targets, []

    def prune_targets(method, index, *args, **kwargs):
        if index == layer:
            raise Interrupted(f"killed at layer {index}")
        pruned.append(index)
        return original(method, index, *args, **kwargs)

    monkeypatch.setattr(pruning_hf.engine.loop, "_prune_targets", prune_targets)
    return pruned


@pytest.mark.parametrize("config", [
    dict(method="wanda", sparsity=0.5),
    dict(method="sparsegpt", pattern="2:4"),
    dict(method="wanda", sparsity=0.5, allocation="owl", refine=True),
    dict(method="wanda", sparsity=0.5, schedule="layer"),
    dict(method="sparsegpt", sparsity=0.5, dense_targets=True),
    dict(method="sparsegpt", sparsity=0.5, dense_targets=True, schedule="layer"),
], ids=["wanda", "sparsegpt-2:4", "wanda-owl-refine", "wanda-layer-schedule", "sparsegpt-dense-targets",
        "sparsegpt-dense-targets-layer-schedule"])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(config, windows, tmp_path, monkeypatch, one_thread):
    config = PruningConfig(**config)
    reference = tiny_model("llama", layers=LAYERS)
    expected_report = prune_model(reference, config, windows=windows, progress=False)
    folder = tmp_path / "resume"

    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        with pytest.raises(Interrupted):
            prune_model(tiny_model("llama", layers=LAYERS), config, windows=windows, progress=False,
                        resume_dir=folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "hidden_1.safetensors", "layer_0.safetensors", "layer_1.safetensors", MANIFEST]

    pruned = _interrupt_at(monkeypatch, -1)  # count the layers the resumed run prunes
    resumed = tiny_model("llama", layers=LAYERS)
    report = prune_model(resumed, config, windows=windows, progress=False, resume_dir=folder)
    assert sorted(set(pruned)) == [2, 3]  # layers 0 and 1 came from the checkpoint (sub-blocks: 4 calls a layer)
    expected, got = _weights(reference), _weights(resumed)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert [r.linears for r in report.layers] == [r.linears for r in expected_report.layers]
    if config.allocation == "owl":
        assert report.allocation["layer_sparsity"] == expected_report.allocation["layer_sparsity"]
    assert not folder.exists()  # finished: the checkpoints are deleted


def test_a_folder_of_another_run_is_refused(windows, tmp_path, monkeypatch):
    config = PruningConfig(method="wanda", sparsity=0.5)
    folder = tmp_path / "resume"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 1)
        with pytest.raises(Interrupted):
            prune_model(tiny_model("llama", layers=LAYERS), config, windows=windows, progress=False, resume_dir=folder)
    with pytest.raises(ResumeError, match=r"holds a run with another config .* give a new folder"):
        prune_model(tiny_model("llama", layers=LAYERS), PruningConfig(method="wanda", sparsity=0.6),
                    windows=windows, progress=False, resume_dir=folder)
    with pytest.raises(ResumeError, match=r"another calibration"):
        prune_model(tiny_model("llama", layers=LAYERS), config, windows=windows[:2], progress=False, resume_dir=folder)
    with pytest.raises(ResumeError, match=r"another model"):
        prune_model(tiny_model("llama", layers=LAYERS + 1), config, windows=windows, progress=False, resume_dir=folder)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ResumeError, match="is not empty and holds no manifest.json"):
        prune_model(tiny_model("llama"), config, windows=windows, progress=False, resume_dir=tmp_path / "foreign")
    with pytest.raises(ResumeError, match="method 'structured' changes layer shapes"):
        prune_model(tiny_model("llama"), PruningConfig(method="structured", sparsity=0.25), windows=windows,
                    progress=False, resume_dir=tmp_path / "new")


_SLOW_CLI = """
import sys, time
import pruning_hf.engine.loop as engine
from pruning_hf.cli import main
original = engine._prune_targets
def slow(*args, **kwargs):
    time.sleep(0.4)
    return original(*args, **kwargs)
engine._prune_targets = slow
sys.exit(main(sys.argv[1:]))
"""


def test_cli_resume_after_sigkill_gives_the_uninterrupted_checkpoint(tmp_path, tokenizer, text_file):
    from safetensors.torch import load_file

    from pruning_hf.cli import main

    folder = tmp_path / "model"
    tiny_model("llama", layers=LAYERS).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    common = ["prune", str(folder), "--method", "sparsegpt", "--sparsity", "0.5", "--calibration", str(text_file),
              "--num-samples", "4", "--seq-len", "32", "--no-progress"]
    resume = tmp_path / "resume"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *common, "--output", str(tmp_path / "out"),
                                "--resume", str(resume)], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (resume / MANIFEST).is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (resume / MANIFEST).is_file(), process.stderr.read().decode()
    assert not (tmp_path / "out").exists()

    torch.set_num_threads(1)
    assert main([*common, "--output", str(tmp_path / "out"), "--resume", str(resume)]) == 0
    assert main([*common, "--output", str(tmp_path / "reference")]) == 0
    resumed, reference = (load_file(tmp_path / name / "model.safetensors") for name in ("out", "reference"))
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)
    assert not resume.exists()
