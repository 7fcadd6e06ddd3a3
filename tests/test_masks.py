"""Pure mask functions: exact counts, N:M validity, global thresholds, pattern parsing."""

import pytest
import torch

from pruning_hf.sparsity.masks import (check_nm, global_threshold, mask_from_scores, nm_mask, num_to_prune, parse_pattern,
                              topk_mask, zero_pruned_)


@pytest.fixture
def scores():
    return torch.rand(16, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73])
def test_topk_mask_prunes_exact_count_per_tensor(scores, sparsity):
    keep = topk_mask(scores, sparsity)
    assert (~keep).sum().item() == num_to_prune(scores.numel(), sparsity)
    # every pruned score is <= every kept score
    if (~keep).any() and keep.any():
        assert scores[~keep].max() <= scores[keep].min()


def test_topk_mask_per_row_prunes_same_count_in_every_row(scores):
    keep = topk_mask(scores, 0.5, dim=-1)
    assert ((~keep).sum(dim=1) == 32).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_keeps_n_best_of_every_group(scores, n, m):
    keep = nm_mask(scores, n, m)
    groups = keep.reshape(16, -1, m)
    assert (groups.sum(-1) == n).all()
    kept_min = torch.where(groups, scores.reshape(16, -1, m), torch.inf).amin(-1)
    pruned_max = torch.where(~groups, scores.reshape(16, -1, m), -torch.inf).amax(-1)
    assert (pruned_max <= kept_min).all()
    assert check_nm(scores * keep, n, m)


def test_nm_mask_rejects_width_not_multiple_of_m():
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.rand(4, 10), 2, 4)


def test_check_nm_detects_violation():
    weight = torch.ones(2, 8)
    assert not check_nm(weight, 2, 4)
    weight[:, [0, 1, 4, 5]] = 0
    assert check_nm(weight, 2, 4)


def test_global_threshold_equals_kth_value_of_union():
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.rand(10, 30, generator=gen), torch.rand(7, 11, generator=gen) * 3, torch.rand(50, generator=gen)]
    flat = torch.cat([t.reshape(-1) for t in tensors])
    k = num_to_prune(flat.numel(), 0.4)
    threshold = global_threshold(tensors, 0.4)
    assert threshold == torch.kthvalue(flat, k).values.item()
    assert int((flat <= threshold).sum()) == k


def test_mask_from_scores_dispatches_on_pattern(scores):
    assert check_nm(scores * mask_from_scores(scores, 0.5, parse_pattern("2:4")), 2, 4)
    assert ((~mask_from_scores(scores, 0.25, parse_pattern("unstructured"), per_row=True)).sum(1) == 16).all()


@pytest.mark.parametrize("text,message", [
    ("3:2", "1 <= N < M"), ("4:4", "1 <= N < M"), ("0:4", "1 <= N < M"), ("2:4:8", "not a sparsity pattern"),
    ("half", "not a sparsity pattern"), ("", "not a sparsity pattern"),
])
def test_parse_pattern_errors_name_the_value(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_pattern(text)
    assert repr(text) in str(info.value)


def test_parse_pattern_values():
    assert parse_pattern("2:4").implied_sparsity == 0.5
    assert str(parse_pattern(" 4 : 8 ")) == "4:8"
    assert parse_pattern("Unstructured").implied_sparsity is None


def test_zero_pruned_matches_masked_fill_and_leaves_no_negative_zeros(scores):
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    keep = topk_mask(scores, 0.5, dim=-1)
    expected = weight.clone().masked_fill_(~keep, 0.0)
    result = zero_pruned_(weight, keep)
    assert result is weight  # in place
    assert torch.equal(result, expected)
    assert not (torch.signbit(result) & (result == 0)).any()  # pruned negatives are +0.0, as masked_fill gives
