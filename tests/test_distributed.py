"""Data-parallel evaluation with accelerate: 2 CPU processes give the same result as one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruning_hf.cli.distributed import main
from pruning_hf.evaluation.distributed import distributed_perplexity, map_in_order
from pruning_hf.evaluation.perplexity import perplexity

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_map_in_order_in_one_process_is_a_plain_map():
    assert map_in_order(lambda x: x * x, range(5)) == [0, 1, 4, 9, 16]


def test_one_process_matches_plain_perplexity(make_checkpoint, tokenizer, text_file):
    from transformers import AutoModelForCausalLM

    from pruning_hf.data.text import load_texts, tokenize_texts

    model = AutoModelForCausalLM.from_pretrained(make_checkpoint("llama"))
    tokens = tokenize_texts(load_texts(str(text_file)), tokenizer)
    expected = perplexity(model, tokens, seq_len=64, max_windows=10, batch_size=3)
    got = distributed_perplexity(model, tokens, seq_len=64, max_windows=10, batch_size=3)
    assert got["processes"] == 1 and got["tokens"] == expected["tokens"] == 10 * 63
    assert got["nll"] == pytest.approx(expected["nll"], rel=1e-12)  # only the summation order differs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_give_the_same_result_as_one(make_checkpoint, text_file, tmp_path, capsys):
    checkpoint = make_checkpoint("opt")
    # 7 windows in batches of 2: 4 batches, split 2 + 2, the last batch shorter
    args = [str(checkpoint), "--text", str(text_file), "--seq-len", "48", "--max-windows", "7", "--batch-size", "2"]
    assert main(args + ["--json", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "pruning_hf.cli.distributed",
               *args, "--json", str(tmp_path / "two.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert {k: v for k, v in two.items() if k != "processes"} == {k: v for k, v in one.items() if k != "processes"}
    assert two["tokens"] == 7 * 47


def test_command_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--text", "embedded"]) == 2
    assert "does not exist" in capsys.readouterr().err
