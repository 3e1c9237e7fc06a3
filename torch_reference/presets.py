"""Named MaskFormer presets: every size, threshold and loss weight of a model lives here.

Framework-neutral on purpose (no torch import): the TensorFlow model and the converter read the same
presets, so an architecture is defined exactly once. Values follow the original configs
(facebookresearch/MaskFormer configs/ade20k-150/maskformer_R50_bs16_160k.yaml and
configs/coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml, plus their R101 twins).
"""

from __future__ import annotations

import dataclasses

from torch_reference import class_metadata

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255
PIXEL_STD = (58.395, 57.12, 57.375)

RESNET_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
PIXEL_DECODERS = ("base", "transformer_encoder")


@dataclasses.dataclass(frozen=True)
class MaskFormerPreset:
    """Architecture, input, inference and loss settings of one released MaskFormer model."""

    name: str
    description: str
    original_config: str
    dataset: str  # key into class_metadata.DATASETS
    num_classes: int
    backbone_depth: int  # 50 or 101
    pixel_decoder: str  # "base" (BasePixelDecoder) or "transformer_encoder" (R50 + 6 Enc)
    published_params_m: float  # published parameter count, millions, frozen-BN buffers excluded
    # Pixel decoder.
    conv_dim: int = 256
    mask_dim: int = 256
    norm_groups: int = 32
    pixel_decoder_enc_layers: int = 0
    # Transformer predictor. transformer_in_feature "res5" or "transformer_encoder".
    transformer_in_feature: str = "res5"
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 6
    dropout: float = 0.1
    pre_norm: bool = False
    enforce_input_proj: bool = False
    deep_supervision: bool = True
    # Numerics shared by every norm layer of the original.
    norm_eps: float = 1e-5
    # Input.
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    size_divisibility: int = 32
    # Inference.
    semantic_on: bool = True
    panoptic_on: bool = False
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    # Losses and matching.
    no_object_weight: float = 0.1
    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.backbone_depth not in RESNET_STAGE_BLOCKS:
            raise ValueError(f"preset {self.name}: backbone_depth must be one of {sorted(RESNET_STAGE_BLOCKS)}")
        if self.pixel_decoder not in PIXEL_DECODERS:
            raise ValueError(f"preset {self.name}: pixel_decoder must be one of {PIXEL_DECODERS}")
        if self.transformer_in_feature == "transformer_encoder" and self.pixel_decoder != "transformer_encoder":
            raise ValueError(f"preset {self.name}: transformer_encoder input needs the transformer_encoder decoder")

    @property
    def stage_blocks(self) -> tuple[int, int, int, int]:
        return RESNET_STAGE_BLOCKS[self.backbone_depth]

    @property
    def no_object_index(self) -> int:
        """The original keeps "no object" as the LAST class index."""
        return self.num_classes

    @property
    def predictor_in_channels(self) -> int:
        return self.conv_dim if self.transformer_in_feature == "transformer_encoder" else 2048

    @property
    def has_predictor_input_proj(self) -> bool:
        return self.predictor_in_channels != self.hidden_dim or self.enforce_input_proj

    @property
    def thing_ids(self) -> frozenset[int]:
        return class_metadata.DATASETS[self.dataset].thing_ids

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_metadata.DATASETS[self.dataset].names

    @property
    def postprocess_before_semantic_inference(self) -> bool:
        """Original: SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE (False) or PANOPTIC_ON."""
        return self.panoptic_on

    def with_overrides(self, **changes: object) -> MaskFormerPreset:
        return dataclasses.replace(self, **changes)


def _preset(depth: int, decoder: str, dataset: str, published: float, **kw: object) -> MaskFormerPreset:
    return MaskFormerPreset(backbone_depth=depth, pixel_decoder=decoder, dataset=dataset,
                            num_classes=len(class_metadata.DATASETS[dataset].names),
                            published_params_m=published, **kw)


PRESETS: dict[str, MaskFormerPreset] = {
    p.name: p
    for p in (
        _preset(50, "base", "ade20k_150", 41.25, name="r50_ade20k",
                description="R50 + BasePixelDecoder, ADE20K-150 semantic (44.5 mIoU)",
                original_config="ade20k-150/maskformer_R50_bs16_160k.yaml",
                object_mask_threshold=0.7),
        _preset(101, "base", "ade20k_150", 60.19, name="r101_ade20k",
                description="R101 + BasePixelDecoder, ADE20K-150 semantic",
                original_config="ade20k-150/maskformer_R101_bs16_160k.yaml",
                object_mask_threshold=0.7),
        _preset(50, "transformer_encoder", "coco_panoptic_133", 45.01, name="r50_6enc_coco_panoptic",
                description="R50 + 6 Enc, COCO panoptic-133 (46.5 PQ)",
                original_config="coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml",
                pixel_decoder_enc_layers=6, transformer_in_feature="transformer_encoder",
                size_divisibility=0, semantic_on=False, panoptic_on=True),
        _preset(101, "transformer_encoder", "coco_panoptic_133", 63.95, name="r101_6enc_coco_panoptic",
                description="R101 + 6 Enc, COCO panoptic-133",
                original_config="coco-panoptic/maskformer_panoptic_R101_bs64_554k.yaml",
                pixel_decoder_enc_layers=6, transformer_in_feature="transformer_encoder",
                size_divisibility=0, semantic_on=False, panoptic_on=True),
    )
}


def get_preset(name: str) -> MaskFormerPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None

