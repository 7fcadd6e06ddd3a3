"""Peak extra memory of a block of work, for per-layer pruning reports.

On a CUDA device the allocator's own peak counter is exact. On CPU the process's resident set size
is sampled by a background thread (every 2 ms by default): short spikes between two samples can be
missed, so the CPU figure is a lower bound of the true peak.
"""

from __future__ import annotations

import os
import threading

import torch

__all__ = ["PeakMemory", "resident_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """Current resident set size of this process (Linux ``/proc/self/statm``), else ``None``."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


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
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
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
            self.extra_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, resident_bytes() or 0)
            self.extra_bytes = max(0, self._peak - self._start)
