"""SIGKILL at random moments: a save over a good checkpoint, and a sweep, 10 trials each.

The writer runs in a forked child (no interpreter start-up per trial) that the test kills with
SIGKILL after a random delay. After every kill the checkpoint path holds either the old checkpoint
or the complete new one (stock-loadable, logits identical to one of the two), and every sweep file
present is complete (valid JSON / CSV / PNG), so the next run resumes from it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import threading
import time

import pytest
import torch
from tqdm import tqdm  # the base class: its lock is the one every progress bar class shares
from conftest import tiny_model

from pruning_hf import PruningConfig, prune

TRIALS = 10
INPUT = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])


def _run_until_killed(work, delay: float) -> None:
    """Fork; the child runs ``work()`` (looping forever or not), the parent SIGKILLs it after ``delay``."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            # a progress bar's write lock is a semaphore shared with the parent across fork: a child killed
            # while holding it would leave the parent's next bar waiting forever, so the child takes its own
            tqdm.set_lock(threading.RLock())
            work()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _logits(folder) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(INPUT).logits


def test_save_killed_at_random_moments_leaves_old_or_new_checkpoint(tokenizer, tmp_path, one_thread):
    models = []
    for seed in (0, 1):
        model = tiny_model("llama", seed=seed)
        prune(model, PruningConfig(method="magnitude", sparsity=0.5), tokenizer, progress=False)
        models.append(model)
    target = tmp_path / "checkpoint"
    models[0].save_pretrained(target)
    expected = [_logits(target)]
    models[1].save_pretrained(tmp_path / "other")
    expected.append(_logits(tmp_path / "other"))
    assert not torch.equal(*expected)

    def save_forever():
        for step in range(10_000):
            models[(step + 1) % 2].save_pretrained(target)

    rng = random.Random(0)
    mid_write = 0  # kills that left a half-written temporary folder behind (the case that matters)
    for _ in range(TRIALS):
        _run_until_killed(save_forever, rng.uniform(0.01, 0.4))
        mid_write += any(p.name.startswith(".checkpoint.tmp-") for p in tmp_path.iterdir())
        assert target.is_dir() and (target / "pruning_report.json").is_file()
        logits = _logits(target)
        assert any(torch.equal(logits, e) for e in expected), "the checkpoint is neither the old one nor the new one"
    assert mid_write > 0
    models[0].save_pretrained(target)  # the next save also removes temporaries of killed writers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "other"]


def _sweep_files_are_complete(out, keys: set | None) -> dict:
    import matplotlib.image

    state = {}
    if (out / "sweep.json").exists():
        state = json.loads((out / "sweep.json").read_text())
        assert all(math.isfinite(row["perplexity"]) for row in state["points"].values())
        if keys is not None:
            assert set(state["points"]) <= keys
    if (out / "sweep.csv").exists():
        rows = list(csv.DictReader((out / "sweep.csv").open()))
        assert rows[0]["label"] == "dense" and all(row["perplexity"] for row in rows)
    for plot in ("sweep_perplexity.png", "sweep_pareto.png"):
        if (out / plot).exists():
            assert matplotlib.image.imread(out / plot).shape[0] > 100
    return state


def _slow_writes(monkeypatch) -> None:
    """Widen the window a kill can hit: every Path.write_bytes/write_text writes half, waits, writes the rest."""
    import pathlib

    def slow_write_bytes(self, data):
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            time.sleep(0.1)
            return handle.write(data[len(data) // 2:]) + len(data) // 2

    monkeypatch.setattr(pathlib.Path, "write_bytes", slow_write_bytes)
    monkeypatch.setattr(pathlib.Path, "write_text", lambda self, text, **kw: slow_write_bytes(self, text.encode()))


def test_sweep_killed_at_random_moments_keeps_valid_resumable_results(make_checkpoint, tmp_path, one_thread,
                                                                      monkeypatch):
    from pruning_hf.cli import main

    model = make_checkpoint("llama")
    out = tmp_path / "sweep"
    argv = ["sweep", str(model), "--methods", "magnitude,wanda", "--sparsities", "0.3,0.6", "--num-samples", "2",
            "--seq-len", "32", "--eval-seq-len", "32", "--eval-windows", "2", "--no-efficiency", "--no-energy",
            "--budget", "", "--output", str(out), "--no-progress"]
    reference = tmp_path / "reference"
    start = time.perf_counter()
    with monkeypatch.context() as patch:
        _slow_writes(patch)
        assert main([*argv[:-2], str(reference), "--no-progress"]) == 0
        duration = time.perf_counter() - start
        keys = set(json.loads((reference / "sweep.json").read_text())["points"])
        rng, partial = random.Random(1), 0  # partial: kills that left some points measured, some not
        for _ in range(TRIALS):
            _run_until_killed(lambda: main(argv), rng.uniform(0.0, duration))
            done = set(_sweep_files_are_complete(out, keys).get("points", {}))
            partial += 0 < len(done) < len(keys)
            if done == keys:  # finished before the kill: start the next trial afresh
                shutil.rmtree(out)
    assert partial > 0
    assert main(argv) == 0  # resumes from what the killed runs left
    state = _sweep_files_are_complete(out, keys)
    assert set(state["points"]) == keys
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left behind
    assert state["dense"] == json.loads((reference / "sweep.json").read_text())["dense"]
