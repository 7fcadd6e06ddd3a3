"""Peak memory readings: a run's GPU peak survives the per-layer resets that measure each layer."""

from __future__ import annotations

import pytest
import torch

import pruning_hf.utils.memory as memory


class FakeAllocator:
    """torch.cuda's allocator counters for one device, driven by the test."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0

    def allocate(self, size: int) -> None:
        self.allocated += size
        self.peak = max(self.peak, self.allocated)

    def free(self, size: int) -> None:
        self.allocated -= size


@pytest.fixture
def fake_cuda(monkeypatch):
    allocator = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: allocator.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: allocator.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda *a: setattr(allocator, "peak", allocator.allocated))
    monkeypatch.setattr(memory, "_GPU_HIGH_WATER", {})
    return allocator


def test_per_layer_peaks_and_the_run_peak_on_cuda(fake_cuda):
    layer_peaks = []
    for size in (300, 100):  # layer 0 needs more memory than layer 1
        with memory.PeakMemory("cuda:0") as peak:
            fake_cuda.allocate(size)
            fake_cuda.free(size)
        layer_peaks.append(peak.extra_bytes)
    assert layer_peaks == [300, 100]
    # the run's peak is layer 0's, although layer 1's block reset the counter
    assert memory.gpu_high_water("cuda:0") == 300 and memory.gpu_high_water() == 300


def test_peak_memory_on_cpu_is_a_non_negative_reading():
    with memory.PeakMemory("cpu") as peak:
        block = torch.ones(4_000_000)  # 16 MB
        del block
    assert peak.extra_bytes is not None and peak.extra_bytes >= 0
