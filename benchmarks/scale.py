"""Scale and deployment: peak memory of in-memory vs offloaded pruning, and dense vs compressed checkpoints.

    python benchmarks/scale.py [--quick] [--shapes opt-125m,opt-350m,opt-1.3b]

Memory: OPT-shaped models (random init from OPTConfig, bf16, saved once as safetensors under the temp
folder) pruned with Wanda 50% in a fresh subprocess per run: (a) loaded in memory; (b) loaded with
``device_map="auto"``, ``max_memory={"cpu": "1MB"}`` and an ``offload_folder``, so every weight sits
on disk and the engine brings one layer at a time in; (b') the same with glibc's mmap threshold
fixed; (c) as (b) with the calibration activations on disk too. Peak RSS is the kernel's high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs`` just before loading). The pruned weights of
all runs are hashed: offloading must not change a single bit.

Disk: the largest shape magnitude-pruned at 50% unstructured, 2:4 and 70%, saved dense and with
``save_pretrained(dir, compress=True)``: folder bytes, bytes of the pruned tensors alone, time of
``AutoModelForCausalLM.from_pretrained`` alone and with a first forward pass (which reads every
weight of a lazily loaded dense model; median of 3, loads interleaved), and whether logits match.

``python benchmarks/scale.py measure CHECKPOINT --mode offload ...`` is the subprocess worker (also
used by tests/test_offload.py); it prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import write_results  # noqa: E402

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
    from pruning_hf.utils.storage import atomic_directory

    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
    return folder


# --- subprocess worker -------------------------------------------------------------------------

def weights_digest(model) -> str:
    """sha256 over every parameter (name order), reading offloaded modules one at a time."""
    import torch

    from pruning_hf.models.devices import onloaded

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

    from pruning_hf.models.architectures import decoder_layers

    torch.set_num_threads(args.threads)
    config = AutoConfig.from_pretrained(args.checkpoint)
    windows = torch.randint(0, config.vocab_size, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))

    def measured_run(checkpoint) -> tuple:
        gc.collect()
        start = current_rss()
        reset_peak_rss()
        model, load_seconds, prune_seconds = _load_and_prune(checkpoint, args, windows)
        return model, start, peak_rss(), load_seconds, prune_seconds

    with tempfile.TemporaryDirectory(prefix="pruning_hf_warmup_") as tiny, \
            tempfile.TemporaryDirectory(prefix="pruning_hf_one_layer_") as one:
        _load_and_prune(_save_variant(config, tiny, num_hidden_layers=1, hidden_size=64, ffn_dim=128,
                                      word_embed_proj_dim=64, num_attention_heads=4), args, windows)
        _, one_start, one_peak, _, _ = measured_run(_save_variant(config, one, num_hidden_layers=1))
    model, start, peak, load_seconds, prune_seconds = measured_run(args.checkpoint)

    def nbytes(module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    device_map = getattr(model, "hf_device_map", None) or {"": "cpu"}
    return {
        "mode": args.mode,
        "method": args.method,
        "start_rss": start,
        "peak_rss": peak,
        "peak_above_start": peak - start,
        "one_layer_peak_above_start": one_peak - one_start,
        "model_bytes": sum(_tensor_bytes(Path(args.checkpoint)).values()),
        "layer_bytes": max(nbytes(layer) for layer in decoder_layers(model)),
        "embedding_bytes": nbytes(model.get_input_embeddings()),
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


# --- memory: in-memory vs offloaded pruning ----------------------------------------------------

MEMORY_RUNS = (  # (mode, extra environment, label)
    ("memory", {}, "in memory"),
    ("offload", {}, "offload to disk"),
    ("offload", {"MALLOC_MMAP_THRESHOLD_": str(MiB)}, "offload to disk, fixed glibc mmap threshold"),
    ("offload+disk-activations", {}, "offload to disk + activations on disk"),
)


def memory_rows(shapes: list[str], samples: int, seq_len: int) -> list[dict]:
    rows = []
    for shape in shapes:
        checkpoint = bench_checkpoint(shape)
        reference = None
        for mode, env, label in MEMORY_RUNS:
            print(f"  {shape}: {label} ...", file=sys.stderr, flush=True)
            result = run_worker(checkpoint, mode, samples=samples, seq_len=seq_len, env=env)
            reference = reference or result["digest"]
            rows.append({"model": shape, "run": label, **result, "identical_to_in_memory": result["digest"] == reference})
    return rows


def print_memory(rows: list[dict], samples: int, seq_len: int) -> None:
    print(f"## Peak memory: pruning in memory vs offloaded (Wanda 50%, {samples} x {seq_len} calibration tokens, bf16)\n")
    print("| model | weights | decoder layer / embedding | run | peak RSS | pruning peak above start | "
          "1-layer model's | load + prune s | weights identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} ({row['num_layers']} layers) | {row['model_bytes'] / MiB:,.0f} MiB | "
              f"{row['layer_bytes'] / MiB:,.0f} / {row['embedding_bytes'] / MiB:,.0f} MiB | {row['run']} | "
              f"{row['peak_rss'] / MiB:,.0f} MiB | "
              f"{row['peak_above_start'] / MiB:,.0f} MiB | {row['one_layer_peak_above_start'] / MiB:,.0f} MiB | "
              f"{row['load_seconds'] + row['prune_seconds']:.0f} | {'yes' if row['identical_to_in_memory'] else 'NO'} |")
    print()


# --- disk: dense vs compressed checkpoints --------------------------------------------------------

DISK_CONFIGS = (("50% unstructured", dict(sparsity=0.5)), ("2:4", dict(pattern="2:4")),
                ("70% unstructured", dict(sparsity=0.7)))


def _median_load_seconds(folders: list[Path], ids, repeats: int = 3) -> list[tuple[float, float]]:
    """Per folder, median seconds of ``from_pretrained`` and of ``from_pretrained`` + a first forward.

    Loads are interleaved so the page cache treats the folders alike.
    """
    import torch
    from transformers import AutoModelForCausalLM

    times: list[list[tuple[float, float]]] = [[] for _ in folders]
    for _ in range(repeats):
        for i, folder in enumerate(folders):
            start = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(folder)
            loaded = time.perf_counter() - start
            with torch.no_grad():
                model(ids)
            times[i].append((loaded, time.perf_counter() - start))
            del model
    return [(statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs)) for runs in times]


def _tensor_bytes(folder: Path) -> dict[str, int]:
    """Bytes of every tensor in a checkpoint folder, read from the safetensors headers."""
    from safetensors import safe_open

    item_bytes = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I64": 8}
    sizes = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as reader:
            for name in reader.keys():
                piece = reader.get_slice(name)
                sizes[name] = item_bytes[piece.get_dtype()] * math.prod(piece.get_shape())
    return sizes


def _pruned_tensor_ratio(dense_dir: Path, compressed_dir: Path) -> float:
    """Stored bytes of the compressed weights (values + layout) over their dense bytes."""
    from pruning_hf.sparsity.compression import BITMASK_SUFFIX, NM_INDEX_SUFFIX

    dense, compressed = _tensor_bytes(dense_dir), _tensor_bytes(compressed_dir)
    names = [name for name in dense if name + BITMASK_SUFFIX in compressed or name + NM_INDEX_SUFFIX in compressed]
    stored = sum(compressed[name] + compressed.get(name + BITMASK_SUFFIX, 0) + compressed.get(name + NM_INDEX_SUFFIX, 0)
                 for name in names)
    return stored / sum(dense[name] for name in names)


def disk_rows(shape: str, workdir: Path) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from pruning_hf import PruningConfig, prune
    from pruning_hf.utils.storage import folder_bytes

    checkpoint = bench_checkpoint(shape)
    ids = torch.randint(0, 50272, (1, 32), generator=torch.Generator().manual_seed(0))
    rows = []
    for label, options in DISK_CONFIGS:
        print(f"  {shape}: {label} dense vs compressed ...", file=sys.stderr, flush=True)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
        prune(model, PruningConfig(method="magnitude", **options), progress=False)
        dense_dir, compressed_dir = workdir / f"{label}-dense", workdir / f"{label}-compressed"
        start = time.perf_counter()
        model.save_pretrained(dense_dir)
        dense_save = time.perf_counter() - start
        start = time.perf_counter()
        model.save_pretrained(compressed_dir, compress=True)
        compressed_save = time.perf_counter() - start
        del model
        (dense_load, dense_first), (compressed_load, compressed_first) = _median_load_seconds(
            [dense_dir, compressed_dir], ids)
        dense_model = AutoModelForCausalLM.from_pretrained(dense_dir)
        compressed_model = AutoModelForCausalLM.from_pretrained(compressed_dir)
        with torch.no_grad():
            identical = torch.equal(dense_model(ids).logits, compressed_model(ids).logits)
        del dense_model, compressed_model
        rows.append({"model": shape, "pruning": label, "dense_bytes": folder_bytes(dense_dir),
                     "compressed_bytes": folder_bytes(compressed_dir), "pruned_tensor_ratio": _pruned_tensor_ratio(dense_dir, compressed_dir),
                     "dense_save_seconds": dense_save, "compressed_save_seconds": compressed_save,
                     "dense_load_seconds": dense_load, "compressed_load_seconds": compressed_load,
                     "dense_first_forward_seconds": dense_first, "compressed_first_forward_seconds": compressed_first,
                     "identical_logits": identical})
        shutil.rmtree(dense_dir)
        shutil.rmtree(compressed_dir)
    return rows


def print_disk(rows: list[dict]) -> None:
    print("## Disk: dense vs compressed checkpoints (bf16, magnitude pruning of every decoder Linear)\n")
    print("| model | pruning | dense | compressed | folder ratio | pruned tensors ratio | save s dense / compressed "
          "| load s dense / compressed | load + 1st forward s dense / compressed | identical logits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['pruning']} | {row['dense_bytes'] / MiB:,.0f} MiB | "
              f"{row['compressed_bytes'] / MiB:,.0f} MiB | {row['compressed_bytes'] / row['dense_bytes']:.3f}x | "
              f"{row['pruned_tensor_ratio']:.4f}x | {row['dense_save_seconds']:.1f} / {row['compressed_save_seconds']:.1f} | "
              f"{row['dense_load_seconds']:.2f} / {row['compressed_load_seconds']:.2f} | "
              f"{row['dense_first_forward_seconds']:.2f} / {row['compressed_first_forward_seconds']:.2f} | "
              f"{'yes' if row['identical_logits'] else 'NO'} |")
    print()


def hardware() -> dict:
    """CPU model, cores and RAM of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)}


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
    parser.add_argument("--quick", action="store_true", help="opt-125m shape only")
    parser.add_argument("--shapes", default=None, help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--samples", type=int, default=2, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration window")
    args = parser.parse_args(argv)
    if args.command == "measure":
        print(json.dumps(measure(args)))
        return
    shapes = args.shapes.split(",") if args.shapes else (["opt-125m"] if args.quick else list(SHAPES))
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    memory = memory_rows(shapes, args.samples, args.seq_len)
    with tempfile.TemporaryDirectory(prefix="pruning_hf_disk_") as workdir:
        disk = disk_rows(shapes[-1], Path(workdir))
    hw = hardware()
    print(f"Hardware: {hw['cpu']}, {hw['cores']} cores, {hw['memory_gib']} GiB RAM (CPU only)\n")
    print_memory(memory, args.samples, args.seq_len)
    print_disk(disk)
    setup = {"shapes": shapes, "dtype": "bfloat16", "memory_method": "wanda 50%", "calibration_windows": args.samples,
             "calibration_seq_len": args.seq_len, "offload_max_memory": {"cpu": "1MB"}, "worker_threads": 2,
             "disk_method": "magnitude", "hardware": hw}
    write_results("scale", setup, [{"table": "memory", **row} for row in memory] +
                  [{"table": "disk", **row} for row in disk])


if __name__ == "__main__":
    main()
