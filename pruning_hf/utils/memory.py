"""Memory readings: resident set size, the process's peak, and the peak extra memory of a block of work.

On a CUDA device the allocator's peak counter is exact. Resetting it (to measure one block) would
lose the peak of everything before, so every reset here first folds the counter into a high-water
mark: :func:`gpu_high_water` is the peak since the process started, whatever was reset in between.
On CPU the resident set size is sampled by a background thread (every 2 ms by default): short spikes
between two samples can be missed, so the CPU figure of a block is a lower bound of its true peak.
"""

from __future__ import annotations

import os
import re
import resource
import threading
from pathlib import Path

import torch

__all__ = ["PeakMemory", "resident_bytes", "available_bytes", "reset_rss_peak", "rss_peak_bytes", "reset_gpu_peak",
           "gpu_high_water"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_GPU_HIGH_WATER: dict[int, int] = {}  # device index -> peak allocated bytes seen before a reset


def resident_bytes() -> int | None:
    """Current resident set size of this process (Linux ``/proc/self/statm``), else ``None``."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory a new allocation can still get: free CUDA memory of a GPU, else the system's ``MemAvailable``
    (Linux ``/proc/meminfo``); ``None`` where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rss_peak_bytes() -> int:
    """Peak resident set size since the process started or the last :func:`reset_rss_peak`."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux units (KiB)


def _index(device: torch.device | str | int | None) -> int:
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    return device.index if device.index is not None else torch.cuda.current_device()


def reset_gpu_peak(device: torch.device | str | int | None = None) -> None:
    """Reset the CUDA peak counter of ``device`` after folding it into :func:`gpu_high_water`."""
    index = _index(device)
    _GPU_HIGH_WATER[index] = max(_GPU_HIGH_WATER.get(index, 0), int(torch.cuda.max_memory_allocated(index)))
    torch.cuda.reset_peak_memory_stats(index)


def gpu_high_water(device: torch.device | str | int | None = None) -> int:
    """Peak allocated CUDA bytes of ``device`` since the process started (resets included); 0 before CUDA is used."""
    if device is None and not torch.cuda.is_initialized():
        return max(_GPU_HIGH_WATER.values(), default=0)
    index = _index(device)
    return max(_GPU_HIGH_WATER.get(index, 0), int(torch.cuda.max_memory_allocated(index)))


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.extra_bytes``: peak memory above the start.

    ``extra_bytes`` is ``None`` where nothing can be measured (CPU without ``/proc``).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.extra_bytes: int | None = None
        self._start = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, resident_bytes() or 0)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._start = int(torch.cuda.memory_allocated(self.device))
            reset_gpu_peak(self.device)
        else:
            start = resident_bytes()
            if start is not None:
                self._start = self._peak = start
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra_bytes = int(torch.cuda.max_memory_allocated(self.device)) - self._start
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, resident_bytes() or 0)
            self.extra_bytes = max(0, self._peak - self._start)
