"""Interleaved rounds: the timings of several models, alternated round by round, with their spread.

Every round runs each model's workloads once, model after model, so a busy machine's slow spells hit
all models alike and round ``i`` of one model pairs with round ``i`` of another. A model is either
held in memory (warmed up once before the rounds) or given as a :class:`Reload` (a model that does not
fit next to the others: loaded for each round, warmed up, timed and released), which the report calls
weaker: loading between timings disturbs caches and memory.

Ratios come from the paired rounds (:func:`paired_ratio`): the median of the per-round ratios with
their minimum, maximum and interquartile range. A ratio whose interquartile range reaches into
1.0 +- :data:`NOISE` is "no measurable difference": one slow round (a busy spell, a page fault)
cannot make a ratio look confident, a few percent of order or timer bias between two identical
models is not reported as a speed-up, and a real speed-up shows in every round.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Hashable, Mapping, Sequence

from tqdm.auto import tqdm

__all__ = ["Reload", "spread", "paired_ratio", "run_rounds", "NOISE"]

_clock = time.perf_counter  # the timer of every timed run (tests replace it with a deterministic clock)

#: ratios within 1.0 +- NOISE are no measurable difference (scheduling and timer noise of a shared CPU)
NOISE = 0.03


@dataclass(frozen=True)
class Reload:
    """A model loaded afresh for each round (``load()`` returns it; it is released after the round)."""

    load: Callable[[], Any]


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max", "q1", "q3"}`` of per-round values."""
    q1, q3 = _quartiles(list(values))
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "q1": q1, "q3": q3}


def paired_ratio(ours: Sequence[float], base: Sequence[float]) -> dict[str, Any] | None:
    """Ratio of two models' per-round values, round by round (``None`` unless paired and positive).

    Returns ``{"ratio" (median of the per-round ratios), "min", "max", "q1", "q3", "rounds", "measurable"}``;
    ``measurable`` is False when the interquartile range of the per-round ratios overlaps 1.0 +- :data:`NOISE`.
    """
    if not ours or len(ours) != len(base) or min(base) <= 0:
        return None
    ratios = [a / b for a, b in zip(ours, base)]
    summary = spread(ratios)
    return {"ratio": summary.pop("median"), **summary, "rounds": len(ratios),
            "measurable": summary["q3"] < 1.0 - NOISE or summary["q1"] > 1.0 + NOISE}


Workloads = Mapping[Hashable, Callable[[], object]]


def run_rounds(sources: Mapping[str, Any], workloads: Callable[[str, Any], Workloads], rounds: int, *,
               warmup: Callable[[str, Any, Workloads], None] | None = None,
               around: Callable[[str, Hashable, int], ContextManager | None] | None = None,
               only: Callable[[Hashable, int], bool] | None = None, progress: bool = False,
               label: str = "timing") -> dict[str, dict[Hashable, list[float]]]:
    """Run ``rounds`` rounds over ``sources`` (name -> model or :class:`Reload`); per-round wall times.

    ``workloads(name, model)`` builds a model's workloads (called once per held model, once per load of a
    reloaded one); ``warmup(name, model, workloads)`` runs before its first timed round (default: each
    workload once); ``around(name, key, round)`` may wrap a timed run (e.g. an energy phase; it is
    outside the timer); ``only(key, round)`` skips a workload in a round. Returns
    ``{name: {key: [seconds per round it ran]}}``.
    """
    warmup = warmup or (lambda name, model, own: [fn() for fn in own.values()])
    times: dict[str, dict[Hashable, list[float]]] = {name: {} for name in sources}
    held = {name: source for name, source in sources.items() if not isinstance(source, Reload)}
    steps = tqdm(total=len(held) + rounds * len(sources), desc=label, unit="run", disable=not progress, leave=False)
    prepared = {}
    for name, model in held.items():
        steps.set_postfix_str(f"{name}, warm-up")
        prepared[name] = workloads(name, model)
        warmup(name, model, prepared[name])
        steps.update()
    for index in range(rounds):
        for name, source in sources.items():
            steps.set_postfix_str(f"{name}, round {index + 1}/{rounds}")
            model = source.load() if isinstance(source, Reload) else source
            own = prepared[name] if name in prepared else workloads(name, model)
            if isinstance(source, Reload):
                warmup(name, model, own)
            for key, fn in own.items():
                if only is not None and not only(key, index):
                    continue
                with (around(name, key, index) if around is not None else None) or nullcontext():
                    start = _clock()
                    fn()
                    seconds = _clock() - start
                times[name].setdefault(key, []).append(seconds)
            del model, own
            steps.update()
    steps.close()
    return times
