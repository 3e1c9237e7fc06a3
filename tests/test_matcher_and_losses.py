"""Hungarian matcher and set criterion against brute force and hand-written numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from numpy_reference import (
    bilinear_resize,
    dice,
    focal_pixelwise,
    nearest_resize,
    pair_cost,
    softmax,
)

from mfport.core.presets import PRESETS
from mfport.torch_reference.criterion import SetCriterion
from mfport.torch_reference.matcher import HungarianMatcher


def _random_case(rng: np.random.Generator, queries: int, targets: int, classes: int = 6,
                 pred_hw: tuple[int, int] = (6, 7), tgt_hw: tuple[int, int] = (23, 29)):
    logits = rng.normal(0, 2, size=(queries, classes + 1)).astype(np.float32)
    masks = rng.normal(0, 3, size=(queries, *pred_hw)).astype(np.float32)
    labels = rng.integers(0, classes, size=targets)
    tgt_masks = (rng.random((targets, *tgt_hw)) < rng.uniform(0.2, 0.6, size=(targets, 1, 1))).astype(np.float32)
    return logits, masks, labels, tgt_masks


def _brute_force_min(cost: np.ndarray) -> float:
    queries, targets = cost.shape
    return min(sum(cost[q, j] for j, q in enumerate(perm))
               for perm in itertools.permutations(range(queries), targets))


@pytest.mark.parametrize("seed, queries, targets", [(0, 5, 3), (1, 6, 4), (2, 4, 4), (3, 7, 2), (4, 5, 1)])
def test_matcher_is_optimal_and_its_costs_match_numpy(seed, queries, targets):
    rng = np.random.default_rng(seed)
    logits, masks, labels, tgt_masks = _random_case(rng, queries, targets)
    outputs = {"pred_logits": torch.from_numpy(logits)[None], "pred_masks": torch.from_numpy(masks)[None]}
    target = [{"labels": torch.from_numpy(labels), "masks": torch.from_numpy(tgt_masks)}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)

    expected_cost = pair_cost(logits.astype(np.float64), masks.astype(np.float64), labels, tgt_masks)
    cost = matcher.cost_matrices(outputs, target)[0].numpy()
    np.testing.assert_allclose(cost, expected_cost, rtol=1e-5, atol=1e-5)

    (rows, cols), = matcher(outputs, target)
    assert len(rows) == targets and sorted(cols.tolist()) == list(range(targets))
    assert len(set(rows.tolist())) == targets
    achieved = expected_cost[rows.numpy(), cols.numpy()].sum()
    assert achieved == pytest.approx(_brute_force_min(expected_cost), abs=1e-9)


def _criterion_case(seed: int):
    rng = np.random.default_rng(seed)
    preset = PRESETS["r50_ade20k"].with_overrides(num_classes=5, dec_layers=3, num_queries=6)
    batch, queries, classes = 2, 6, 5
    logits = rng.normal(0, 2, size=(3, batch, queries, classes + 1)).astype(np.float32)  # 2 aux + final
    masks = rng.normal(0, 3, size=(3, batch, queries, 8, 10)).astype(np.float32)
    targets = []
    for n in (3, 2):
        labels = rng.integers(0, classes, size=n)
        tgt = (rng.random((n, 32, 40)) < 0.4).astype(np.float32)
        targets.append((labels, tgt))
    return preset, logits, masks, targets


def _numpy_layer_losses(logits, masks, targets, indices, num_masks, num_classes, no_object_weight=0.1):
    """CE with class weights (weighted mean), focal (mean over pixels) and dice, summed / num_masks."""
    weights = np.ones(num_classes + 1)
    weights[-1] = no_object_weight
    ce_num = ce_den = 0.0
    focal_sum = dice_sum = 0.0
    for b, (labels, tgt) in enumerate(targets):
        src, tgt_idx = indices[b]
        target_classes = np.full(logits.shape[1], num_classes)
        target_classes[src] = labels[tgt_idx]
        logp = np.log(softmax(logits[b].astype(np.float64)))
        for q, c in enumerate(target_classes):
            ce_num += -weights[c] * logp[q, c]
            ce_den += weights[c]
        for q, j in zip(src, tgt_idx, strict=True):
            upsampled = bilinear_resize(masks[b, q].astype(np.float64), *tgt.shape[-2:])
            focal_sum += focal_pixelwise(upsampled, tgt[j]).mean()
            dice_sum += dice(upsampled, tgt[j])
    return ce_num / ce_den, focal_sum / num_masks, dice_sum / num_masks


def test_each_loss_term_equals_numpy_for_final_and_aux_layers():
    preset, logits, masks, targets = _criterion_case(7)
    criterion = SetCriterion(preset)
    outputs = {"pred_logits": torch.from_numpy(logits[-1]), "pred_masks": torch.from_numpy(masks[-1]),
               "aux_outputs": [{"pred_logits": torch.from_numpy(logits[i]), "pred_masks": torch.from_numpy(masks[i])}
                               for i in range(2)]}
    torch_targets = [{"labels": torch.from_numpy(lab), "masks": torch.from_numpy(tgt)} for lab, tgt in targets]
    losses = criterion(outputs, torch_targets)
    assert set(losses) == {f"{n}{s}" for n in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}

    num_masks = 5.0
    for layer, suffix in [(2, ""), (0, "_0"), (1, "_1")]:
        # Indices from an independent numpy matcher: brute-force minimum of the numpy cost.
        indices = []
        for b, (labels, tgt) in enumerate(targets):
            cost = pair_cost(logits[layer, b].astype(np.float64), masks[layer, b].astype(np.float64), labels, tgt)
            queries, n = cost.shape
            best = min(itertools.permutations(range(queries), n),
                       key=lambda perm: sum(cost[q, j] for j, q in enumerate(perm)))
            pairs = sorted(zip(best, range(n), strict=True))
            indices.append((np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])))
        ce, focal, dice_value = _numpy_layer_losses(logits[layer], masks[layer], targets, indices, num_masks,
                                                    preset.num_classes)
        # TF in float32 against numpy in float64: a mean over a few thousand float32 terms, ~1e-7 relative
        # rounding each; 1e-5 leaves a 100x margin and still catches a wrong weight or normaliser (>= 1e-2).
        assert float(losses[f"loss_ce{suffix}"]) == pytest.approx(ce, rel=1e-5)
        assert float(losses[f"loss_mask{suffix}"]) == pytest.approx(focal, rel=1e-5)
        assert float(losses[f"loss_dice{suffix}"]) == pytest.approx(dice_value, rel=1e-5)

    weighted = criterion.weighted(losses)
    assert float(weighted["loss_mask_1"]) == pytest.approx(20.0 * float(losses["loss_mask_1"]))
    assert float(weighted["loss_ce"]) == pytest.approx(float(losses["loss_ce"]))


def test_num_masks_is_at_least_one_and_averaged_over_replicas():
    empty = [{"labels": torch.zeros(0, dtype=torch.int64)}]
    assert SetCriterion.num_masks(empty) == 1.0
    targets = [{"labels": torch.zeros(3, dtype=torch.int64)}, {"labels": torch.zeros(5, dtype=torch.int64)}]
    assert SetCriterion.num_masks(targets) == 8.0
    assert SetCriterion.num_masks(targets, world_size=4) == 2.0


def test_matcher_resizes_targets_with_nearest():
    # 12 -> 5 columns: nearest keeps source columns floor(k * 12 / 5) = 0, 2, 4, 7, 9. A one-pixel
    # stripe in column 2 survives whole; one in column 3 vanishes (bilinear would keep a trace of both).
    logits = np.zeros((1, 3), np.float32)
    masks = np.full((1, 5, 5), 4.0, np.float32)
    outputs = {"pred_logits": torch.from_numpy(logits)[None], "pred_masks": torch.from_numpy(masks)[None]}
    for column, kept in [(2, 5.0), (3, 0.0)]:
        tgt = np.zeros((1, 12, 12), np.float32)
        tgt[0, :, column] = 1.0
        assert nearest_resize(tgt, 5, 5).sum() == kept
        target = [{"labels": torch.tensor([0]), "masks": torch.from_numpy(tgt)}]
        cost = HungarianMatcher().cost_matrices(outputs, target)
        np.testing.assert_allclose(cost[0].numpy(), pair_cost(logits, masks, np.array([0]), tgt), rtol=1e-5)
