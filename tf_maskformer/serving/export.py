"""SavedModel export: a serving signature usable without importing mfport.

Signature `serving_default(images: float32 [B, H, W, 3] RGB 0..255, any H, W)` returns
pred_logits [B, Q, K+1], pred_masks [B, Q, H'/4, W'/4] (of the padded input), semantic_map [B, H, W],
panoptic_seg [B, H, W] with per-query segment_id / category / area [B, Q].
The preset's metadata (class names, thing ids, thresholds) is saved beside it as mfport_model.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from tf_maskformer.modeling.inference import postprocess
from tf_maskformer.modeling.maskformer_model import MIN_INPUT_SIZE, MaskFormer


class MaskFormerServing(tf.Module):
    def __init__(self, model: MaskFormer) -> None:
        super().__init__(name="maskformer_serving")
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(images)
        with tf.control_dependencies([
            tf.debugging.assert_greater_equal(shape[1:3], MIN_INPUT_SIZE,
                                              message=f"images: height and width must be >= {MIN_INPUT_SIZE}")]):
            padded = self.model.preprocess(images)
        outputs = self.model(padded, training=False)
        result = postprocess(outputs, self.model.preset, tf.shape(padded)[1:3], shape[1:3])
        return {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"],
                "semantic_map": result["semantic_map"], "panoptic_seg": result["panoptic_seg"],
                "segment_id": result["segment_id"], "segment_category": result["category"],
                "segment_area": result["area"]}


def model_metadata(model: MaskFormer) -> dict[str, object]:
    preset = model.preset
    return {"preset": preset.name, "num_classes": preset.num_classes, "class_names": list(preset.class_names),
            "thing_ids": sorted(preset.thing_ids), "object_mask_threshold": preset.object_mask_threshold,
            "overlap_threshold": preset.overlap_threshold, "input": "float32 [B, H, W, 3] RGB 0..255"}


def export_saved_model(model: MaskFormer, directory: str | Path) -> MaskFormerServing:
    """Write the SavedModel (and mfport_model.json); returns the exported module, callable in-process."""
    directory = Path(directory)
    module = MaskFormerServing(model)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    (directory / "mfport_model.json").write_text(json.dumps(model_metadata(model), indent=1))
    return module
