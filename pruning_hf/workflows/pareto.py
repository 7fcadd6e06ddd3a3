"""Choosing a sweep point: pruning levels, budgets (``ppl_increase<=10%``), Pareto fronts, the recommendation."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..evaluation.tasks import TASK_SUFFIX

__all__ = ["SweepError", "parse_levels", "Constraint", "Budget", "pareto_front", "recommend", "OBJECTIVES",
           "format_metric"]

#: objective -> the metric it minimises
OBJECTIVES = {"smallest": "params_nonzero", "fastest": "prefill_ms", "lowest-energy": "energy_wh_per_1k_tokens"}
_ALIASES = {"ppl": "perplexity"}
_FRACTIONS = {"ppl_increase", "sparsity", "size_ratio"}


class SweepError(ValueError):
    """A sweep cannot run as asked (bad levels, budget, or an output folder holding another sweep)."""


def parse_levels(text: str | Sequence[float]) -> list[float]:
    """``"0.1,0.2,...,0.7"`` -> ``[0.1, ..., 0.7]`` (``...`` continues the step of the two before it)."""
    if not isinstance(text, str):
        return [float(v) for v in text]
    items = [item.strip() for item in text.split(",") if item.strip()]
    levels: list[float] = []
    for index, item in enumerate(items):
        if item != "...":
            try:
                levels.append(float(item))
            except ValueError:
                raise SweepError(f"sparsity level {item!r} is not a number (give e.g. 0.1,0.2,...,0.7)") from None
            continue
        if len(levels) < 2 or index + 1 >= len(items) or items[index + 1] == "...":
            raise SweepError(f"'...' in {text!r} needs two levels before it and one after it")
        step, stop = levels[-1] - levels[-2], float(items[index + 1])
        if step <= 0:
            raise SweepError(f"'...' in {text!r} needs increasing levels before it")
        count = int(math.floor((stop - levels[-1]) / step + 1e-9))
        levels += [round(levels[-1] + step * (i + 1), 10) for i in range(count - 1)]
    return levels


@dataclass
class Constraint:
    metric: str
    op: str
    value: float
    relative: bool  # value is a multiple of the dense model's metric ("0.9x")
    text: str

    def threshold(self, dense: dict) -> float:
        return self.value * dense[self.metric] if self.relative else self.value

    def _measured(self, row: dict, dense: dict) -> tuple[float | None, float]:
        """(value, limit); a relative speed term uses the point's ratio from rounds paired with the dense model
        (``METRIC_vs_dense``), 1.0 when that ratio is no measurable difference."""
        paired = row.get(f"{self.metric}_vs_dense")
        if self.relative and paired:
            return (paired["ratio"] if paired["measurable"] else 1.0), self.value
        return row.get(self.metric), self.threshold(dense)

    def holds(self, row: dict, dense: dict) -> bool:
        measured, limit = self._measured(row, dense)
        if measured is None:
            return False
        return {"<=": measured <= limit, "<": measured < limit, ">=": measured >= limit, ">": measured > limit}[self.op]

    def violation(self, row: dict, dense: dict) -> float:
        """How far outside (relative to the limit); 0 when it holds."""
        measured, limit = self._measured(row, dense)
        measured = math.inf if measured is None else measured
        gap = measured - limit if self.op.startswith("<") else limit - measured
        return max(gap, 0.0) / max(abs(limit), 1e-12)


_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*(%|x)?\s*$")


@dataclass
class Budget:
    """Constraints a recommended point must meet, e.g. ``"ppl_increase<=10%, decode_tokens_per_s>=0.9x"``.

    ``%`` divides by 100 (for fractions such as ``ppl_increase``); ``x`` is relative to the dense model.
    """

    constraints: list[Constraint] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None, measured: Iterable[str]) -> "Budget":
        measured = list(measured)
        constraints = []
        for part in (text or "").split(","):
            if not part.strip():
                continue
            match = _CONSTRAINT.match(part)
            if not match:
                raise SweepError(f"budget term {part.strip()!r} is not METRIC<=VALUE (ops <=, <, >=, >; "
                                 "suffix % or x), e.g. 'ppl_increase<=10%'")
            metric, op, number, suffix = match.groups()
            metric = _ALIASES.get(metric, metric)
            if metric not in measured:
                raise SweepError(f"budget metric {metric!r} is not measured by this sweep; measured: "
                                 f"{', '.join(measured)}")
            value = float(number) / 100 if suffix == "%" else float(number)
            if suffix == "%" and metric not in _FRACTIONS and not metric.endswith(TASK_SUFFIX):
                raise SweepError(f"budget term {part.strip()!r}: % applies to fractions "
                                 f"({', '.join(sorted(_FRACTIONS))}, task accuracies *{TASK_SUFFIX})")
            constraints.append(Constraint(metric, op, value, suffix == "x", part.strip()))
        return cls(constraints)

    def __str__(self) -> str:
        return ", ".join(c.text for c in self.constraints) or "no budget"


def pareto_front(rows: Sequence[dict], x: str, y: str = "perplexity") -> list[dict]:
    """Rows not dominated in (``x``, ``y``), both lower-is-better, sorted by ``x``."""
    usable = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    front = [r for r in usable
             if not any(o[x] <= r[x] and o[y] <= r[y] and (o[x] < r[x] or o[y] < r[y]) for o in usable)]
    return sorted(front, key=lambda r: (r[x], r[y]))


def format_metric(metric: str, value: Any) -> str:
    if value is None:
        return "-"
    if metric in _FRACTIONS or metric.endswith(TASK_SUFFIX):
        return f"{value:+.1%}" if metric == "ppl_increase" else f"{value:.1%}"
    return f"{value:.4g}"


def recommend(rows: list[dict], dense: dict, budget: Budget, objective: str) -> dict | None:
    metric = OBJECTIVES[objective]
    for row in rows:
        row["within_budget"] = all(c.holds(row, dense) for c in budget.constraints)
    ok = [r for r in rows if r["within_budget"] and r.get(metric) is not None]
    if not rows:
        return None
    if not ok:
        closest = min(rows, key=lambda r: sum(c.violation(r, dense) for c in budget.constraints))
        measured = ", ".join(f"{c.metric} {format_metric(c.metric, closest.get(c.metric))}" for c in budget.constraints)
        return {"key": None, "label": None, "reason": (
            f"no point meets the budget ({budget}); the closest is {closest['label']} ({measured}). "
            "Relax the budget or add lower sparsity levels.")}
    best = min(ok, key=lambda r: (r[metric], r["perplexity"]))
    ratio = best[metric] / dense[metric] if dense.get(metric) else None
    held = ", ".join(f"{c.metric} {format_metric(c.metric, best.get(c.metric))}" for c in budget.constraints)
    among = f"the only one of {len(rows)} points" if len(ok) == 1 else \
        f"the {objective} of the {len(ok)} of {len(rows)} points"
    reason = (f"{best['label']} ({best['pattern']}) is {among} within budget ({budget}): {metric} {best[metric]:.4g}"
              + (f" = {ratio:.1%} of dense" if ratio is not None else "")
              + (f"; {held}" if held else "") + f"; perplexity {best['perplexity']:.3f} vs dense "
              f"{dense['perplexity']:.3f}.")
    if len([r for r in ok if r[metric] == best[metric]]) > 1:
        reason += " Ties on the objective are broken by the lower perplexity."
    return {"key": best["key"], "label": best["label"], "reason": reason}
