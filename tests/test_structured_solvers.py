"""Pure maths of structured reconstruction (pruning_hf.sparsity.reconstruction) on small random problems."""

from __future__ import annotations

import itertools

import pytest
import torch

from pruning_hf.sparsity.hessian import HessianError, dampened_cholesky
from pruning_hf.sparsity.reconstruction import (ObsSelection, allocate_by_error, augment_with_ones, error_curve,
                                                linear_replacement, normalised_target, obs_select_units,
                                                refit_output, relative_output_error, removal_schedule, unit_errors)


def problem(tokens=400, n=24, out=10, seed=0):
    """Correlated inputs with a non-zero mean, a weight, and H = X^T X."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n, generator=g) @ torch.randn(n, n, generator=g) * 0.3 + torch.randn(n, generator=g)
    w = torch.randn(out, n, generator=g)
    return x, w, x.t() @ x


def output_error(x, w, keep, new_w):
    return float((x @ w.t() - x[:, keep] @ new_w.t()).square().sum())


def test_refit_beats_cutting_and_equals_lstsq():
    x, w, h = problem()
    keep = torch.tensor([0, 2, 3, 5, 7, 11, 13, 17, 19, 23])
    refit = refit_output(w, h, keep, dampening=0.0)
    direct = torch.linalg.lstsq(x[:, keep].double(), (x @ w.t()).double()).solution.t().float()
    torch.testing.assert_close(refit, direct, rtol=1e-4, atol=1e-4)
    assert output_error(x, w, keep, refit) < 0.6 * output_error(x, w, keep, w[:, keep])
    # the relative error the method reports is the same quantity, divided by the dense output's energy
    energy = float((x @ w.t()).square().sum())
    assert relative_output_error(w, refit, keep, h) == pytest.approx(output_error(x, w, keep, refit) / energy,
                                                                     rel=1e-3)
    # dampening: a ridge towards the kept weights, between the cut and the plain least squares
    ridge = refit_output(w, h, keep, dampening=0.1)
    assert output_error(x, w, keep, refit) < output_error(x, w, keep, ridge) < output_error(x, w, keep, w[:, keep])
    assert (ridge - w[:, keep]).norm() < (refit - w[:, keep]).norm()


def test_refit_keeps_everything_unchanged_and_handles_dead_inputs():
    x, w, h = problem()
    torch.testing.assert_close(refit_output(w, h, torch.arange(24), dampening=0.01), w, rtol=1e-4, atol=1e-4)
    h[3, :] = h[:, 3] = 0.0  # an input that is always zero
    out = refit_output(w, h, torch.tensor([0, 1, 3, 4]), dampening=0.0)
    assert torch.isfinite(out).all()


def test_refit_with_bias_column_fits_the_mean():
    """A bias as an always-kept column of ones: the fitted output has the dense output's mean."""
    x, w, h = problem()
    b = torch.randn(10)
    aug_h = augment_with_ones(h, x.sum(0), x.shape[0])
    keep = torch.tensor([1, 4, 6, 9, 24])  # 24: the ones column
    fitted = refit_output(torch.cat([w, b[:, None]], 1), aug_h, keep, dampening=0.0)
    new = x[:, keep[:-1]] @ fitted[:, :-1].t() + fitted[:, -1]
    torch.testing.assert_close(new.mean(0), (x @ w.t() + b).mean(0), rtol=1e-4, atol=1e-3)


def test_cholesky_retries_with_more_dampening():
    h = -torch.eye(4)  # negative definite: only a large enough dampening makes it positive
    h.diagonal().copy_(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    lower = dampened_cholesky(h, 0.01, retries=6)
    added = (lower @ lower.t() - h).diagonal()  # λ on every diagonal entry, at least what makes H positive
    assert torch.isfinite(lower).all() and torch.allclose(added, added[0].expand(4)) and added[0] > 1.0
    with pytest.raises(HessianError):
        dampened_cholesky(h, 0.01, retries=1)


def test_obs_picks_the_provably_cheapest_units():
    """Independent inputs (diagonal H): removing unit u costs exactly ||W_u||^2 H_uu and nothing can be
    compensated, so OBS must remove the units with the smallest such cost; with duplicated inputs a unit
    whose input is a copy of another's is free to remove (the copy takes over its weight)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 8, generator=g)
    h = torch.diag(torch.rand(8, generator=g) + 0.5)
    cost = (w.square().sum(0) * h.diagonal())
    sel = obs_select_units(w, h, block=1, remove=3, steps=3, dampening=0.0)
    assert sorted(sel.order.tolist()) == sorted(cost.argsort()[:3].tolist())
    assert sel.errors[-1] == pytest.approx(float(cost.sort().values[:3].sum()), rel=1e-4)
    # inputs 0 and 5 identical (x5 = x0), and unit 0 has by far the largest weight: still the free one
    x = torch.randn(200, 8, generator=g)
    x[:, 5] = x[:, 0]
    w2 = torch.randn(6, 8, generator=g)
    w2[:, 0] *= 50
    sel = obs_select_units(w2, x.t() @ x, block=1, remove=1, steps=1, dampening=1e-6)
    assert sel.order.tolist()[0] in (0, 5) and sel.errors[-1] < 1e-2 * float(w2.square().sum())


def test_obs_groups_are_removed_whole_and_match_brute_force():
    x, w, h = problem(n=12, out=6, seed=1)
    block, units = 3, 4
    sel = obs_select_units(w, h, block=block, remove=2, steps=2, dampening=0.0)
    assert len(sel.keep) == 2
    kept_cols = (sel.keep[:, None] * block + torch.arange(block)).reshape(-1)
    assert torch.all(sel.weight[:, [c for c in range(12) if c not in kept_cols.tolist()]] == 0)
    # greedy with an update between steps; compare with the best pair found by brute force
    best = min(itertools.combinations(range(units), 2),
               key=lambda keep: output_error(x, w, cols := (torch.tensor(keep)[:, None] * block
                                                           + torch.arange(block)).reshape(-1),
                                             refit_output(w, h, cols, 0.0)))
    chosen = output_error(x, w, kept_cols, refit_output(w, h, kept_cols, 0.0))
    best_cols = (torch.tensor(best)[:, None] * block + torch.arange(block)).reshape(-1)
    assert chosen <= 1.05 * output_error(x, w, best_cols, refit_output(w, h, best_cols, 0.0))
    # the OBS-updated weight is the least-squares re-fit of the kept columns; its cumulative error is the real one
    torch.testing.assert_close(sel.weight[:, kept_cols], refit_output(w, h, kept_cols, 0.0), rtol=1e-3, atol=1e-3)
    assert float(sel.errors[-1]) == pytest.approx(chosen, rel=1e-3)


def test_unit_errors_block_matches_trace_formula():
    x, w, h = problem(n=12, out=5, seed=2)
    hinv = torch.linalg.inv(h)
    errors = unit_errors(w, hinv, 4)
    for u in range(3):
        cols = slice(4 * u, 4 * u + 4)
        expected = torch.trace(w[:, cols] @ torch.linalg.inv(hinv[cols, cols]) @ w[:, cols].t())
        assert float(errors[u]) == pytest.approx(float(expected), rel=1e-4)


def test_removal_schedule_and_error_curve():
    assert removal_schedule(10, 4) == [3, 3, 2, 2]
    assert removal_schedule(3, 32) == [1, 1, 1]
    assert removal_schedule(0, 5) == []
    # steps of 2 then 1 units with cumulative errors 0, 4, 10: linear in between
    selection = ObsSelection(torch.tensor([0]), torch.tensor([1, 2, 3]), torch.tensor([0.0, 4.0, 10.0]), [2, 1],
                             torch.zeros(1))
    assert error_curve(selection, 3).tolist() == [0.0, 2.0, 4.0, 10.0]


def test_linear_replacement_recovers_a_linear_map():
    g = torch.Generator().manual_seed(4)
    m = torch.randn(500, 8, generator=g)
    true = torch.randn(8, 8, generator=g)
    r = m @ true + 0.01 * torch.randn(500, 8, generator=g)
    t = linear_replacement(m.t() @ m, m.t() @ r, dampening=0.0)
    torch.testing.assert_close(t, true, rtol=0.02, atol=0.02)
    # heavy ridge: pulled towards the identity (the layer left as it was)
    strong = linear_replacement(m.t() @ m, m.t() @ r, dampening=1e4)
    assert (strong - torch.eye(8)).norm() < 0.01 * (true - torch.eye(8)).norm()


def test_normalised_target_points_along_the_wanted_write_at_the_current_scale():
    """Behind an RMS norm ``g * n(z)``, the target z' gives exactly the direction of the wanted write R."""
    g = torch.Generator().manual_seed(5)
    z, residual, gain = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.rand(8, generator=g) + 0.5
    target = normalised_target(z, residual, gain, eps=0.0)

    def rms(v):
        return v.square().mean(-1, keepdim=True).sqrt()

    torch.testing.assert_close(rms(target), rms(z))
    written = gain * target / rms(target)
    torch.testing.assert_close(written / written.norm(dim=-1, keepdim=True),
                               residual / residual.norm(dim=-1, keepdim=True))


def test_allocate_by_error_takes_cheapest_marginals_and_respects_caps():
    cheap = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])  # 4 removable units, 0.1 each
    dear = torch.tensor([0.0, 1.0, 2.0])  # 2 removable, 1.0 each
    convex = torch.tensor([0.0, 0.05, 0.5, 5.0])  # first unit cheap, then dear
    assert allocate_by_error([cheap, dear, convex], 5) == [4, 0, 1]
    assert allocate_by_error([cheap, dear, convex], 100) == [4, 2, 3]  # capped by each layer's floor
    assert allocate_by_error([torch.zeros(1), cheap], 2) == [0, 2]  # a layer at its floor loses nothing
    # a non-convex curve: its later, cheaper step is not taken before the dear one that precedes it
    bumpy = torch.tensor([0.0, 1.0, 1.01])
    assert allocate_by_error([bumpy, torch.tensor([0.0, 0.5, 1.0])], 2) == [0, 2]


def _explicit_obs(w, h, block, remove, steps):
    """Reference grouped OBS with the whole inverse Hessian updated after every step."""
    w, hinv = w.clone().double(), torch.linalg.inv(h.double())
    units = w.shape[1] // block
    cols = torch.arange(units * block).view(units, block)
    alive, order, errors = torch.ones(units, dtype=torch.bool), [], [0.0]
    for count in removal_schedule(remove, steps):
        cost = unit_errors(w, hinv, block).masked_fill(~alive, float("inf"))
        chosen = torch.topk(cost, count, largest=False).indices
        s = cols[chosen].reshape(-1)
        inv_ss = torch.linalg.inv(hinv[s][:, s])
        errors.append(errors[-1] + float(((w[:, s] @ inv_ss) * w[:, s]).sum()))
        w -= w[:, s] @ inv_ss @ hinv[s]
        hinv -= hinv[:, s] @ inv_ss @ hinv[s]
        w[:, s] = 0.0
        alive[chosen] = False
        order.append(chosen)
    return torch.cat(order), torch.tensor(errors, dtype=torch.float64), w


@pytest.mark.parametrize("block,remove,steps", [(1, 14, 14), (1, 14, 4), (3, 5, 5), (3, 5, 2)])
def test_lazy_inverse_hessian_updates_match_explicit_obs(block, remove, steps):
    """The lazily updated inverse Hessian (Hinv_0 - V^T V) chooses the same units, in the same order, with the
    same cumulative errors and final weight as updating the whole inverse after every step."""
    x, w, h = problem(n=24, out=7, seed=5)
    selection = obs_select_units(w, h, block=block, remove=remove, steps=steps, dampening=0.0)
    order, errors, weight = _explicit_obs(w, h, block, remove, steps)
    assert selection.order.tolist() == order.tolist()
    torch.testing.assert_close(selection.errors.double(), errors, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(selection.weight.double(), weight, rtol=1e-3, atol=1e-4)


def test_obs_rejects_impossible_removals_naming_the_shapes():
    _, w, h = problem(n=12, out=5, seed=6)
    with pytest.raises(ValueError, match="cannot remove 4 of 4 units of 3 columns from a weight of 12 columns"):
        obs_select_units(w, h, block=3, remove=4)
    with pytest.raises(ValueError, match="units of 5 columns from a weight of 12 columns"):
        obs_select_units(w, h, block=5, remove=1)
