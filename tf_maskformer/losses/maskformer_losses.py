"""MaskFormer's Hungarian matcher and set criterion in TensorFlow (../shared/reference/MASKFORMER.md).

Matching: cost = class_weight * (-softmax prob of the target class) + mask_weight * sigmoid-focal cost
+ dice_weight * dice cost, with targets NEAREST-resized to the prediction's size; solved optimally
per image and per decoder layer, in the graph (tf_maskformer.losses.hungarian: the XLA/TPU path) or by
scipy's linear_sum_assignment on the host (the CPU/GPU option).
Losses: CE over all queries with "no object" (the LAST class) weighted by no_object_weight (weighted
mean); focal and dice on matched pairs with predictions bilinearly upsampled to the padded target size,
summed over masks and divided by num_masks; for the final output and every aux layer.

Everything works on static, padded targets (what XLA needs):
  labels [B, M] int (any value where invalid), masks [B, M, H, W] (0/1, padded target size),
  valid [B, M] bool, and optionally pixel_valid [B, H, W] bool: pixels outside it (the padding the
  input pipeline adds, void pixels) are left out of the mask costs and losses. Without pixel_valid
  every pixel counts, as in the original.
Under a distribution strategy the normalisers (num_masks and the CE weight sum) are summed over the
replicas, so the mean of the replicas' losses equals the one-device loss of the same global batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from mfport.core.presets import MaskFormerPreset
from mfport.tf_maskformer.losses.hungarian import hungarian_assignment
from mfport.tf_maskformer.modeling.ops import compiling_with_xla
from mfport.tf_maskformer.modeling.resize import bilinear_resize_separable, nearest_resize_like_torch

# Compiled on its own so that the solve is one XLA program in eager and graph mode too; inside an
# XLA-compiled train step the solver is traced inline instead (MaskFormerLoss.match).
_hungarian_xla = tf.function(hungarian_assignment, jit_compile=True)

PaddedTargets = dict[str, tf.Tensor]
Targets = list[dict[str, tf.Tensor]]  # per image: labels int [N], masks float [N, H, W] (padded size)
Indices = list[tuple[np.ndarray, np.ndarray]]
MATCHERS = ("hungarian", "scipy")
LOSS_TERMS = ("loss_ce", "loss_mask", "loss_dice")


def _flatten_pixels(x: tf.Tensor) -> tf.Tensor:
    """[..., H, W] -> [..., H*W]."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([shape[:-2], [shape[-2] * shape[-1]]], 0))


def _focal_terms(logits: tf.Tensor, alpha: float, gamma: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-pixel sigmoid-focal loss if the target were 1 (pos) or 0 (neg)."""
    prob = tf.sigmoid(logits)
    pos = (1 - prob) ** gamma * tf.nn.sigmoid_cross_entropy_with_logits(tf.ones_like(logits), logits)
    neg = prob**gamma * tf.nn.sigmoid_cross_entropy_with_logits(tf.zeros_like(logits), logits)
    if alpha >= 0:
        pos, neg = pos * alpha, neg * (1 - alpha)
    return pos, neg


def pairwise_focal_cost(logits: tf.Tensor, targets: tf.Tensor, alpha: float, gamma: float,
                        pixel_valid: tf.Tensor | None = None) -> tf.Tensor:
    """[B, Q, P] mask logits x [B, M, P] binary targets -> [B, Q, M] focal loss averaged over pixels."""
    pos, neg = _focal_terms(logits, alpha, gamma)
    if pixel_valid is None:
        pixels = tf.cast(tf.shape(logits)[-1], logits.dtype)
        return (tf.matmul(pos, targets, transpose_b=True) + tf.matmul(neg, 1 - targets, transpose_b=True)) / pixels
    valid = pixel_valid[:, None, :]
    cost = tf.matmul(pos, targets * valid, transpose_b=True) + tf.matmul(neg, (1 - targets) * valid, transpose_b=True)
    return cost / tf.maximum(tf.reduce_sum(valid, -1, keepdims=True), 1.0)


def pairwise_dice_cost(logits: tf.Tensor, targets: tf.Tensor, pixel_valid: tf.Tensor | None = None) -> tf.Tensor:
    """[B, Q, P] x [B, M, P] -> [B, Q, M] dice cost 1 - (2 sum(p t) + 1) / (sum p + sum t + 1)."""
    prob = tf.sigmoid(logits)
    if pixel_valid is not None:
        prob, targets = prob * pixel_valid[:, None, :], targets * pixel_valid[:, None, :]
    numerator = 2 * tf.matmul(prob, targets, transpose_b=True)
    denominator = tf.reduce_sum(prob, -1)[..., :, None] + tf.reduce_sum(targets, -1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _replica_sum(value: tf.Tensor) -> tuple[tf.Tensor, int]:
    """The sum of `value` over the replicas in sync, and their number (1 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value, 1
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value), context.num_replicas_in_sync


def scipy_assignment(cost: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """The host option: [B, M, Q] costs -> query per target [B, M] (-1 where invalid) via scipy."""

    def solve(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.full(valid.shape, -1, np.int32)
        for b in range(cost.shape[0]):
            rows = np.flatnonzero(valid[b])
            if rows.size:
                # Solved as the original does, [queries, targets]; returned sorted by query.
                queries, targets = linear_sum_assignment(cost[b][rows].T.astype(np.float64))
                out[b, rows[targets]] = queries
        return out

    result = tf.numpy_function(solve, [tf.cast(cost, tf.float32), valid], tf.int32, stateful=False)
    return tf.ensure_shape(result, valid.shape)


class MaskFormerLoss:
    """The set criterion on padded batches; traceable, XLA-compilable with the in-graph matcher."""

    def __init__(self, preset: MaskFormerPreset, matcher: str = "hungarian") -> None:
        if matcher not in MATCHERS:
            raise ValueError(f"matcher: unknown {matcher!r}; choose from {', '.join(MATCHERS)}")
        self.preset = preset
        self.matcher = matcher
        weight = np.ones(preset.num_classes + 1, np.float32)
        weight[-1] = preset.no_object_weight
        self.class_weights = tf.constant(weight)

    def cost(self, logits: tf.Tensor, masks: tf.Tensor, targets: PaddedTargets) -> tf.Tensor:
        """Matching cost [B, M, Q] (targets x queries) of one layer's outputs."""
        p = self.preset
        logits, masks = tf.cast(logits, tf.float32), tf.cast(masks, tf.float32)
        prob = tf.nn.softmax(logits, axis=-1)
        labels = tf.clip_by_value(tf.cast(targets["labels"], tf.int32), 0, p.num_classes)
        class_cost = -tf.gather(prob, labels, axis=2, batch_dims=1)  # [B, Q, M]
        size = tf.shape(masks)[2:4]
        target_masks = tf.cast(targets["masks"], tf.float32)
        batch, slots = tf.shape(target_masks)[0], tf.shape(target_masks)[1]
        # Nearest-resize the [B*M, H, W] targets to the prediction's size (the original's rule).
        resized = nearest_resize_like_torch(tf.reshape(target_masks, tf.concat([[batch * slots], tf.shape(
            target_masks)[2:4], [1]], 0)), (size[0], size[1]))
        resized = tf.reshape(resized, [batch, slots, -1])
        pixel_valid = None
        if "pixel_valid" in targets:
            pixel_valid = nearest_resize_like_torch(tf.cast(targets["pixel_valid"], tf.float32)[..., None],
                                                    (size[0], size[1]))
            pixel_valid = tf.reshape(pixel_valid, [batch, -1])
        flat = _flatten_pixels(masks)
        cost = (p.mask_weight * pairwise_focal_cost(flat, resized, p.focal_alpha, p.focal_gamma, pixel_valid)
                + p.class_weight * class_cost
                + p.dice_weight * pairwise_dice_cost(flat, resized, pixel_valid))
        return tf.transpose(cost, [0, 2, 1])

    def match(self, logits: tf.Tensor, masks: tf.Tensor, targets: PaddedTargets) -> tf.Tensor:
        """Query index per target [B, M] (-1 where invalid), optimal per image."""
        cost = tf.stop_gradient(self.cost(logits, masks, targets))
        valid = tf.cast(targets["valid"], tf.bool)
        if self.matcher == "scipy":
            return scipy_assignment(cost, valid)
        if compiling_with_xla():
            # Already one XLA program (the train step, a TPU replica): traced inline at this call's static shapes.
            # Through the tf.function it could reuse a trace of another call with a wildcard batch (an
            # evaluation's), and the step's graph would carry dynamic shapes.
            return hungarian_assignment(cost, valid)
        return _hungarian_xla(cost, valid)

    def normalisers(self, targets: PaddedTargets, queries: int) -> tuple[tf.Tensor, tf.Tensor]:
        """(num_masks, CE weight sum), each the global total over replicas divided by their number.

        num_masks is at least 1 (the original's clamp). The CE weight sum does not depend on the
        assignment: Q per image at weight no_object_weight, plus (1 - no_object_weight) per target.
        """
        valid = tf.cast(targets["valid"], tf.float32)
        local = tf.stack([tf.reduce_sum(valid), tf.cast(tf.shape(valid)[0] * queries, tf.float32)])
        total, replicas = _replica_sum(local)
        num_masks = tf.maximum(total[0] / replicas, 1.0)
        weight_sum = (total[1] * self.preset.no_object_weight + total[0] * (1 - self.preset.no_object_weight)
                      ) / replicas
        return num_masks, weight_sum

    def layer_losses(self, logits: tf.Tensor, masks: tf.Tensor, targets: PaddedTargets,
                     query_for_target: tf.Tensor, num_masks: tf.Tensor, weight_sum: tf.Tensor
                     ) -> dict[str, tf.Tensor]:
        p = self.preset
        logits, masks = tf.cast(logits, tf.float32), tf.cast(masks, tf.float32)
        valid = tf.cast(targets["valid"], tf.bool) & (query_for_target >= 0)
        queries = logits.shape[1] if logits.shape[1] is not None else tf.shape(logits)[1]
        labels = tf.cast(targets["labels"], tf.int32)
        # [B, M, Q] one-hot of each valid target's query; "no object" wherever no target landed.
        assigned = tf.one_hot(query_for_target, queries, dtype=tf.int32) * tf.cast(valid, tf.int32)[..., None]
        no_object = p.num_classes
        target_classes = no_object + tf.reduce_sum(assigned * (labels - no_object)[..., None], axis=1)
        nll = -tf.gather(tf.nn.log_softmax(logits, axis=-1), target_classes, axis=2, batch_dims=2)
        weights = tf.gather(self.class_weights, target_classes)
        loss_ce = tf.reduce_sum(weights * nll) / weight_sum  # weighted mean, as F.cross_entropy

        src = tf.gather(masks, tf.maximum(query_for_target, 0), axis=1, batch_dims=1)  # [B, M, h, w]
        target_masks = tf.cast(targets["masks"], tf.float32)
        height, width = target_masks.shape[2], target_masks.shape[3]
        batch, slots = tf.shape(src)[0], tf.shape(src)[1]
        src = bilinear_resize_separable(tf.reshape(src, [-1, masks.shape[2], masks.shape[3]]), (height, width))
        src = tf.reshape(src, [batch, slots, -1])
        tgt = _flatten_pixels(target_masks)
        pixel_valid = None
        if "pixel_valid" in targets:
            pixel_valid = tf.reshape(tf.cast(targets["pixel_valid"], tf.float32), [batch, 1, -1])
        pos, neg = _focal_terms(src, p.focal_alpha, p.focal_gamma)
        focal = tgt * pos + (1 - tgt) * neg
        prob = tf.sigmoid(src)
        if pixel_valid is None:
            focal = tf.reduce_mean(focal, -1)
        else:
            focal = tf.reduce_sum(focal * pixel_valid, -1) / tf.maximum(tf.reduce_sum(pixel_valid, -1), 1.0)
            prob, tgt = prob * pixel_valid, tgt * pixel_valid
        dice = 1 - (2 * tf.reduce_sum(prob * tgt, -1) + 1) / (tf.reduce_sum(prob, -1) + tf.reduce_sum(tgt, -1) + 1)
        pair = tf.cast(valid, tf.float32)
        return {"loss_ce": loss_ce,
                "loss_mask": tf.reduce_sum(focal * pair) / num_masks,
                "loss_dice": tf.reduce_sum(dice * pair) / num_masks}

    def __call__(self, outputs: dict[str, tf.Tensor], targets: PaddedTargets,
                 query_for_target: list[tf.Tensor] | None = None,
                 normalisers: tuple[tf.Tensor, tf.Tensor] | None = None
                 ) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
        """Unweighted terms loss_* (final) and loss_*_{i} (aux layer i), and the assignment used per layer
        (final first) as query-per-target [B, M]. `query_for_target` forces the assignment; `normalisers`
        passes (num_masks, weight_sum) computed beforehand (outside an XLA cluster, where the cross-replica
        sum runs)."""
        layers = outputs["layer_logits"].shape[0]
        if normalisers is None:
            normalisers = self.normalisers(targets, outputs["layer_logits"].shape[2])
        num_masks, weight_sum = normalisers
        order = [layers - 1, *range(layers - 1)] if self.preset.deep_supervision else [layers - 1]
        # Unstacked once: indexing the stack per layer would make each layer's gradient a zero-padded copy
        # of the whole [L, B, Q, h, w] stack (under XLA-CPU ~0.3 s per step to pad and add them at 512x512).
        layer_logits, layer_masks = tf.unstack(outputs["layer_logits"]), tf.unstack(outputs["layer_masks"])
        losses, used = {}, []
        for position, layer in enumerate(order):
            logits, masks = layer_logits[layer], layer_masks[layer]
            assignment = (query_for_target[position] if query_for_target is not None
                          else self.match(logits, masks, targets))
            used.append(assignment)
            suffix = "" if layer == layers - 1 else f"_{layer}"
            terms = self.layer_losses(logits, masks, targets, assignment, num_masks, weight_sum)
            losses.update({f"{k}{suffix}": v for k, v in terms.items()})
        return losses, used

    def weighted_total(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        p = self.preset
        weights = {"loss_ce": p.class_weight, "loss_mask": p.mask_weight, "loss_dice": p.dice_weight}
        return tf.add_n([v * weights[term_of(k)] for k, v in losses.items()])


def term_of(key: str) -> str:
    """"loss_mask_3" -> "loss_mask"."""
    return key.rsplit("_", 1)[0] if key[-1].isdigit() else key


def pad_targets(targets: Targets, max_targets: int | None = None) -> PaddedTargets:
    """Per-image target lists -> the padded batch form (M = the largest count, or max_targets)."""
    counts = [int(np.asarray(t["labels"]).shape[0]) for t in targets]
    slots = max(max(counts), 1) if max_targets is None else max_targets
    height, width = np.asarray(targets[0]["masks"]).shape[-2:]
    labels = np.zeros((len(targets), slots), np.int32)
    masks = np.zeros((len(targets), slots, height, width), np.float32)
    valid = np.zeros((len(targets), slots), bool)
    for b, (target, count) in enumerate(zip(targets, counts, strict=True)):
        labels[b, :count] = np.asarray(target["labels"])
        masks[b, :count] = np.asarray(target["masks"])
        valid[b, :count] = True
    return {"labels": tf.constant(labels), "masks": tf.constant(masks), "valid": tf.constant(valid)}


def to_indices(query_for_target: tf.Tensor) -> Indices:
    """[B, M] query per target -> per image (query indices, target indices), sorted by query as scipy's."""
    out = []
    for row in np.asarray(query_for_target):
        targets = np.flatnonzero(row >= 0)
        order = np.argsort(row[targets], kind="stable")
        out.append((row[targets][order].astype(np.int64), targets[order].astype(np.int64)))
    return out


def from_indices(indices: Indices, slots: int) -> tf.Tensor:
    out = np.full((len(indices), slots), -1, np.int32)
    for b, (queries, targets) in enumerate(indices):
        out[b, np.asarray(targets)] = np.asarray(queries)
    return tf.constant(out)


class SetCriterion:
    """The per-image-list interface of the PyTorch reference (used by the parity harness)."""

    def __init__(self, preset: MaskFormerPreset, matcher: str = "scipy") -> None:
        self.preset = preset
        self.loss = MaskFormerLoss(preset, matcher)

    def __call__(self, outputs: dict[str, tf.Tensor], targets: Targets, indices: list[Indices] | None = None
                 ) -> tuple[dict[str, tf.Tensor], list[Indices]]:
        padded = pad_targets(targets)
        slots = padded["valid"].shape[1]
        forced = None if indices is None else [from_indices(layer, slots) for layer in indices]
        losses, used = self.loss(outputs, padded, forced)
        return losses, [to_indices(layer) for layer in used]

    def weighted_total(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.loss.weighted_total(losses)
