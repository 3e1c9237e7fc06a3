"""Label sets of the released models: class names, thing/stuff flags, colours, data-set category ids.

The tables are data files beside this module (one JSON per label set, one class per line), taken from
the original registrations: detectron2's builtin_meta.py (COCO panoptic, Cityscapes, ADE20K-150 names)
and MaskFormer's mask_former/data/datasets/register_*.py (ADE20K-150 thing flags and colours, ADE20K-Full,
COCO-Stuff-10K, Mapillary Vistas). Each file names its source file and commit. Contiguous class ids are
the list order, as the original's contiguous ids are.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

from mfport.core.errors import MfportError

HERE = Path(__file__).resolve().parent


def _fallback_color(index: int) -> tuple[int, int, int]:
    """A fixed colour for a class the registration gives none (golden-ratio hues, full value)."""
    hue = (index * 0.618033988749895) % 1.0
    sector, fraction = divmod(hue * 6.0, 1.0)
    low, rising, falling = 64, int(64 + 191 * fraction), int(255 - 191 * fraction)
    rgb = [(255, rising, low), (falling, 255, low), (low, 255, rising), (low, falling, 255), (rising, low, 255),
           (255, low, falling)][int(sector) % 6]
    return rgb


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """The classes a model predicts, in contiguous order ("no object" is not one of them)."""

    name: str
    names: tuple[str, ...]
    thing_ids: frozenset[int]
    colors: tuple[tuple[int, int, int], ...]
    category_ids: tuple[int, ...]  # the data set's own id of each class (COCO's have gaps)

    def __len__(self) -> int:
        return len(self.names)

    def short_name(self, index: int) -> str:
        """The first synonym ("building, edifice" -> "building"), for legends."""
        return self.names[index].split(",")[0].strip()

    def index_of(self, short_name: str) -> int:
        return next(i for i in range(len(self.names)) if self.short_name(i) == short_name)

    @classmethod
    def generic(cls, num_classes: int) -> LabelSet:
        """class_0 .. class_{K-1}, every class a thing (no stuff merging), ids 1..K."""
        return cls("generic", tuple(f"class_{i}" for i in range(num_classes)), frozenset(range(num_classes)),
                   tuple(_fallback_color(i) for i in range(num_classes)), tuple(range(1, num_classes + 1)))

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "names": list(self.names), "thing_ids": sorted(self.thing_ids),
                "colors": [list(c) for c in self.colors], "category_ids": list(self.category_ids)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LabelSet:
        names = tuple(str(n) for n in data["names"])
        colors = data.get("colors") or [_fallback_color(i) for i in range(len(names))]
        return cls(str(data.get("name", "custom")), names, frozenset(int(i) for i in data.get("thing_ids", ())),
                   tuple(tuple(int(v) for v in c) for c in colors),
                   tuple(int(i) for i in data.get("category_ids") or range(1, len(names) + 1)))


def _from_table(name: str, table: dict[str, object]) -> LabelSet:
    classes = table["classes"]
    return LabelSet(
        name=name,
        names=tuple(c["name"] for c in classes),
        thing_ids=frozenset(i for i, c in enumerate(classes) if c["isthing"]),
        colors=tuple(tuple(c["color"]) if c["color"] is not None else _fallback_color(i)
                     for i, c in enumerate(classes)),
        category_ids=tuple(int(c["id"]) for c in classes))


LABEL_SET_NAMES = ("coco_panoptic_133", "ade20k_150", "ade20k_full_847", "coco_stuff_171", "cityscapes_19",
                   "mapillary_vistas_65")


@functools.cache
def get_label_set(name: str) -> LabelSet:
    """A label set of the released models by name (see LABEL_SET_NAMES)."""
    if name not in LABEL_SET_NAMES:
        raise MfportError(f"unknown data set {name!r}; known: {', '.join(LABEL_SET_NAMES)}", parameter="dataset")
    return _from_table(name, json.loads((HERE / f"{name}.json").read_text()))


def source_of(name: str) -> dict[str, str]:
    """Where a label set's table was taken from (repository, commit, definition)."""
    get_label_set(name)
    return json.loads((HERE / f"{name}.json").read_text())["source"]


def read_class_names(path: str | os.PathLike[str]) -> LabelSet:
    """A user's class list: a JSON list of names, or of {"name", "isthing"?, "color"?} objects (a
    label_map.json written by `mfport make-tfrecords` is such a list)."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise MfportError(f"{path}: not a readable class-names JSON ({err})", parameter="class_names") from None
    if not isinstance(entries, list) or not entries:
        raise MfportError(f"{path}: expected a JSON list of class names", parameter="class_names")
    names, things, colors = [], set(), []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            names.append(entry)
            colors.append(_fallback_color(index))
            continue
        if not isinstance(entry, dict) or "name" not in entry:
            raise MfportError(f"{path}: entry {index} is neither a name nor an object with a 'name'",
                              parameter="class_names")
        names.append(str(entry["name"]))
        if entry.get("isthing"):
            things.add(index)
        colors.append(tuple(entry["color"]) if entry.get("color") else _fallback_color(index))
    if not things and all(isinstance(e, str) for e in entries):
        things = set(range(len(names)))  # names only: every class a thing, as LabelSet.generic
    return LabelSet(Path(path).stem, tuple(names), frozenset(things), tuple(colors),
                    tuple(range(1, len(names) + 1)))
