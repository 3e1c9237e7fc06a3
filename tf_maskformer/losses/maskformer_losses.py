"""MaskFormer's Hungarian matcher and set criterion in TensorFlow (../shared/reference/MASKFORMER.md).

Matching: cost = class_weight * (-softmax prob of the target class) + mask_weight * sigmoid-focal cost
+ dice_weight * dice cost, with targets NEAREST-resized to the prediction's size; solved optimally by
scipy's linear_sum_assignment on the host (the CPU/GPU option; an in-graph solver is the TPU path).
Losses: CE over all queries with "no object" (the LAST class) weighted by no_object_weight (weighted
mean); focal and dice on matched pairs with predictions bilinearly upsampled to the padded target size,
summed over masks and divided by num_masks; for the final output and every aux layer.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from tf_maskformer.modeling.layers import bilinear_resize, nearest_resize_like_torch
from torch_reference.presets import MaskFormerPreset

Targets = list[dict[str, tf.Tensor]]  # per image: labels int [N], masks float [N, H, W] (padded size)
Indices = list[tuple[np.ndarray, np.ndarray]]


def pairwise_focal_cost(logits: tf.Tensor, targets: tf.Tensor, alpha: float, gamma: float) -> tf.Tensor:
    """[Q, P] mask logits x [N, P] binary targets -> [Q, N] sigmoid-focal loss averaged over pixels."""
    prob = tf.sigmoid(logits)
    focal_pos = (1 - prob) ** gamma * tf.nn.sigmoid_cross_entropy_with_logits(tf.ones_like(logits), logits)
    focal_neg = prob**gamma * tf.nn.sigmoid_cross_entropy_with_logits(tf.zeros_like(logits), logits)
    if alpha >= 0:
        focal_pos, focal_neg = focal_pos * alpha, focal_neg * (1 - alpha)
    cost = tf.matmul(focal_pos, targets, transpose_b=True) + tf.matmul(focal_neg, 1 - targets, transpose_b=True)
    return cost / tf.cast(tf.shape(logits)[1], logits.dtype)


def pairwise_dice_cost(logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    prob = tf.sigmoid(logits)
    numerator = 2 * tf.matmul(prob, targets, transpose_b=True)
    denominator = tf.reduce_sum(prob, -1)[:, None] + tf.reduce_sum(targets, -1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_focal_loss(logits: tf.Tensor, targets: tf.Tensor, num_masks: float, alpha: float, gamma: float
                       ) -> tf.Tensor:
    prob = tf.sigmoid(logits)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(targets, logits)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return tf.reduce_sum(tf.reduce_mean(loss, axis=1)) / num_masks


def dice_loss(logits: tf.Tensor, targets: tf.Tensor, num_masks: float) -> tf.Tensor:
    prob = tf.sigmoid(logits)
    numerator = 2 * tf.reduce_sum(prob * targets, -1)
    denominator = tf.reduce_sum(prob, -1) + tf.reduce_sum(targets, -1)
    return tf.reduce_sum(1 - (numerator + 1) / (denominator + 1)) / num_masks


class SetCriterion:
    def __init__(self, preset: MaskFormerPreset) -> None:
        self.preset = preset
        weight = np.ones(preset.num_classes + 1, np.float32)
        weight[-1] = preset.no_object_weight
        self.class_weights = tf.constant(weight)

    def cost_matrices(self, logits: tf.Tensor, masks: tf.Tensor, targets: Targets) -> list[tf.Tensor]:
        p = self.preset
        costs = []
        for b, target in enumerate(targets):
            prob = tf.nn.softmax(logits[b], axis=-1)
            out_masks = masks[b]
            size = tf.shape(out_masks)[1:3]
            tgt = nearest_resize_like_torch(tf.cast(target["masks"], out_masks.dtype)[..., None], (size[0], size[1]))
            tgt = tf.reshape(tgt, [tf.shape(tgt)[0], -1])
            out_flat = tf.reshape(out_masks, [tf.shape(out_masks)[0], -1])
            cost = (p.mask_weight * pairwise_focal_cost(out_flat, tgt, p.focal_alpha, p.focal_gamma)
                    + p.class_weight * -tf.gather(prob, target["labels"], axis=1)
                    + p.dice_weight * pairwise_dice_cost(out_flat, tgt))
            costs.append(cost)
        return costs

    def match(self, logits: tf.Tensor, masks: tf.Tensor, targets: Targets) -> Indices:
        """Per image, (query indices, target indices) of the optimal assignment (scipy, host side)."""
        return [tuple(np.asarray(i, np.int64) for i in linear_sum_assignment(c.numpy()))
                for c in self.cost_matrices(logits, masks, targets)]

    def layer_losses(self, logits: tf.Tensor, masks: tf.Tensor, targets: Targets, indices: Indices,
                     num_masks: float) -> dict[str, tf.Tensor]:
        p = self.preset
        batch, queries = logits.shape[0], logits.shape[1]
        target_classes = np.full((batch, queries), p.num_classes, np.int64)
        src_masks, tgt_masks = [], []
        for b, ((src, tgt), target) in enumerate(zip(indices, targets, strict=True)):
            target_classes[b, src] = np.asarray(target["labels"])[tgt]
            src_masks.append(tf.gather(masks[b], src))
            tgt_masks.append(tf.gather(tf.cast(target["masks"], masks.dtype), tgt))
        target_classes = tf.constant(target_classes)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        nll = -tf.gather(log_probs, target_classes, batch_dims=2)
        weights = tf.gather(self.class_weights, target_classes)
        loss_ce = tf.reduce_sum(weights * nll) / tf.reduce_sum(weights)  # weighted mean, as F.cross_entropy
        src = tf.concat(src_masks, axis=0)
        tgt = tf.concat(tgt_masks, axis=0)
        height, width = tgt.shape[1], tgt.shape[2]
        src = bilinear_resize(src[..., None], (height, width))[..., 0]
        src = tf.reshape(src, [tf.shape(src)[0], -1])
        tgt = tf.reshape(tgt, [tf.shape(tgt)[0], -1])
        return {"loss_ce": loss_ce,
                "loss_mask": sigmoid_focal_loss(src, tgt, num_masks, p.focal_alpha, p.focal_gamma),
                "loss_dice": dice_loss(src, tgt, num_masks)}

    def __call__(self, outputs: dict[str, tf.Tensor], targets: Targets, indices: list[Indices] | None = None
                 ) -> tuple[dict[str, tf.Tensor], list[Indices]]:
        """Unweighted terms loss_* (final) and loss_*_{i} (aux layer i), and the indices used per layer
        (final first). `indices` forces the assignment (e.g. to compare losses alone)."""
        num_masks = max(float(sum(int(np.asarray(t["labels"]).shape[0]) for t in targets)), 1.0)
        layers = outputs["layer_logits"].shape[0]
        order = [layers - 1, *range(layers - 1)]  # final, then aux 0..L-2
        losses, used = {}, []
        for position, layer in enumerate(order):
            logits, masks = outputs["layer_logits"][layer], outputs["layer_masks"][layer]
            layer_indices = indices[position] if indices is not None else self.match(logits, masks, targets)
            used.append(layer_indices)
            suffix = "" if layer == layers - 1 else f"_{layer}"
            terms = self.layer_losses(logits, masks, targets, layer_indices, num_masks)
            losses.update({f"{k}{suffix}": v for k, v in terms.items()})
        return losses, used

    def weighted_total(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        p = self.preset
        weights = {"loss_ce": p.class_weight, "loss_mask": p.mask_weight, "loss_dice": p.dice_weight}
        return tf.add_n([v * weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] for k, v in losses.items()])
