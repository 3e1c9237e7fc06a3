"""The tap table: points that exist in both models, with their PyTorch module, layout and TF block.

PyTorch values come from forward hooks on the named module (output, and inputs for isolated mode);
TF values from the model's own tap() points, which carry the same names. Layouts are handled here
once: every value is compared in the TF layout (NHWC, batch-first sequences).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from torch_reference.presets import MaskFormerPreset

# torch layout -> permutation to the TF layout
TO_TF_LAYOUT = {"NCHW": (0, 2, 3, 1), "LBC": (1, 0, 2), "same": None}

TfBlock = Callable[[object, list[np.ndarray], dict[str, np.ndarray]], object]


@dataclasses.dataclass(frozen=True)
class Tap:
    name: str  # shared name, also the TF tap() name
    torch_module: str  # module path in torch_reference.maskformer.MaskFormer
    tf_path: str  # the TF layer it corresponds to (for reports)
    layout: str  # torch output layout, a key of TO_TF_LAYOUT
    isolated: TfBlock | None  # runs the TF block on the PyTorch block's inputs (already in TF layout)
    input_layouts: tuple[str, ...] = ()  # torch layouts of the positional/keyword inputs, in order
    logits: bool = False  # also report argmax agreement over the last axis


def to_tf_layout(value: np.ndarray, layout: str) -> np.ndarray:
    perm = TO_TF_LAYOUT[layout]
    return value if perm is None else np.transpose(value, perm)


def build_taps(preset: MaskFormerPreset) -> list[Tap]:
    """Taps in forward order for a preset."""
    taps = [Tap("backbone/stem", "backbone.stem", "backbone/stem", "NCHW",
                lambda m, a, k: m.backbone.stem(a[0]), ("NCHW",))]
    for index, stage in enumerate(("res2", "res3", "res4", "res5")):
        taps.append(Tap(f"backbone/{stage}", f"backbone.{stage}", f"backbone/{stage}", "NCHW",
                        lambda m, a, k, i=index: m.backbone.stages[i](a[0]), ("NCHW",)))
    decoder = "sem_seg_head.pixel_decoder"
    for index in range(preset.pixel_decoder_enc_layers):
        taps.append(Tap(f"pixel_decoder/encoder_layer_{index}", f"{decoder}.transformer.encoder.layers.{index}",
                        f"sem_seg_head/pixel_decoder/transformer/encoder/layers/{index}", "LBC",
                        lambda m, a, k, i=index: m.sem_seg_head.pixel_decoder.encoder_layers[i](a[0], a[1]),
                        ("LBC", "LBC")))
    for level in (4, 3, 2, 1):
        taps.append(Tap(f"pixel_decoder/layer_{level}", f"{decoder}.layer_{level}",
                        f"sem_seg_head/pixel_decoder/layer_{level}", "NCHW",
                        lambda m, a, k, i=level: m.sem_seg_head.pixel_decoder.layers[i - 1](a[0]), ("NCHW",)))
    taps.append(Tap("pixel_decoder/mask_features", f"{decoder}.mask_features",
                    "sem_seg_head/pixel_decoder/mask_features", "NCHW",
                    lambda m, a, k: m.sem_seg_head.pixel_decoder.mask_features(a[0]), ("NCHW",)))
    predictor = "sem_seg_head.predictor"
    for index in range(preset.dec_layers):
        taps.append(Tap(f"predictor/decoder_layer_{index}", f"{predictor}.transformer.decoder.layers.{index}",
                        f"sem_seg_head/predictor/transformer/decoder/layers/{index}", "LBC",
                        lambda m, a, k, i=index: m.sem_seg_head.predictor.decoder_layers[i](
                            a[0], a[1], k["pos"], k["query_pos"]),
                        ("LBC", "LBC", "LBC", "LBC")))
    taps.append(Tap("predictor/class_embed", f"{predictor}.class_embed", "sem_seg_head/predictor/class_embed",
                    "same", lambda m, a, k: m.sem_seg_head.predictor.class_embed(a[0]), ("same",), logits=True))
    taps.append(Tap("predictor/mask_embed", f"{predictor}.mask_embed", "sem_seg_head/predictor/mask_embed",
                    "same", lambda m, a, k: m.sem_seg_head.predictor.mask_embed(a[0]), ("same",)))
    return taps
