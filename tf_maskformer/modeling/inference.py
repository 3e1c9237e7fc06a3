"""Semantic and panoptic inference of the original, in TensorFlow ops only (XLA-compilable, no host ops).

Layouts: mask logits [B, Q, H, W] as the model outputs them; semantic scores come out [B, H, W, K].
"""

from __future__ import annotations

import tensorflow as tf

from mfport.core.presets import MaskFormerPreset
from mfport.tf_maskformer.modeling.resize import bilinear_resize, is_own_size


def _resize_masks(masks: tf.Tensor, size: tuple) -> tf.Tensor:
    """[B, Q, h, w] -> [B, Q, H, W], bilinear (align_corners=False)."""
    if is_own_size(masks.shape[2:4], size):
        return masks
    return tf.transpose(bilinear_resize(tf.transpose(masks, [0, 2, 3, 1]), size), [0, 3, 1, 2])


def semantic_inference(mask_cls: tf.Tensor, mask_pred: tf.Tensor) -> tf.Tensor:
    """[B, Q, K+1] logits, [B, Q, H, W] mask logits -> [B, H, W, K] = sum_q softmax(cls)[:K] * sigmoid(mask)."""
    probs = tf.nn.softmax(mask_cls, axis=-1)[..., :-1]
    return tf.einsum("bqc,bqhw->bhwc", probs, tf.sigmoid(mask_pred))


def panoptic_inference(mask_cls: tf.Tensor, mask_pred: tf.Tensor, num_classes: int, thing_ids: frozenset[int],
                       object_mask_threshold: float, overlap_threshold: float) -> dict[str, tf.Tensor]:
    """The original's panoptic merge, vectorised over queries and images.

    Returns panoptic_seg [B, H, W] int32 (0 = void; ids numbered 1.. in query order, as the original's
    loop numbers them), and per query: segment_id [B, Q] (0 = no segment), category [B, Q],
    area [B, Q] (pixels the query won; for merged stuff the whole segment's area sits on its first query).
    """
    probs = tf.nn.softmax(mask_cls, axis=-1)
    scores = tf.reduce_max(probs, axis=-1)
    labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    masks = tf.sigmoid(mask_pred)
    batch, queries = tf.shape(masks)[0], tf.shape(masks)[1]
    # Per pixel, the kept query with the highest score * probability (first on ties, as torch.argmax).
    prob_masks = tf.where(keep[:, :, None, None], scores[:, :, None, None] * masks, float("-inf"))
    mask_ids = tf.argmax(prob_masks, axis=1, output_type=tf.int32)  # [B, H, W]
    flat_ids = mask_ids + tf.range(batch)[:, None, None] * queries
    won_area = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(flat_ids), flat_ids, batch * queries),
                          [batch, queries])
    won_area = tf.where(keep, won_area, 0)
    own_area = tf.reduce_sum(tf.cast(masks >= 0.5, tf.int32), axis=[2, 3])
    ratio = tf.cast(won_area, tf.float64) / tf.cast(tf.maximum(own_area, 1), tf.float64)
    valid = keep & (won_area > 0) & (own_area > 0) & (ratio >= overlap_threshold)

    is_thing_table = tf.constant([i in thing_ids for i in range(num_classes + 1)])
    is_thing = tf.gather(is_thing_table, labels)
    # Stuff queries of a class already taken by an earlier valid query merge into its segment.
    same_class = labels[:, :, None] == labels[:, None, :]  # [B, q, j]
    earlier = tf.linalg.band_part(tf.ones([queries, queries], tf.bool), -1, 0) & ~tf.eye(queries, dtype=tf.bool)
    merged = ~is_thing & tf.reduce_any(same_class & earlier[None] & valid[:, None, :], axis=-1)
    new_segment = valid & ~merged
    new_ids = tf.cumsum(tf.cast(new_segment, tf.int32), axis=-1)
    first_same = tf.argmax(tf.cast(same_class & valid[:, None, :], tf.int32), axis=-1, output_type=tf.int32)
    segment_id = tf.where(valid, tf.where(merged, tf.gather(new_ids, first_same, batch_dims=1), new_ids), 0)
    panoptic_seg = tf.gather(segment_id, mask_ids, batch_dims=1)
    panoptic_seg = tf.where(tf.reduce_any(keep, axis=-1)[:, None, None], panoptic_seg, 0)
    merged_area = tf.reduce_sum(tf.where(valid[:, None, :] & same_class & ~is_thing[:, :, None],
                                         won_area[:, None, :], 0), axis=-1)
    area = tf.where(new_segment, tf.where(is_thing, won_area, merged_area), 0)
    return {"panoptic_seg": panoptic_seg, "segment_id": segment_id, "category": labels, "area": area}


def postprocess(outputs: dict[str, tf.Tensor], preset: MaskFormerPreset, padded_size: tuple, image_size: tuple,
                output_size: tuple | None = None, object_mask_threshold: float | None = None,
                overlap_threshold: float | None = None, semantic: bool = True) -> dict[str, tf.Tensor]:
    """Raw outputs of a batch of equally sized images -> sem_seg [B, H, W, K], semantic map, panoptic
    (semantic=False: the panoptic maps alone).

    As the original: masks upsampled to the padded input, cropped to the image, resized to the output
    size; semantic configs combine scores on the padded grid before cropping (see the preset).
    """
    if output_size is None:
        output_size = image_size
    height, width = image_size[0], image_size[1]
    # In float32 whatever the model computed in: bfloat16 scores (8 significant bits) would tie on most
    # pixels (PyTorch's autocast likewise keeps softmax, sigmoid and upsampling in float32).
    outputs = {key: tf.cast(outputs[key], tf.float32) for key in ("pred_logits", "pred_masks")}
    masks = _resize_masks(outputs["pred_masks"], padded_size)
    cropped = _resize_masks(masks[:, :, :height, :width], output_size)
    result = {}
    if semantic:
        if preset.postprocess_before_semantic_inference:
            sem_seg = semantic_inference(outputs["pred_logits"], cropped)
        else:
            sem_seg = bilinear_resize(semantic_inference(outputs["pred_logits"], masks)[:, :height, :width],
                                      output_size)
        result = {"sem_seg": sem_seg, "semantic_map": tf.argmax(sem_seg, axis=-1, output_type=tf.int32)}
    result.update(panoptic_inference(
        outputs["pred_logits"], cropped, preset.num_classes, preset.thing_ids,
        preset.object_mask_threshold if object_mask_threshold is None else object_mask_threshold,
        preset.overlap_threshold if overlap_threshold is None else overlap_threshold))
    return result
