"""COCO panoptic (panoptic JSON + PNGs + images) -> sharded TFRecords and the label map beside them.

The contiguous class ids come from the JSON's categories (sorted by category id, COCO's order), written to
OUTPUT_DIR/label_map.json with names and thing/stuff flags; nothing about the label set is hard-coded.
Each record holds the encoded image and panoptic PNG untouched, plus the image's segments:
  image/encoded, image/format, image/height, image/width, image/source_id, image/filename,
  panoptic/encoded (RGB-encoded segment ids), panoptic/segment_ids, panoptic/class_ids (contiguous),
  panoptic/is_crowd, panoptic/area.
The records are written into a temporary directory that is renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from mfport.core.errors import DatasetError

LABEL_MAP = "label_map.json"


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values: list[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def label_map_from_categories(categories: list[dict[str, object]]) -> list[dict[str, object]]:
    """Categories of a panoptic JSON -> [{"id": contiguous, "category_id", "name", "isthing"}]."""
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    return [{"id": index, "category_id": int(c["id"]), "name": str(c["name"]), "isthing": int(c.get("isthing", 0))}
            for index, c in enumerate(ordered)]


def read_label_map(directory: str | os.PathLike[str]) -> list[dict[str, object]]:
    path = Path(directory) / LABEL_MAP
    if not path.is_file():
        raise DatasetError(f"{path}: no label map (write the records with `mfport make-tfrecords`)")
    return json.loads(path.read_text())


def write_panoptic_tfrecords(image_dir: str | os.PathLike[str], panoptic_json: str | os.PathLike[str],
                             panoptic_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                             prefix: str = "train", num_shards: int = 4, force: bool = False,
                             progress: bool = False) -> list[Path]:
    """Write OUTPUT_DIR/PREFIX-0000i-of-0000N.tfrecord and OUTPUT_DIR/label_map.json; return the shards."""
    panoptic_json, image_dir, panoptic_dir = Path(panoptic_json), Path(image_dir), Path(panoptic_dir)
    output_dir = Path(output_dir)
    try:
        document = json.loads(panoptic_json.read_text())
        annotations, categories = document["annotations"], document["categories"]
        images = {int(image["id"]): image for image in document["images"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{panoptic_json}: not a COCO panoptic JSON ({type(err).__name__}: {err})") from None
    if output_dir.exists() and any(output_dir.glob(f"{prefix}-*.tfrecord")) and not force:
        raise DatasetError(f"{output_dir}: holds {prefix}-*.tfrecord already; pass --force to overwrite")
    label_map = label_map_from_categories(categories)
    contiguous = {entry["category_id"]: entry["id"] for entry in label_map}
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        num_shards = max(1, min(num_shards, len(annotations)))
        names = [staging / f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
        writers = [tf.io.TFRecordWriter(str(name)) for name in names]
        iterator = annotations
        if progress:
            from rich.progress import track

            iterator = track(annotations, description=f"writing {prefix} records")
        for index, annotation in enumerate(iterator):
            image = images.get(int(annotation["image_id"]))
            if image is None:
                raise DatasetError(f"{panoptic_json}: annotation {annotation.get('file_name')} names image_id "
                                   f"{annotation['image_id']}, which the images list lacks")
            image_path, png_path = image_dir / image["file_name"], panoptic_dir / annotation["file_name"]
            for path in (image_path, png_path):
                if not path.is_file():
                    raise DatasetError(f"{path}: missing (named in {panoptic_json})")
            segments = annotation["segments_info"]
            unknown = [s["category_id"] for s in segments if s["category_id"] not in contiguous]
            if unknown:
                raise DatasetError(f"{panoptic_json}: {annotation['file_name']} uses category_id {unknown[0]}, "
                                   "which the categories list lacks")
            suffix = image_path.suffix.lower().lstrip(".")
            feature = {
                "image/encoded": _bytes(image_path.read_bytes()),
                "image/format": _bytes(b"jpeg" if suffix in ("jpg", "jpeg") else suffix.encode()),
                "image/height": _ints([int(image["height"])]),
                "image/width": _ints([int(image["width"])]),
                "image/source_id": _bytes(str(image["id"]).encode()),
                "image/filename": _bytes(str(image["file_name"]).encode()),
                "panoptic/encoded": _bytes(png_path.read_bytes()),
                "panoptic/segment_ids": _ints([int(s["id"]) for s in segments]),
                "panoptic/class_ids": _ints([contiguous[s["category_id"]] for s in segments]),
                "panoptic/is_crowd": _ints([int(s.get("iscrowd", 0)) for s in segments]),
                "panoptic/area": _ints([int(s.get("area", 0)) for s in segments]),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writers[index % num_shards].write(example.SerializeToString())
        for writer in writers:
            writer.close()
        (staging / LABEL_MAP).write_text(json.dumps(label_map, indent=1))
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob(f"{prefix}-*.tfrecord"):
            stale.unlink()
        shards = []
        for path in [*names, staging / LABEL_MAP]:
            os.replace(path, output_dir / path.name)
            shards.append(output_dir / path.name)
        return shards[:-1]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_synthetic_records(root: str | os.PathLike[str], splits: dict[str, tuple[int, int]],
                            dataset: str = "coco_panoptic_133", num_shards: int = 1) -> Path:
    """The synthetic COCO panoptic set under ROOT (`splits`: split -> (images, seed)) and its records in
    ROOT/records as PREFIX=split shards; returns the records directory."""
    from mfport.tf_maskformer.dataloaders.synthetic_coco_panoptic import write_synthetic_coco_panoptic

    root = Path(root)
    for split, (count, seed) in splits.items():
        json_path = write_synthetic_coco_panoptic(root, split, count, seed=seed, dataset=dataset)
        write_panoptic_tfrecords(root / f"{split}2017", json_path, root / "annotations" / f"panoptic_{split}2017",
                                 root / "records", prefix=split, num_shards=num_shards)
    return root / "records"
