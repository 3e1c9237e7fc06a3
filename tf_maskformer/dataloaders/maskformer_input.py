"""tf.data decoder and parser of the COCO-panoptic TFRecords (coco_panoptic_tfrecords) for MaskFormer.

Train: random horizontal flip, scale jitter + random crop to the fixed output size (the geometry of the Model
Garden's resize_and_crop_image, as its other segmentation tasks), zero padding; every random draw is
stateless, keyed by the example's augmentation seed, so each host's stream is a function of the data seed
and the host id alone (augmentation_seeds). Eval: the image scaled to fit the
output size, padded. Images are normalised BEFORE padding, so the padding is 0 as in the original.

Labels (static shapes):
  labels [M] int32, masks [M, H, W] uint8, valid [M] bool — the non-crowd segments present after the
    augmentation, padded to max_segments = M. Crowd segments are no target (as the original's dataset
    mapper); segments that the crop removes entirely are dropped. When more than M remain, the M largest
    by area are kept and the rest dropped: num_dropped_segments counts them (the task logs it).
  pixel_valid [H, W] bool — False on the padding, which the losses ignore.
  category_mask, instance_mask [H, W] int32 — ground truth for panoptic quality and mIoU; void, crowd and
    padding pixels carry ignore_label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import tensorflow as tf
from official.vision.dataloaders import decoder, parser


class Decoder(decoder.Decoder):
    """Serialized tf.Example -> image (uint8 RGB), segment-id map, and the segments' arrays."""

    _FEATURES: ClassVar[dict[str, object]] = {
        "image/encoded": tf.io.FixedLenFeature((), tf.string),
        "image/source_id": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "panoptic/encoded": tf.io.FixedLenFeature((), tf.string),
        "panoptic/segment_ids": tf.io.VarLenFeature(tf.int64),
        "panoptic/class_ids": tf.io.VarLenFeature(tf.int64),
        "panoptic/is_crowd": tf.io.VarLenFeature(tf.int64),
    }

    def decode(self, serialized_example: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_single_example(serialized_example, self._FEATURES)
        image = tf.io.decode_image(parsed["image/encoded"], channels=3, expand_animations=False)
        rgb = tf.cast(tf.io.decode_png(parsed["panoptic/encoded"], channels=3), tf.int32)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        dense = {k: tf.cast(tf.sparse.to_dense(parsed[f"panoptic/{k}"]), tf.int32)
                 for k in ("segment_ids", "class_ids", "is_crowd")}
        return {"image": image, "segment_id_map": ids, "source_id": parsed["image/source_id"], **dense}


class Parser(parser.Parser):
    def __init__(self, output_size: list[int], max_segments: int, ignore_label: int,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...], aug_scale_min: float = 1.0,
                 aug_scale_max: float = 1.0, aug_rand_hflip: bool = True) -> None:
        self.output_size = list(output_size)
        self.max_segments = max_segments
        self.ignore_label = ignore_label
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.aug_scale_min, self.aug_scale_max = aug_scale_min, aug_scale_max
        self.aug_rand_hflip = aug_rand_hflip

    def _random(self, decoded: dict[str, tf.Tensor], stream: int, shape: list[int], low: float = 0.0,
                high: float = 1.0) -> tf.Tensor:
        """A stateless draw keyed by the example's augmentation seed (see augmentation_seeds) and a stream id."""
        seed = decoded.get("augmentation_seed")
        if seed is None:  # an example fed without the input reader: a fresh key, as a stateful op would give
            seed = tf.random.uniform([], maxval=tf.int64.max, dtype=tf.int64)
        key = tf.stack([tf.cast(seed, tf.int64), tf.constant(stream, tf.int64)])
        return tf.random.stateless_uniform(shape, seed=key, minval=low, maxval=high)

    def _resize(self, decoded: dict[str, tf.Tensor], training: bool) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """-> normalised image [H, W, 3], segment-id map [H, W] (0 on padding), pixel_valid [H, W].

        The geometry of the Model Garden's resize_and_crop_image (scale jitter, aspect-preserving resize,
        random crop, zero padding), hand-written to draw from stateless ops keyed per example: with
        resize_and_crop_image's stateful draws a parallel map hands the numbers to examples in whatever
        order its threads run, so a host's stream would not be reproducible (a TPU-pod requirement).
        """
        image = tf.cast(decoded["image"], tf.float32)
        image = (image - tf.constant(self.pixel_mean)) / tf.constant(self.pixel_std)
        # Ids < 2^24 are exact in float32; a second channel of ones marks the image (vs the padding).
        maps = tf.stack([tf.cast(decoded["segment_id_map"], tf.float32), tf.ones_like(image[..., 0])], axis=-1)
        if training and self.aug_rand_hflip:
            flip = self._random(decoded, 0, []) < 0.5
            image = tf.where(flip, image[:, ::-1], image)
            maps = tf.where(flip, maps[:, ::-1], maps)
        desired = tf.constant(self.output_size, tf.float32)
        image_size = tf.cast(tf.shape(image)[:2], tf.float32)
        jitter = training and (self.aug_scale_min != 1.0 or self.aug_scale_max != 1.0)
        target = desired
        if jitter:
            target = tf.round(self._random(decoded, 1, [], self.aug_scale_min, self.aug_scale_max) * desired)
        scaled_size = tf.round(image_size * tf.reduce_min(target / image_size))
        offset = tf.zeros([2], tf.int32)
        if jitter:
            offset = tf.cast(tf.maximum(scaled_size - desired, 0.0) * self._random(decoded, 2, [2]), tf.int32)
        height, width = self.output_size
        size = tf.cast(scaled_size, tf.int32)
        image = tf.image.resize(image, size, method="bilinear")[offset[0]:offset[0] + height,
                                                                offset[1]:offset[1] + width]
        maps = tf.image.resize(maps, size, method="nearest")[offset[0]:offset[0] + height, offset[1]:offset[1] + width]
        image = tf.image.pad_to_bounding_box(image, 0, 0, height, width)
        maps = tf.image.pad_to_bounding_box(maps, 0, 0, height, width)
        pixel_valid = maps[..., 1] > 0.5
        return image, tf.where(pixel_valid, tf.cast(maps[..., 0], tf.int32), 0), pixel_valid

    def _labels(self, decoded: dict[str, tf.Tensor], ids: tf.Tensor, pixel_valid: tf.Tensor) -> dict[str, tf.Tensor]:
        segment_ids, class_ids = decoded["segment_ids"], decoded["class_ids"]
        is_crowd = decoded["is_crowd"] > 0
        present = tf.equal(ids[None], segment_ids[:, None, None])  # [S, H, W]
        area = tf.reduce_sum(tf.cast(present, tf.int32), axis=[1, 2])
        candidate = ~is_crowd & (area > 0)
        # Pad to at least M candidates, then keep the M largest (static shape M from here on).
        slots = self.max_segments
        pad = tf.maximum(slots - tf.shape(segment_ids)[0], 0)
        score = tf.pad(tf.where(candidate, area, -1), [[0, pad]], constant_values=-1)
        order = tf.math.top_k(score, k=slots, sorted=True).indices
        valid = tf.gather(score, order) > 0
        chosen_ids = tf.gather(tf.pad(segment_ids, [[0, pad]], constant_values=-1), order)
        labels = tf.where(valid, tf.gather(tf.pad(class_ids, [[0, pad]]), order), 0)
        masks = tf.cast(tf.equal(ids[None], chosen_ids[:, None, None]) & valid[:, None, None], tf.uint8)
        # Ground truth for panoptic quality / mIoU: class and instance per pixel; void, crowd, padding ignored.
        ignore = tf.reduce_any(present & is_crowd[:, None, None], axis=0) | (ids == 0) | ~pixel_valid
        # Which segment covers each pixel (a trailing empty row keeps argmax defined without segments).
        covered = tf.concat([present, tf.zeros_like(present[:1])], axis=0)
        index = tf.argmax(tf.cast(covered, tf.int32), axis=0, output_type=tf.int32)
        category = tf.gather(tf.pad(class_ids, [[0, 1]]), index)
        category_mask = tf.where(ignore | ~tf.reduce_any(present, axis=0), self.ignore_label, category)
        instance_mask = tf.where(category_mask == self.ignore_label, 0, index + 1)
        return {"labels": labels, "masks": masks, "valid": valid, "pixel_valid": pixel_valid,
                "num_dropped_segments": tf.reduce_sum(tf.cast(candidate, tf.int32))
                - tf.reduce_sum(tf.cast(valid, tf.int32)),
                "category_mask": category_mask, "instance_mask": instance_mask}

    def _parse(self, decoded: dict[str, tf.Tensor], training: bool) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        image, ids, pixel_valid = self._resize(decoded, training)
        image = tf.ensure_shape(image, [*self.output_size, 3])
        return image, self._labels(decoded, ids, pixel_valid)

    def _parse_train_data(self, decoded: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        return self._parse(decoded, training=True)

    def _parse_eval_data(self, decoded: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        return self._parse(decoded, training=False)


def augmentation_seeds(seed: int, input_context: tf.distribute.InputContext | None = None
                       ) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """The input reader's sample_fn: gives every decoded example an int64 "augmentation_seed" from a stream
    determined by the data seed and the input pipeline (host) id, in the example's order of arrival."""
    pipeline = input_context.input_pipeline_id if input_context else 0

    def attach(dataset: tf.data.Dataset) -> tf.data.Dataset:
        seeds = tf.data.Dataset.random(seed=seed * 1_000_003 + pipeline)
        return tf.data.Dataset.zip((dataset, seeds)).map(lambda example, key: {**example, "augmentation_seed": key})

    return attach
