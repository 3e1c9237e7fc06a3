"""`mfport predict`: run a converted TF MaskFormer on image files; write overlays and raw maps.

Per image STEM: STEM_semantic.png (overlay with a legend of class names), STEM_semantic_map.png
(16-bit class ids), and with panoptic output STEM_panoptic.png (overlay), STEM_panoptic_map.png (COCO
panoptic id encoding id = R + 256 G + 256^2 B) and STEM_segments.json (COCO-style segments_info).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from mfport.core.checkpoint_io import atomic_write
from mfport.core.errors import InputError


@dataclasses.dataclass
class Prediction:
    image: str
    network_size: tuple[int, int]  # the size the network ran at (after the test-time resize)
    semantic_map: np.ndarray  # [H, W] class ids, at the image's own size
    panoptic_map: np.ndarray  # [H, W] segment ids, 0 = void
    segments: list[dict[str, object]]
    outputs: list[str]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such image") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not a readable PNG/JPEG image ({err})") from None


def class_colors(num_classes: int) -> np.ndarray:
    """A fixed, well-spread colour per class id."""
    rng = np.random.default_rng(2021)
    return rng.integers(40, 256, size=(num_classes, 3)).astype(np.uint8)


def _overlay_png(path: Path, image: np.ndarray, label_map: np.ndarray, legend: list[tuple[str, np.ndarray]],
                 title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = np.zeros((max(len(legend), int(label_map.max()) + 1), 3), np.uint8)
    for index, (_, color) in enumerate(legend):
        colors[index] = color
    height, width = label_map.shape
    fig, ax = plt.subplots(figsize=(max(4.0, width / 100 + 2.5), max(3.0, height / 100)), dpi=100)
    ax.imshow(image)
    ax.imshow(colors[label_map], alpha=0.55)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    handles = [Patch(color=color / 255.0, label=name) for name, color in legend if name]
    if handles:
        ax.legend(handles=handles[:24], loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def predict_images(model_dir: str, images: list[str], output_dir: str, object_mask_threshold: float | None = None,
                   overlap_threshold: float | None = None, resize: bool = True, min_size: int | None = None,
                   max_size: int | None = None) -> list[Prediction]:
    """Segment image files as the original predictor does: the preset's shortest-edge resize (PIL bilinear on
    uint8, as detectron2's DefaultPredictor), the network, maps resized back to each image's size."""
    import tensorflow as tf
    from PIL import Image

    from mfport.core.preprocessing import resize_like_predictor
    from mfport.tf_maskformer.modeling.inference import postprocess
    from mfport.tf_maskformer.serving.model_dir import load_converted_model

    model = load_converted_model(model_dir)
    preset = model.preset
    labels = preset.labels
    short_edge, longest = min_size or preset.test_min_size, max_size or preset.test_max_size
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions = []
    for image_path in images:
        image = read_image(image_path)
        network_input = resize_like_predictor(image, short_edge, longest) if resize else image
        batch = tf.constant(network_input[None], tf.float32)
        padded = model.preprocess(batch)
        outputs = model(padded, training=False)
        result = postprocess(outputs, preset, tuple(padded.shape[1:3]), network_input.shape[:2],
                             output_size=image.shape[:2], object_mask_threshold=object_mask_threshold,
                             overlap_threshold=overlap_threshold)
        semantic = result["semantic_map"][0].numpy()
        panoptic = result["panoptic_seg"][0].numpy()
        segment_id, category, area = (result[k][0].numpy() for k in ("segment_id", "category", "area"))
        segments = [{"id": int(segment_id[q]), "category_id": int(category[q]),
                     "category": labels.names[int(category[q])], "isthing": int(category[q]) in preset.thing_ids,
                     "area": int(area[q])} for q in np.argsort(segment_id) if area[q] > 0]
        stem = Path(image_path).stem
        written = []
        present = {int(c) for c in np.unique(semantic)}
        colors = np.asarray(labels.colors, np.uint8)
        legend = [(labels.short_name(c) if c in present else "", colors[c]) for c in range(preset.num_classes)]
        _overlay_png(out / f"{stem}_semantic.png", image, semantic, legend, f"{stem}: semantic ({preset.name})")
        atomic_write(out / f"{stem}_semantic_map.png",
                     lambda tmp, s=semantic: Image.fromarray(s.astype(np.uint16)).save(tmp, format="PNG"))
        written += [f"{stem}_semantic.png", f"{stem}_semantic_map.png"]
        segment_colors = class_colors(len(segments) + 7)[7:]  # one colour per segment: instances differ
        seg_legend = [("", np.zeros(3, np.uint8))] + [
            (f"{s['id']}: {labels.short_name(s['category_id'])}", segment_colors[i]) for i, s in enumerate(segments)]
        _overlay_png(out / f"{stem}_panoptic.png", image, panoptic, seg_legend,
                     f"{stem}: panoptic, {len(segments)} segment{'' if len(segments) == 1 else 's'} ({preset.name})")
        rgb = np.stack([panoptic % 256, panoptic // 256 % 256, panoptic // 65536], axis=-1).astype(np.uint8)
        atomic_write(out / f"{stem}_panoptic_map.png", lambda tmp, r=rgb: Image.fromarray(r).save(tmp, format="PNG"))
        atomic_write(out / f"{stem}_segments.json",
                     lambda tmp, s=segments: Path(tmp).write_text(json.dumps({"segments_info": s}, indent=1)))
        written += [f"{stem}_panoptic.png", f"{stem}_panoptic_map.png", f"{stem}_segments.json"]
        predictions.append(Prediction(str(image_path), tuple(network_input.shape[:2]), semantic, panoptic, segments,
                                      written))
    return predictions
