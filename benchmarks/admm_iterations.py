"""What ADMM's iteration schedule buys: reconstruction error and solver time of fewer or longer schedules.

    python benchmarks/admm_iterations.py [--layers 4,15,25]

Captures the real inputs of three SmolLM2-135M decoder layers while ``method="admm"`` with dense targets prunes
the model at 70% (32 x 512 calibration windows of WikiText-2 validation, the same as ``beyond.py``; the default
sub-block schedule), i.e. each Linear's Hessian ``X^T X`` and the weight ADMM is handed. Then, for each captured
Linear (q/k/v stacked, o_proj, gate/up stacked, down_proj) and each pattern (70%, 50%, 2:4), it solves the
problem again with every schedule below and reports the total reconstruction error relative to the default
(20 iterations, the penalty growing 1.3x every 2) and the solver's seconds (1 torch thread). The question it
answers: can ADMM be made cheaper by running fewer iterations, at what cost in its objective.

Prints a markdown table and writes ``benchmarks/results/admm_iterations.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from pruning_hf import PruningConfig  # noqa: E402
from pruning_hf.engine import prune_model  # noqa: E402
from pruning_hf.methods.admm import ADMMPruner  # noqa: E402
from pruning_hf.sparsity.admm import admm_prune  # noqa: E402
from pruning_hf.sparsity.masks import parse_pattern  # noqa: E402

MODEL = "embedded:smollm2-135m"
#: label -> admm_prune keyword arguments (the default first)
SCHEDULES = {
    "20 iterations, rho x1.3 every 2 (default)": dict(iterations=20, rho_every=2),
    "10 iterations, rho x1.3 every 1": dict(iterations=10, rho_every=1),
    "14 iterations, rho x1.3 every 1": dict(iterations=14, rho_every=1),
    "20 iterations, rho x1.69 every 4": dict(iterations=20, rho_every=4, rho_growth=1.69),
    "30 iterations, rho x1.3 every 3": dict(iterations=30, rho_every=3),
}
PATTERNS = {"70%": ("unstructured", 0.7), "50%": ("unstructured", 0.5), "2:4": ("2:4", None)}


class _Captured(Exception):
    """Stops pruning once the last wanted layer's Linears are captured."""


def capture(layers: list[int], setup: dict) -> list[tuple[str, torch.Tensor, torch.Tensor, list[int] | None]]:
    """``[(name, weight handed to ADMM, hessian, row groups)]`` of the wanted layers' Linears."""
    from beyond import model_and_windows

    _, windows, model = model_and_windows(MODEL, setup)
    wanted, last, captured = {f".{i}." for i in layers}, max(layers), []
    original = ADMMPruner.prune_weight

    def spy(self, name, weight, stats, sparsity, row_groups=None):
        if f".{last + 1}." in name:
            raise _Captured
        if any(tag in name for tag in wanted):
            captured.append((name, weight.clone(), stats.hessian.clone(), row_groups))
        return original(self, name, weight, stats, sparsity, row_groups)

    ADMMPruner.prune_weight = spy
    config = PruningConfig(method="admm", sparsity=0.7, dense_targets=True,
                           calibration={"source": setup["text"], "num_samples": setup["calibration"][0],
                                        "seq_len": setup["calibration"][1]})
    try:
        prune_model(model, config, windows=windows, progress=False)
    except _Captured:
        pass
    finally:
        ADMMPruner.prune_weight = original
    return captured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="4,15,25", help="decoder layers to capture (comma-separated)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    setup = dict(model=MODEL, text=common.text_source(), calibration=[32, 512], evaluation=[16, 512],
                 layers=[int(i) for i in args.layers.split(",")], threads=1,
                 capture="method=admm, sparsity 0.7, dense_targets, default schedule")
    captured = capture(setup["layers"], setup)
    rows = []
    for setting, (pattern, sparsity) in PATTERNS.items():
        spec = parse_pattern(pattern)
        errors = {label: 0.0 for label in SCHEDULES}
        seconds = dict.fromkeys(SCHEDULES, 0.0)
        for _, weight, hessian, groups in captured:
            for label, schedule in SCHEDULES.items():
                started = time.perf_counter()
                errors[label] += admm_prune(weight, hessian, sparsity, spec, row_groups=groups, **schedule).objective
                seconds[label] += time.perf_counter() - started
        default = next(iter(SCHEDULES))
        rows += [{"setting": setting, "schedule": label, "error_vs_default": errors[label] / errors[default],
                  "solver_seconds": seconds[label], "seconds_vs_default": seconds[label] / seconds[default]}
                 for label in SCHEDULES]
    common.finish("admm_iterations", setup, rows,
                  [("setting", "setting"), ("schedule", "schedule"), ("error_vs_default", "error / default"),
                   ("solver_seconds", "solver s"), ("seconds_vs_default", "time / default")],
                  f"{len(captured)} Linears of SmolLM2-135M layers {args.layers} (their inputs under ADMM +dense at "
                  "70%, 32 x 512 calibration); reconstruction error summed over them; 1 torch thread", [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
