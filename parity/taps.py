"""The tap table: points that exist in both models, with their PyTorch module, layout and TF block.

PyTorch values come from forward hooks on the named module (output, and inputs for isolated mode);
TF values from the model's own tap() points, which carry the same names. Layouts are handled here
once: every value is compared in the TF layout (NHWC, batch-first sequences). Each tap names the taps
that feed it, so a block's amplification (its error out over its error in) can be read off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from mfport.core.presets import MaskFormerPreset, SwinSpec

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
    inputs: tuple[str, ...] = ()  # the taps whose values feed this block ("" = the network input)


def to_tf_layout(value: np.ndarray, layout: str) -> np.ndarray:
    perm = TO_TF_LAYOUT[layout]
    return value if perm is None else np.transpose(value, perm)


def _resnet_taps(preset: MaskFormerPreset) -> list[Tap]:
    taps = []
    if preset.backbone.stem == "deeplab":  # three separate convs, each its own tap
        previous = ""
        for index in range(3):
            name = f"backbone/stem/conv{index + 1}"
            taps.append(Tap(name, f"backbone.stem.conv{index + 1}", name, "NCHW",
                            lambda m, a, k, i=index: m.backbone.stem.convs[i](a[0]), ("NCHW",),
                            inputs=(previous,) if previous else ()))
            previous = name
    taps.append(Tap("backbone/stem", "backbone.stem", "backbone/stem", "NCHW",
                    lambda m, a, k: m.backbone.stem(a[0]), ("NCHW",)))
    previous = "backbone/stem"
    for index, stage in enumerate(("res2", "res3", "res4", "res5")):
        taps.append(Tap(f"backbone/{stage}", f"backbone.{stage}", f"backbone/{stage}", "NCHW",
                        lambda m, a, k, i=index: m.backbone.stages[i](a[0]), ("NCHW",), inputs=(previous,)))
        previous = f"backbone/{stage}"
    return taps


def _swin_taps(spec: SwinSpec) -> list[Tap]:
    """Patch embedding, every block (so a divergence is localised to one block), every stage's normed output."""
    taps = [Tap("backbone/patch_embed", "backbone.patch_embed", "backbone/patch_embed", "NCHW",
                lambda m, a, k: m.backbone.patch_embed(a[0]), ("NCHW",))]
    previous = "backbone/patch_embed"
    for stage, depth in enumerate(spec.depths):
        for block in range(depth):
            name = f"backbone/layers/{stage}/blocks/{block}"
            taps.append(Tap(name, f"backbone.layers.{stage}.blocks.{block}", name, "same",
                            lambda m, a, k, s=stage, b=block: m.backbone.layers[s].blocks[b](
                                a[0], a[1], hw=k["hw"]),
                            ("same", "same"), inputs=(previous,)))
            previous = name
        taps.append(Tap(f"backbone/res{stage + 2}", f"backbone.norm{stage}", f"backbone/norm{stage}", "same",
                        None, inputs=(previous,)))
        if stage < 3:
            name = f"backbone/layers/{stage}/downsample"
            taps.append(Tap(name, f"backbone.layers.{stage}.downsample", name, "same",
                            lambda m, a, k, s=stage: m.backbone.layers[s].downsample(a[0], hw=k["hw"]),
                            ("same",), inputs=(previous,)))
            previous = name
    return taps


def build_taps(preset: MaskFormerPreset) -> list[Tap]:
    """Taps in forward order for a preset."""
    taps = _swin_taps(preset.backbone) if isinstance(preset.backbone, SwinSpec) else _resnet_taps(preset)
    decoder = "sem_seg_head.pixel_decoder"
    top = "backbone/res5"
    for index in range(preset.pixel_decoder_enc_layers):
        taps.append(Tap(f"pixel_decoder/encoder_layer_{index}", f"{decoder}.transformer.encoder.layers.{index}",
                        f"sem_seg_head/pixel_decoder/transformer/encoder/layers/{index}", "LBC",
                        lambda m, a, k, i=index: m.sem_seg_head.pixel_decoder.encoder_layers[i](a[0], a[1]),
                        ("LBC", "LBC"), inputs=(top,)))
        top = f"pixel_decoder/encoder_layer_{index}"
    predictor_input = top
    previous = top
    for level in (4, 3, 2, 1):
        lateral = () if level == 4 else (f"backbone/res{level + 1}",)
        taps.append(Tap(f"pixel_decoder/layer_{level}", f"{decoder}.layer_{level}",
                        f"sem_seg_head/pixel_decoder/layer_{level}", "NCHW",
                        lambda m, a, k, i=level: m.sem_seg_head.pixel_decoder.layers[i - 1](a[0]), ("NCHW",),
                        inputs=(previous, *lateral)))
        previous = f"pixel_decoder/layer_{level}"
    taps.append(Tap("pixel_decoder/mask_features", f"{decoder}.mask_features",
                    "sem_seg_head/pixel_decoder/mask_features", "NCHW",
                    lambda m, a, k: m.sem_seg_head.pixel_decoder.mask_features(a[0]), ("NCHW",),
                    inputs=("pixel_decoder/layer_1",)))
    predictor = "sem_seg_head.predictor"
    previous = ""
    for index in range(preset.dec_layers):
        taps.append(Tap(f"predictor/decoder_layer_{index}", f"{predictor}.transformer.decoder.layers.{index}",
                        f"sem_seg_head/predictor/transformer/decoder/layers/{index}", "LBC",
                        lambda m, a, k, i=index: m.sem_seg_head.predictor.decoder_layers[i](
                            a[0], a[1], k["pos"], k["query_pos"]),
                        ("LBC", "LBC", "LBC", "LBC"), inputs=tuple(t for t in (previous, predictor_input) if t)))
        previous = f"predictor/decoder_layer_{index}"
    taps.append(Tap("predictor/class_embed", f"{predictor}.class_embed", "sem_seg_head/predictor/class_embed",
                    "same", lambda m, a, k: m.sem_seg_head.predictor.class_embed(a[0]), ("same",), logits=True,
                    inputs=(previous,)))
    taps.append(Tap("predictor/mask_embed", f"{predictor}.mask_embed", "sem_seg_head/predictor/mask_embed",
                    "same", lambda m, a, k: m.sem_seg_head.predictor.mask_embed(a[0]), ("same",),
                    inputs=(previous,)))
    return taps
