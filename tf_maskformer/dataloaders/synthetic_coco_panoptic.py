"""A small synthetic data set in real COCO panoptic format, for tests and the demo.

Layout, as COCO's:
  ROOT/{split}2017/*.jpg                        images
  ROOT/annotations/panoptic_{split}2017.json    images, annotations (segments_info), categories
  ROOT/annotations/panoptic_{split}2017/*.png   RGB-encoded segment ids (id = R + 256 G + 256^2 B)
The categories are the full label set of the data set (COCO panoptic: the 133 categories with their real,
gapped ids), so the contiguous mapping is generated exactly as for real COCO. Each image has two or three
textured stuff regions, a few thing instances (ellipses, boxes), void pixels, and now and then a crowd
segment. Every class has its own colour and texture, so a model can learn it in a few dozen steps.
Numpy and Pillow only; the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mfport.core.labels import get_label_set

# Classes the generator draws (short names in coco_panoptic_133 / ade20k_150); the rest of the set is absent.
STUFF = {"coco_panoptic_133": ("sky-other-merged", "grass-merged", "wall-other-merged", "road", "sea"),
         "ade20k_150": ("sky", "grass", "wall", "road", "sea")}
THINGS = {"coco_panoptic_133": ("person", "car", "dog", "bottle"),
          "ade20k_150": ("person", "car", "bottle", "boat")}


def _class_look(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, float, float]]:
    """Per drawn class: base colour, stripe frequency, stripe amplitude (fixed for the whole data set)."""
    return [(rng.uniform(20, 235, 3), rng.uniform(4, 25), rng.uniform(10, 40)) for _ in range(count)]


def _texture(look: tuple[np.ndarray, float, float], yy: np.ndarray, xx: np.ndarray, angle: float) -> np.ndarray:
    colour, freq, amplitude = look
    stripes = np.sin(2 * np.pi * freq * (yy * np.cos(angle) + xx * np.sin(angle)))
    return colour + stripes[..., None] * amplitude


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H, W] -> COCO panoptic RGB (id = R + 256 G + 256^2 B)."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _bbox(region: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(region)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _one_image(rng: np.random.Generator, looks: dict[str, tuple], height: int, width: int, stuff: tuple,
               things: tuple, crowd: bool) -> tuple[np.ndarray, np.ndarray, list[dict[str, object]]]:
    """(RGB image, segment-id map, segments) with segments as (id, class name, iscrowd)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    image = np.zeros((height, width, 3))
    ids = np.zeros((height, width), np.int64)
    segments = []

    def paint(region: np.ndarray, name: str, angle: float, iscrowd: int) -> None:
        """A new segment of class `name` over `region` (on top of what is there)."""
        segment_id = 1 + len(segments)
        image[region] = _texture(looks[name], yy, xx, angle)[region]
        ids[region] = segment_id
        segments.append({"id": segment_id, "name": name, "iscrowd": iscrowd})

    # Stuff: horizontal bands with a wavy border, one class each.
    names = rng.choice(len(stuff), size=int(rng.integers(2, 4)), replace=False)
    borders = np.sort(rng.uniform(0.25, 0.75, size=len(names) - 1))
    band = np.zeros((height, width), np.int64)
    for border in borders:
        band += yy > border + 0.05 * np.sin(2 * np.pi * rng.uniform(1, 3) * xx + rng.uniform(0, 6))
    for index, name_index in enumerate(names):
        region = band == index
        if not region.any():
            continue
        paint(region, stuff[name_index], 0.3, 0)
    # Things: one to four instances drawn on top.
    for _ in range(int(rng.integers(1, 5))):
        name = things[int(rng.integers(len(things)))]
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(0.08, 0.22, 2)
        if rng.random() < 0.5:
            region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            region = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        paint(region, name, 1.2, 0)
    if crowd:  # a crowd of small same-class blobs, annotated as one iscrowd segment
        name = things[0]
        region = np.zeros((height, width), bool)
        for _ in range(5):
            cy, cx = rng.uniform(0.1, 0.9, 2)
            region |= ((yy - cy) / 0.04) ** 2 + ((xx - cx) / 0.03) ** 2 <= 1
        paint(region, name, 1.2, 1)
    # Void: an unlabeled strip along one border (COCO leaves such pixels at id 0).
    void = int(rng.integers(0, max(height // 20, 2)))
    if void:
        ids[:void] = 0
    image += rng.normal(0, 5, size=image.shape)
    # Segments occluded entirely by later ones disappear, as they would in a real annotation.
    present = set(np.unique(ids).tolist())
    segments = [s for s in segments if s["id"] in present]
    return np.clip(image, 0, 255).astype(np.uint8), ids, segments


def write_synthetic_coco_panoptic(root: str | os.PathLike[str], split: str = "train", num_images: int = 16,
                                  seed: int = 0, dataset: str = "coco_panoptic_133",
                                  size_range: tuple[int, int] = (160, 240)) -> Path:
    """Write the data set under ROOT and return the panoptic JSON's path. Class looks depend on `seed` only
    through a fixed draw, so train and val splits written with different seeds share them."""
    if dataset not in STUFF:
        raise ValueError(f"dataset: unknown {dataset!r}; choose from {', '.join(STUFF)}")
    classes = get_label_set(dataset)
    source_ids = classes.category_ids
    stuff, things = STUFF[dataset], THINGS[dataset]
    looks = dict(zip(stuff + things, _class_look(np.random.default_rng(1234), len(stuff) + len(things)),
                     strict=True))
    root = Path(root)
    image_dir = root / f"{split}2017"
    png_dir = root / "annotations" / f"panoptic_{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(num_images):
        height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        image, ids, segments = _one_image(rng, looks, height, width, stuff, things, crowd=index % 5 == 4)
        image_id = seed * 100000 + index + 1
        stem = f"{image_id:012d}"
        Image.fromarray(image).save(image_dir / f"{stem}.jpg", quality=95)
        # COCO panoptic segment ids are arbitrary 24-bit values: spread them so decoding is exercised.
        encoded_ids = np.where(ids > 0, ids * 7919 + 4096, 0)
        Image.fromarray(encode_ids(encoded_ids)).save(png_dir / f"{stem}.png")
        infos = []
        for segment in segments:
            region = ids == segment["id"]
            infos.append({"id": int(segment["id"] * 7919 + 4096),
                          "category_id": source_ids[classes.index_of(segment["name"])],
                          "iscrowd": segment["iscrowd"], "bbox": _bbox(region), "area": int(region.sum())})
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos})
    categories = [{"id": source_ids[i], "name": name, "supercategory": "thing" if i in classes.thing_ids else "stuff",
                   "isthing": int(i in classes.thing_ids)} for i, name in enumerate(classes.names)]
    document = {"info": {"description": f"mfport synthetic {dataset} panoptic, seed {seed}"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": categories}
    json_path = root / "annotations" / f"panoptic_{split}2017.json"
    temporary = json_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document))
    temporary.replace(json_path)
    return json_path
