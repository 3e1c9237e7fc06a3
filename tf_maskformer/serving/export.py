"""SavedModel export: serving signatures usable with TensorFlow alone (no mfport, no Keras objects to restore).

`serving_default(images: float32 [B, H, W, 3] RGB 0..255, any H, W >= 32)`: the network at the input's own
size; returns pred_logits [B, Q, K+1], pred_masks [B, Q, H'/4, W'/4] (of the padded input), semantic_map
[B, H, W], panoptic_seg [B, H, W] with per-query segment_id / segment_category / segment_area [B, Q].

`predict_original(image: uint8 [H, W, 3])`: one image as the original predictor sees it: resized so its
short side is the preset's test size (capped by its max size; bilinear with antialiasing on the uint8 values,
rounded as PIL rounds), the network, and semantic_map / panoptic_seg back at the image's own size [H, W].

The object saved holds only the model's variables; the signatures are the two traced functions. Saving the
Keras model object (as mfport did before) also traced every layer's call for Keras' own metadata, and
tf.function attributes are traced again by the saver.
The preset's metadata (class names, thing ids, thresholds, test sizes) is saved beside it as mfport_model.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from mfport.core.checkpoint_io import atomic_write
from mfport.tf_maskformer.modeling.inference import postprocess
from mfport.tf_maskformer.modeling.maskformer_model import MIN_INPUT_SIZE, MaskFormer

METADATA = "mfport_model.json"


def resize_shortest_edge(image: tf.Tensor, short_edge: int, max_size: int) -> tf.Tensor:
    """uint8 [H, W, 3] -> float32 [h, w, 3] as detectron2's ResizeShortestEdge + PIL bilinear produce it: the
    same output size rule, a triangle filter widened when shrinking (PIL's antialiasing), values rounded
    to uint8. PIL computes in fixed point: individual values may differ by one grey level."""
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = short_edge / tf.reduce_min(size)
    new = tf.where(size[0] < size[1], tf.stack([float(short_edge), scale * size[1]]),
                   tf.stack([scale * size[0], float(short_edge)]))
    new = tf.where(tf.reduce_max(new) > max_size, new * (max_size / tf.reduce_max(new)), new)
    new = tf.cast(tf.floor(new + 0.5), tf.int32)
    resized = tf.image.resize(tf.cast(image, tf.float32), new, method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def _run(model: MaskFormer, images: tf.Tensor, output_size: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    shape = tf.shape(images)
    with tf.control_dependencies([
        tf.debugging.assert_greater_equal(shape[1:3], MIN_INPUT_SIZE,
                                          message=f"images: height and width must be >= {MIN_INPUT_SIZE}")]):
        padded = model.preprocess(images)
    outputs = model(padded, training=False)
    result = postprocess(outputs, model.preset, tf.shape(padded)[1:3], shape[1:3], output_size)
    return {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"],
            "semantic_map": result["semantic_map"], "panoptic_seg": result["panoptic_seg"],
            "segment_id": result["segment_id"], "segment_category": result["category"],
            "segment_area": result["area"]}


class MaskFormerServing:
    """The serving functions of a model: the network and its inference traced once (`_network`, taking the
    output size), and the two signatures as thin wrappers around it (callable in-process, what the export saves)."""

    def __init__(self, model: MaskFormer) -> None:
        self.model = model
        preset = model.preset
        # autograph off: the model's Python loops run over static structure (layers), nothing to convert, and
        # tracing without it takes half the time.
        network = tf.function(lambda images, size: _run(model, images, size), autograph=False, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([2], tf.int32)]).get_concrete_function()

        def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
            return network(images, tf.shape(images)[1:3])

        def predict_original(image: tf.Tensor) -> dict[str, tf.Tensor]:
            resized = resize_shortest_edge(image, preset.test_min_size, preset.test_max_size)
            return {key: value[0] for key, value in network(resized[None], tf.shape(image)[:2]).items()}

        self.serve = tf.function(serve, autograph=False, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]).get_concrete_function()
        self.predict_original = tf.function(predict_original, autograph=False, input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name="image")]).get_concrete_function()


def model_metadata(model: MaskFormer) -> dict[str, object]:
    preset = model.preset
    return {"preset": preset.name, "architecture": preset.architecture_label, "num_classes": preset.num_classes,
            "class_names": list(preset.class_names), "thing_ids": sorted(preset.thing_ids),
            "object_mask_threshold": preset.object_mask_threshold, "overlap_threshold": preset.overlap_threshold,
            "test_min_size": preset.test_min_size, "test_max_size": preset.test_max_size,
            "signatures": {"serving_default": "float32 [B, H, W, 3] RGB 0..255, the network at the input size",
                           "predict_original": "uint8 [H, W, 3] RGB, resized as the original predictor, maps at "
                                               "the input size"}}


def export_saved_model(model: MaskFormer, directory: str | Path) -> MaskFormerServing:
    """Write the SavedModel (and mfport_model.json); returns the traced functions, callable in-process."""
    directory = Path(directory)
    serving = MaskFormerServing(model)
    # The saved object is the variables alone: no Keras object, no tf.function attribute, which the saver would
    # trace again (or, for the Keras model, trace every layer's call for Keras' metadata).
    root = tf.Module(name="maskformer_serving")
    root.model_variables = list(model.variables)
    tf.saved_model.save(root, str(directory), signatures={"serving_default": serving.serve,
                                                          "predict_original": serving.predict_original},
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    atomic_write(directory / METADATA, lambda tmp: Path(tmp).write_text(json.dumps(model_metadata(model), indent=1)))
    return serving
