"""`pruning-hf prune` / `methods`: end to end on a tiny checkpoint, and clear errors for misuse."""

import json
import subprocess
import sys

import pytest

from pruning_hf.cli import main


def run(*args):
    return main([str(a) for a in args])


def test_prune_writes_checkpoint_report_and_prints_perplexity(make_checkpoint, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = run("prune", make_checkpoint("llama"), "--method", "sparsegpt", "--pattern", "4:8", "--calibration",
               text_file, "--num-samples", 4, "--seq-len", 32, "--dampening", 0.05, "--eval-text", text_file,
               "--eval-seq-len", 64, "--eval-windows", 3, "--output", out, "--no-progress")
    assert code == 0
    printed = capsys.readouterr().out
    assert "| dense |" in printed and "| sparsegpt 50% 4:8 |" in printed
    config = json.loads((out / "config.json").read_text())["pruning_config"]
    assert config["pattern"] == "4:8" and config["options"]["dampening"] == 0.05
    assert json.loads((out / "pruning_report.json").read_text())["sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("args,message", [
    (["--method", "wanda", "--sparsity", "1.5"], r"sparsity must be in \[0.0, 1.0\), got 1.5"),
    (["--method", "nope", "--sparsity", "0.5"], r"method='nope' is not a known pruning method"),
    (["--method", "wanda", "--pattern", "4:2"], r"pattern='4:2' keeps N=4 of every M=2"),
    (["--method", "wanda", "--sparsity", "0.5", "--dampening", "0.1"], r"unknown option 'dampening' for method 'wanda'"),
    (["--method", "wanda", "--sparsity", "0.5", "--calibration", "missing.txt"], r"'missing.txt' does not exist"),
    (["--method", "wanda", "--sparsity", "0.5", "--num-samples", "0"], r"calibration.num_samples must be an integer >= 1"),
])
def test_bad_arguments_exit_2_with_one_clear_line(make_checkpoint, tmp_path, capsys, args, message):
    checkpoint = make_checkpoint("opt")
    capsys.readouterr()
    code = run("prune", checkpoint, *args, "--output", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pruning-hf prune: error:") and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_refused_before_loading(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert run("prune", tmp_path / "no-model", "--method", "magnitude", "--sparsity", "0.5", "--output", tmp_path / "f") == 2
    assert "is a file" in capsys.readouterr().err


def test_missing_model_folder(tmp_path, capsys):
    assert run("prune", tmp_path / "no-model", "--method", "magnitude", "--sparsity", "0.5", "--output", tmp_path / "o") == 2
    assert "does not exist" in capsys.readouterr().err


def test_methods_lists_registered_methods_and_options(capsys):
    assert run("methods") == 0
    printed = capsys.readouterr().out
    assert "magnitude:" in printed and "wanda:" in printed and "--dampening" in printed


def test_console_script_usage_error_exit_code():
    result = subprocess.run([sys.executable, "-m", "pruning_hf.cli", "prune"], capture_output=True, text=True)
    assert result.returncode == 2 and "required" in result.stderr
