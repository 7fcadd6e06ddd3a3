"""Scale and deployment: peak memory of in-memory vs offloaded pruning, and dense vs compressed checkpoints.

    python benchmarks/scale.py [--quick] [--shapes opt-125m,opt-350m,opt-1.3b]

Memory: OPT-shaped models (random init from OPTConfig, bf16, saved once as safetensors under the temp
folder) pruned with Wanda 50% in a fresh subprocess per run, so peak RSS (``ru_maxrss``) is that run's
own: (a) loaded in memory; (b) loaded with ``device_map="auto"``, a small ``max_memory`` and an
``offload_folder`` so every decoder layer sits on disk and the engine brings one layer at a time in;
(c) as (b) with the calibration activations on disk too. The pruned weights of all runs are hashed:
offloading must not change a single bit.

Disk: the largest shape magnitude-pruned at 50% unstructured, 2:4 and 70%, saved dense and with
``save_pretrained(dir, compress=True)``: folder bytes, bytes of the pruned tensors alone, load time
of ``AutoModelForCausalLM.from_pretrained`` (median of 3, same process) and whether logits match.

``python benchmarks/scale.py measure CHECKPOINT --mode offload ...`` is the subprocess worker (also
used by tests/test_offload.py); it prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # OPT family shapes (facebook/opt-*), vocab 50272, context 2048
    "opt-125m": dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                     word_embed_proj_dim=768),
    "opt-350m": dict(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
                     word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                     word_embed_proj_dim=2048),
}
MODES = ("memory", "offload", "offload+disk-activations")
MiB = 2 ** 20


def peak_rss() -> int:
    """Peak resident set size of this process in bytes since start or the last :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


def current_rss() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> None:
    """Start a new high-water mark at the current RSS (Linux >= 4.0: ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def bench_checkpoint(shape: str) -> Path:
    """A random-init OPT checkpoint of ``shape`` in bf16 safetensors, created once under the temp folder."""
    folder = Path(tempfile.gettempdir()) / "pruning_hf_bench" / f"{shape}-bf16"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=50272, max_position_embeddings=2048, **SHAPES[shape])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    from pruning_hf.storage import atomic_directory

    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
    return folder


# --- subprocess worker -------------------------------------------------------------------------

def weights_digest(model) -> str:
    """sha256 over every parameter (name order), reading offloaded modules one at a time."""
    import torch

    from pruning_hf.devices import onloaded

    digest = hashlib.sha256()
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        with onloaded([module] if not list(module.children()) else []):
            for param_name, param in sorted(module.named_parameters(recurse=False)):
                if param.device.type == "meta":
                    continue  # a tied weight whose offloaded copy lives with its owner
                digest.update(f"{name}.{param_name}".encode())
                digest.update(param.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return digest.hexdigest()


def _load_and_prune(checkpoint: str | Path, args, windows):
    """Load ``checkpoint`` as ``args.mode`` says and prune it; returns the model and load/prune seconds."""
    from transformers import AutoModelForCausalLM

    from pruning_hf import PruningConfig
    from pruning_hf.engine import prune_model

    load_kwargs = {"dtype": "auto"}
    if args.mode != "memory":
        offload_dir = tempfile.mkdtemp(prefix="pruning_hf_offload_")
        load_kwargs.update(device_map="auto", max_memory={"cpu": args.max_memory}, offload_folder=offload_dir)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, **load_kwargs)
    loaded = time.perf_counter()
    config = PruningConfig(method=args.method, sparsity=0.5, calibration={"batch_size": args.batch_size})
    storage = "disk" if args.mode.endswith("disk-activations") else "cpu"
    prune_model(model, config, windows=windows, progress=False, activation_storage=storage)
    return model, loaded - started, time.perf_counter() - loaded


def _save_variant(config, folder: str, **changes) -> str:
    """Save a random-init model of ``config`` with ``changes`` (e.g. fewer layers) to ``folder``."""
    from transformers import AutoModelForCausalLM

    variant = config.__class__.from_dict({**config.to_dict(), **changes})
    AutoModelForCausalLM.from_config(variant, dtype=config.dtype).save_pretrained(folder)
    return folder


def measure(args) -> dict:
    """Load and prune one OPT checkpoint in this (fresh) process; report its peak RSS above the start.

    First a 1-layer, 64-wide model of the same config is loaded and pruned the same way (imports,
    kernels, thread pools: costs that do not depend on the model). Then, each from a freshly reset
    high-water mark: a 1-layer model of the full width (``one_layer_*``), and the checkpoint itself.
    ``peak_above_start`` of the checkpoint is what pruning it costs; offloading should make it about
    the same as the one-layer model's, whatever the number of layers.
    """
    import gc

    import torch
    from transformers import AutoConfig

    from pruning_hf.architectures import decoder_layers

    torch.set_num_threads(args.threads)
    config = AutoConfig.from_pretrained(args.checkpoint)
    windows = torch.randint(0, config.vocab_size, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))

    def measured_run(checkpoint) -> tuple:
        gc.collect()
        start = current_rss()
        reset_peak_rss()
        model, load_seconds, prune_seconds = _load_and_prune(checkpoint, args, windows)
        return model, peak_rss() - start, load_seconds, prune_seconds

    with tempfile.TemporaryDirectory(prefix="pruning_hf_warmup_") as tiny, \
            tempfile.TemporaryDirectory(prefix="pruning_hf_one_layer_") as one:
        _load_and_prune(_save_variant(config, tiny, num_hidden_layers=1, hidden_size=64, ffn_dim=128,
                                      word_embed_proj_dim=64, num_attention_heads=4), args, windows)
        _, one_layer_above, _, _ = measured_run(_save_variant(config, one, num_hidden_layers=1))
    model, above, load_seconds, prune_seconds = measured_run(args.checkpoint)

    def nbytes(module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    device_map = getattr(model, "hf_device_map", None) or {"": "cpu"}
    return {
        "mode": args.mode,
        "method": args.method,
        "peak_above_start": above,
        "one_layer_peak_above_start": one_layer_above,
        "process_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "model_bytes": nbytes(model),
        "layer_bytes": max(nbytes(layer) for layer in decoder_layers(model)),
        "num_layers": len(decoder_layers(model)),
        "activation_bytes": args.samples * args.seq_len * config.hidden_size * model.dtype.itemsize,
        "disk_entries": sum(device == "disk" for device in device_map.values()),
        "device_map_entries": len(device_map),
        "load_seconds": load_seconds,
        "prune_seconds": prune_seconds,
        "digest": weights_digest(model),
    }


def run_worker(checkpoint: Path, mode: str, method: str = "wanda", samples: int = 4, seq_len: int = 128,
               max_memory: str = "1MB", threads: int = 2, batch_size: int = 4, env: dict | None = None) -> dict:
    """Run :func:`measure` in a fresh Python process (extra ``env`` variables) and return its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "measure", str(checkpoint), "--mode", mode,
               "--method", method, "--samples", str(samples), "--seq-len", str(seq_len),
               "--max-memory", max_memory, "--threads", str(threads), "--batch-size", str(batch_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"worker failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("measure", help="(internal) prune one checkpoint in this process, print JSON")
    worker.add_argument("checkpoint")
    worker.add_argument("--mode", choices=MODES, default="offload")
    worker.add_argument("--method", default="wanda")
    worker.add_argument("--samples", type=int, default=4)
    worker.add_argument("--seq-len", type=int, default=128)
    worker.add_argument("--batch-size", type=int, default=4)
    worker.add_argument("--max-memory", default="1MB")
    worker.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "measure":
        print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
