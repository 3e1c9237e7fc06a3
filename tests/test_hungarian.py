"""The in-graph Hungarian solver against scipy, and the padded criterion against the per-image one."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from mfport.core.presets import get_preset
from mfport.tf_maskformer.losses.hungarian import hungarian_assignment
from mfport.tf_maskformer.losses.maskformer_losses import MaskFormerLoss, pad_targets, scipy_assignment

solve_xla = tf.function(hungarian_assignment, jit_compile=True)


def _check_optimal(cost: np.ndarray, valid: np.ndarray, got: np.ndarray, exact: bool) -> None:
    for b in range(cost.shape[0]):
        rows = np.flatnonzero(valid[b])
        assert (got[b][~valid[b]] == -1).all()
        chosen = got[b][rows]
        assert len(set(chosen.tolist())) == rows.size and (chosen >= 0).all() and (chosen < cost.shape[2]).all()
        if rows.size == 0:
            continue
        scipy_rows, scipy_cols = linear_sum_assignment(cost[b][rows].astype(np.float64))
        best = cost[b][rows][scipy_rows, scipy_cols].astype(np.float64).sum()
        mine = cost[b][rows, chosen].astype(np.float64).sum()
        # Ties: another optimal assignment may differ by float32 rounding of the costs it sums (~1e-7 relative
        # each, tens of terms); a suboptimal one costs at least one cost gap more, orders of magnitude above.
        assert mine == pytest.approx(best, rel=1e-6, abs=1e-5)
        if exact:  # continuous random costs: the optimum is unique, so the assignment must be scipy's
            np.testing.assert_array_equal(chosen, scipy_cols)


@pytest.mark.parametrize("shape", [(4, 7, 7), (8, 20, 100), (3, 100, 100), (2, 1, 5)])
def test_random_costs_give_scipys_assignment(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    cost = rng.normal(size=shape).astype(np.float32) * rng.uniform(0.1, 100)
    valid = np.ones(shape[:2], bool)
    _check_optimal(cost, valid, solve_xla(cost, valid).numpy(), exact=True)


def test_padding_rows_and_zero_targets() -> None:
    rng = np.random.default_rng(1)
    cost = rng.uniform(size=(6, 30, 50)).astype(np.float32)
    counts = np.array([0, 1, 7, 30, 12, 0])
    valid = np.arange(30)[None] < counts[:, None]
    rng.shuffle(valid, axis=1)  # valid rows need not come first
    got = solve_xla(cost, valid).numpy()
    _check_optimal(cost, valid, got, exact=True)
    assert (got[0] == -1).all() and (got[5] == -1).all()


@pytest.mark.parametrize("kind", ["all_equal", "integer_ties", "duplicate_rows", "huge_range"])
def test_degenerate_costs_are_solved_optimally(kind: str) -> None:
    rng = np.random.default_rng(2)
    shape = (5, 12, 16)
    if kind == "all_equal":
        cost = np.full(shape, 3.0, np.float32)
    elif kind == "integer_ties":
        cost = rng.integers(0, 3, size=shape).astype(np.float32)
    elif kind == "duplicate_rows":
        cost = np.repeat(rng.normal(size=(5, 1, 16)), 12, axis=1).astype(np.float32)
    else:
        cost = (rng.normal(size=shape) * 10.0 ** rng.integers(-3, 4, size=shape)).astype(np.float32)
    valid = np.ones(shape[:2], bool)
    _check_optimal(cost, valid, solve_xla(cost, valid).numpy(), exact=kind == "huge_range")


def test_eager_equals_compiled_and_scipy_option() -> None:
    rng = np.random.default_rng(3)
    cost = rng.normal(size=(3, 9, 25)).astype(np.float32)
    valid = rng.uniform(size=(3, 9)) < 0.7
    eager = hungarian_assignment(tf.constant(cost), tf.constant(valid)).numpy()
    np.testing.assert_array_equal(eager, solve_xla(cost, valid).numpy())
    np.testing.assert_array_equal(eager, scipy_assignment(tf.constant(cost), tf.constant(valid)).numpy())


def _outputs_and_targets(seed: int, batch: int = 2, queries: int = 20, layers: int = 3, size: int = 16):
    rng = np.random.default_rng(seed)
    preset = get_preset("r50_ade20k").with_overrides(num_queries=queries)
    outputs = {"layer_logits": tf.constant(rng.normal(size=(layers, batch, queries, 151)).astype(np.float32) * 3),
               "layer_masks": tf.constant(rng.normal(size=(layers, batch, queries, size, size)).astype(np.float32) * 3)}
    targets = []
    for count in (3, 5)[:batch]:
        labels = rng.integers(0, 150, size=count)
        masks = (rng.uniform(size=(count, size * 4, size * 4)) < 0.3).astype(np.float32)
        targets.append({"labels": labels, "masks": masks})
    return preset, outputs, targets


def test_padded_criterion_is_invariant_to_padding_slots_and_solver() -> None:
    """Extra padding slots and the choice of solver change nothing; all-valid pixels equal no pixel mask."""
    preset, outputs, targets = _outputs_and_targets(4)
    tight = pad_targets(targets)
    wide = pad_targets(targets, max_targets=12)
    wide_with_pixels = dict(wide, pixel_valid=tf.ones(wide["masks"].shape[0:1] + wide["masks"].shape[2:], tf.bool))
    reference, _ = MaskFormerLoss(preset, "scipy")(outputs, tight)
    for loss, target in ((MaskFormerLoss(preset, "hungarian"), wide), (MaskFormerLoss(preset, "scipy"), wide),
                         (MaskFormerLoss(preset, "hungarian"), wide_with_pixels)):
        losses, _ = loss(outputs, target)
        assert losses.keys() == reference.keys()
        for key in reference:
            np.testing.assert_allclose(losses[key].numpy(), reference[key].numpy(), rtol=2e-6, err_msg=key)


def test_ignored_pixels_leave_the_mask_losses() -> None:
    """With pixel_valid, the losses equal those on the cropped valid region (computed by numpy here)."""
    preset, outputs, targets = _outputs_and_targets(5, batch=1)
    padded = pad_targets(targets)
    height = padded["masks"].shape[2]
    pixel_valid = np.zeros((1, height, height), bool)
    pixel_valid[:, : height // 2] = True
    loss = MaskFormerLoss(preset, "scipy")
    forced = [tf.constant([[0, 1, 2]], tf.int32)] * 3
    losses, _ = loss(outputs, dict(padded, pixel_valid=tf.constant(pixel_valid)), forced)
    # numpy: bilinear upsampling is the model's; recompute the focal/dice sums over the top half only.
    logits = outputs["layer_logits"][-1].numpy()
    masks = tf.image.resize(tf.transpose(outputs["layer_masks"][-1][0], [1, 2, 0]), (height, height)).numpy()
    prob = 1 / (1 + np.exp(-masks[: height // 2].reshape(-1, masks.shape[-1]).T.astype(np.float64)))
    tgt = padded["masks"].numpy()[0, :, : height // 2].reshape(3, -1).astype(np.float64)
    dice = 1 - (2 * (prob[:3] * tgt).sum(-1) + 1) / (prob[:3].sum(-1) + tgt.sum(-1) + 1)
    np.testing.assert_allclose(losses["loss_dice"].numpy(), dice.sum() / 3, rtol=1e-5)
    log_p = np.log(np.clip(prob[:3], 1e-30, None))
    log_q = np.log(np.clip(1 - prob[:3], 1e-30, None))
    focal = -(0.25 * tgt * (1 - prob[:3]) ** 2 * log_p + 0.75 * (1 - tgt) * prob[:3] ** 2 * log_q)
    np.testing.assert_allclose(losses["loss_mask"].numpy(), focal.mean(-1).sum() / 3, rtol=1e-4)
    assert logits.shape[-1] == preset.num_classes + 1


@pytest.mark.heavy
def test_criterion_gradient_is_one_concatenation_of_the_layers() -> None:
    """The gradient w.r.t. the stacked [L, B, Q, h, w] outputs is one concatenation of the layers' gradients
    under XLA, not a zero-padded copy of the whole stack per layer, added up (what indexing the stack per
    layer gives: ~0.3 s of a 512x512 train step on this CPU); and it equals the eager gradient."""
    preset, outputs, targets = _outputs_and_targets(6)
    padded, loss = pad_targets(targets), MaskFormerLoss(preset)

    def gradients(logits: tf.Tensor, masks: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch([logits, masks])
            losses, _ = loss({"layer_logits": logits, "layer_masks": masks}, padded)
            total = loss.weighted_total(losses)
        return tape.gradient(total, [logits, masks])

    compiled = tf.function(gradients, jit_compile=True)
    args = (outputs["layer_logits"], outputs["layer_masks"])
    hlo = compiled.experimental_get_compiler_ir(*args)(stage="hlo")
    stack = "f32[{}]".format(",".join(map(str, outputs["layer_masks"].shape)))
    assert not [line for line in hlo.splitlines() if f"= {stack}" in line and " pad(" in line]
    assert any(f"= {stack}" in line and " concatenate(" in line for line in hlo.splitlines())
    for xla, eager in zip(compiled(*args), gradients(*args), strict=True):
        np.testing.assert_allclose(xla.numpy(), eager.numpy(), rtol=1e-5, atol=1e-7)
