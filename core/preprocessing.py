"""The test-time resize of detectron2's DefaultPredictor, which the original demo runs before the network:
ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) on the uint8 image with PIL's bilinear filter; the
predicted maps are then resized back to the image's own size (the model's sem_seg_postprocess)."""

from __future__ import annotations

import numpy as np


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape: scale the short side to `short_edge`, unless the long
    side would then exceed `max_size`; round half up."""
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge * 1.0, scale * width) if height < width else (scale * height, short_edge * 1.0)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_like_predictor(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> the image the original predictor feeds its network (PIL bilinear, as
    detectron2's ResizeTransform applies it to uint8 images)."""
    from PIL import Image

    height, width = image.shape[:2]
    new_h, new_w = shortest_edge_size(height, width, short_edge, max_size)
    if (new_h, new_w) == (height, width):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image, np.uint8)).resize((new_w, new_h), Image.BILINEAR))
