"""Named MaskFormer presets: the 24 released models, and architectures read off a checkpoint's keys.

Framework-neutral on purpose (no torch, no TensorFlow): both models, the converter and the Model Garden
configs read the same presets, so an architecture is defined exactly once. Values follow the original
configs (facebookresearch/MaskFormer configs/, da3e60d) and mask_former/config.py's defaults; where the
earlier presets disagreed with them (the semantic ADE20K models' panoptic thresholds), the configs win.

Preset names are short forms of the config files ("r101c_ade20k" for ade20k-150/maskformer_R101c_bs16_160k);
get_preset also takes the config path itself.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from mfport.core.errors import MfportError
from mfport.core.labels import LabelSet, get_label_set

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255
PIXEL_STD = (58.395, 57.12, 57.375)

RESNET_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RESNET_STEMS = ("basic", "deeplab")
PIXEL_DECODERS = ("base", "transformer_encoder")
STAGES = ("res2", "res3", "res4", "res5")


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """detectron2's ResNet as MaskFormer configures it (FrozenBN, stride on the 3x3 conv).

    stem "basic": one 7x7/2 conv to 64 channels; "deeplab" (R101c, build_resnet_deeplab_backbone): three
    3x3 convs (3->C/2 stride 2, C/2->C/2, C/2->C with C = stem_out_channels = 128). res5's 3x3 convs are
    dilated by res5_multi_grid[i] (padding = dilation), stride unchanged.
    """

    depth: int
    stem: str = "basic"
    stem_out_channels: int = 64
    res5_multi_grid: tuple[int, int, int] = (1, 1, 1)
    kind: ClassVar[str] = "resnet"

    def __post_init__(self) -> None:
        if self.depth not in RESNET_STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_STAGE_BLOCKS)}, not {self.depth}")
        if self.stem not in RESNET_STEMS:
            raise ValueError(f"ResNet stem must be one of {RESNET_STEMS}, not {self.stem!r}")

    @property
    def stage_blocks(self) -> tuple[int, int, int, int]:
        return RESNET_STAGE_BLOCKS[self.depth]

    @property
    def channels(self) -> tuple[int, int, int, int]:
        return (256, 512, 1024, 2048)

    @property
    def label(self) -> str:
        return f"R{self.depth}" + ("c" if self.stem == "deeplab" else "")


@dataclasses.dataclass(frozen=True)
class SwinSpec:
    """The Swin Transformer of mask_former/modeling/backbone/swin.py (D2SwinTransformer): patch 4, mlp
    ratio 4, qkv bias, no absolute position embedding, patch norm, per-stage output norms."""

    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    pretrain_img_size: int = 224
    kind: ClassVar[str] = "swin"

    def __post_init__(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError("Swin depths and num_heads need one entry per stage (4)")
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ValueError(f"Swin stage {stage}: {self.embed_dim * 2**stage} channels do not split "
                                 f"into {heads} heads")

    @property
    def channels(self) -> tuple[int, int, int, int]:
        return tuple(self.embed_dim * 2**i for i in range(4))

    @property
    def shift_size(self) -> int:
        return self.window_size // 2

    @property
    def label(self) -> str:
        size = next((name for name, spec in SWIN_SIZES.items()
                     if (spec.embed_dim, spec.depths, spec.num_heads) == (self.embed_dim, self.depths,
                                                                          self.num_heads)), None)
        base = f"Swin-{size}" if size else f"Swin(C={self.embed_dim}, depths={list(self.depths)})"
        return base + (f" (w{self.window_size})" if self.window_size != 7 else "")


SWIN_SIZES = {
    "T": SwinSpec(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "S": SwinSpec(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "B": SwinSpec(128, (2, 2, 18, 2), (4, 8, 16, 32), window_size=12, pretrain_img_size=384),
    "L": SwinSpec(192, (2, 2, 18, 2), (6, 12, 24, 48), window_size=12, pretrain_img_size=384),
}

BackboneSpec = ResNetSpec | SwinSpec


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """The original solver settings (detectron2 SOLVER.* of the config) that fine-tuning starts from."""

    base_lr: float = 1e-4
    weight_decay: float = 1e-4
    backbone_multiplier: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 1.0
    max_iter: int = 160_000
    batch_size: int = 16
    crop_size: tuple[int, int] = (512, 512)
    clip_full_model_norm: float = 0.01
    poly_power: float = 0.9
    # Parameters without weight decay (WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0, and train_net.py's
    # relative_position_bias_table / absolute_pos_embed rule), as substrings of TF variable paths.
    no_decay_patterns: tuple[str, ...] = ("norm", "query_embed", "relative_position_bias_table")


SWIN_RECIPE = dict(base_lr=6e-5, weight_decay=0.01, backbone_multiplier=1.0, warmup_steps=1500, warmup_factor=1e-6)


@dataclasses.dataclass(frozen=True)
class MaskFormerPreset:
    """Architecture, input, inference and loss settings of one MaskFormer model."""

    name: str
    description: str
    original_config: str  # path under the original repository's configs/, "" for a custom architecture
    labels: LabelSet
    num_classes: int
    backbone: BackboneSpec
    pixel_decoder: str  # "base" (BasePixelDecoder) or "transformer_encoder" ("+6 Enc")
    published_result: str | None = None  # e.g. "44.5 mIoU" (MODEL_ZOO.md)
    published_params_m: float | None = None  # published parameter count, millions, frozen-BN buffers excluded
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
    # Input: normalisation, padding of the batch, and the predictor's test-time resize
    # (ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) of detectron2's DefaultPredictor).
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    size_divisibility: int = 32
    test_min_size: int = 512
    test_max_size: int = 2048
    # Inference.
    semantic_on: bool = True
    panoptic_on: bool = False
    object_mask_threshold: float = 0.0
    overlap_threshold: float = 0.0
    # Losses and matching.
    no_object_weight: float = 0.1
    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    recipe: TrainingRecipe = dataclasses.field(default_factory=TrainingRecipe)

    def __post_init__(self) -> None:
        if self.pixel_decoder not in PIXEL_DECODERS:
            raise ValueError(f"preset {self.name}: pixel_decoder must be one of {PIXEL_DECODERS}")
        if self.transformer_in_feature == "transformer_encoder" and self.pixel_decoder != "transformer_encoder":
            raise ValueError(f"preset {self.name}: transformer_encoder input needs the transformer_encoder decoder")
        if len(self.labels) != self.num_classes:
            raise ValueError(f"preset {self.name}: {self.num_classes} classes but label set "
                             f"{self.labels.name!r} has {len(self.labels)}")

    @property
    def backbone_channels(self) -> tuple[int, int, int, int]:
        return self.backbone.channels

    @property
    def no_object_index(self) -> int:
        """The original keeps "no object" as the LAST class index."""
        return self.num_classes

    @property
    def predictor_in_channels(self) -> int:
        return self.conv_dim if self.transformer_in_feature == "transformer_encoder" else self.backbone.channels[-1]

    @property
    def has_predictor_input_proj(self) -> bool:
        return self.predictor_in_channels != self.hidden_dim or self.enforce_input_proj

    @property
    def thing_ids(self) -> frozenset[int]:
        return self.labels.thing_ids

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def postprocess_before_semantic_inference(self) -> bool:
        """Original: SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE (False) or PANOPTIC_ON."""
        return self.panoptic_on

    @property
    def architecture_label(self) -> str:
        decoder = "BasePixelDecoder" if self.pixel_decoder == "base" else f"+{self.pixel_decoder_enc_layers} Enc"
        return f"{self.backbone.label}, {decoder}"

    def with_overrides(self, **changes: object) -> MaskFormerPreset:
        """A copy with some fields changed; another class count without new labels gets generic ones."""
        if "num_classes" in changes and "labels" not in changes and changes["num_classes"] != self.num_classes:
            changes["labels"] = LabelSet.generic(int(changes["num_classes"]))
        return dataclasses.replace(self, **changes)

    # Serialisation (manifest.json, params.yaml): every field, the backbone tagged by its kind.
    def to_dict(self) -> dict[str, object]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["backbone"] = {"kind": self.backbone.kind, **dataclasses.asdict(self.backbone)}
        data["labels"] = ({"name": self.labels.name} if self.labels == _known_labels(self.labels.name)
                          else self.labels.to_dict())
        data["recipe"] = dataclasses.asdict(self.recipe)
        return _jsonable(data)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> MaskFormerPreset:
        data = dict(data)
        backbone = dict(data.pop("backbone"))
        kind = backbone.pop("kind")
        spec_type = {"resnet": ResNetSpec, "swin": SwinSpec}[kind]
        labels = data.pop("labels")
        recipe = data.pop("recipe", {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ValueError(f"unknown preset fields {sorted(unknown)}")
        return cls(backbone=spec_type(**_tuples(backbone)),
                   labels=get_label_set(labels["name"]) if set(labels) == {"name"} else LabelSet.from_dict(labels),
                   recipe=TrainingRecipe(**_tuples(recipe)), **_tuples(data))


def _known_labels(name: str) -> LabelSet | None:
    try:
        return get_label_set(name)
    except MfportError:
        return None


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _tuples(data: dict[str, object]) -> dict[str, object]:
    """JSON lists back to the tuples the frozen dataclasses hold."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in data.items()}


# The released models ------------------------------------------------------------------------------------

R50, R101 = ResNetSpec(50), ResNetSpec(101)
R101C = ResNetSpec(101, stem="deeplab", stem_out_channels=128, res5_multi_grid=(1, 2, 4))
ENC6 = dict(pixel_decoder="transformer_encoder", pixel_decoder_enc_layers=6,
            transformer_in_feature="transformer_encoder")


def _preset(name: str, config: str, dataset: str, backbone: BackboneSpec, result: str, decoder: str = "base",
            params: float | None = None, recipe: dict | None = None, **fields: object) -> MaskFormerPreset:
    labels = get_label_set(dataset)
    decoder_fields = ENC6 if decoder == "enc6" else {"pixel_decoder": "base"}
    description = f"{backbone.label} + {'6 Enc' if decoder == 'enc6' else 'BasePixelDecoder'}, {dataset} ({result})"
    return MaskFormerPreset(name=name, description=description, original_config=config, labels=labels,
                            num_classes=len(labels), backbone=backbone, published_result=result,
                            published_params_m=params, recipe=TrainingRecipe(**(recipe or {})),
                            **decoder_fields, **fields)


def _ade20k(name: str, stem: str, backbone: BackboneSpec, result: str, params: float | None = None,
            size: int = 512, recipe: dict | None = None) -> MaskFormerPreset:
    return _preset(name, f"ade20k-150/{stem}", "ade20k_150", backbone, result, params=params,
                   test_min_size=size, test_max_size=4 * size,
                   recipe={"max_iter": 160_000, "crop_size": (size, size), **(recipe or {})})


def _coco_panoptic(name: str, stem: str, backbone: BackboneSpec, result: str, decoder: str,
                   params: float | None = None, recipe: dict | None = None, **fields: object) -> MaskFormerPreset:
    return _preset(name, f"coco-panoptic/{stem}", "coco_panoptic_133", backbone, result, decoder=decoder,
                   params=params, size_divisibility=0, test_min_size=800, test_max_size=1333, semantic_on=False,
                   panoptic_on=True, object_mask_threshold=0.8, overlap_threshold=0.8,
                   recipe={"batch_size": 64, "max_iter": 554_400, "warmup_steps": 10, "crop_size": (1024, 1024),
                           **(recipe or {})}, **fields)


def _swin(size: str, **changes: object) -> SwinSpec:
    return dataclasses.replace(SWIN_SIZES[size], **changes)


_SWIN_COCO = dict(enforce_input_proj=True, recipe=SWIN_RECIPE)

PRESETS: dict[str, MaskFormerPreset] = {p.name: p for p in (
    # ADE20K-150 semantic.
    _ade20k("r50_ade20k", "maskformer_R50_bs16_160k", R50, "44.5 mIoU", params=41.25),
    _ade20k("r101_ade20k", "maskformer_R101_bs16_160k", R101, "45.5 mIoU", params=60.19),
    _ade20k("r101c_ade20k", "maskformer_R101c_bs16_160k", R101C, "46.0 mIoU"),
    _ade20k("swin_t_ade20k", "swin/maskformer_swin_tiny_bs16_160k", _swin("T"), "46.7 mIoU", params=41.76,
            recipe=SWIN_RECIPE),
    _ade20k("swin_s_ade20k", "swin/maskformer_swin_small_bs16_160k", _swin("S"), "49.8 mIoU", params=63.07,
            recipe=SWIN_RECIPE),
    _ade20k("swin_b_ade20k", "swin/maskformer_swin_base_IN21k_384_bs16_160k_res640", _swin("B"), "52.7 mIoU",
            params=101.83, size=640, recipe=SWIN_RECIPE),
    _ade20k("swin_l_ade20k", "swin/maskformer_swin_large_IN21k_384_bs16_160k_res640", _swin("L"), "54.1 mIoU",
            params=211.58, size=640, recipe=SWIN_RECIPE),
    # ADE20K-150 panoptic (+6 Enc).
    *(_preset(f"r{d}_6enc_ade20k_panoptic", f"ade20k-150-panoptic/maskformer_panoptic_R{d}_bs16_720k", "ade20k_150",
              spec, result, decoder="enc6", test_min_size=640, test_max_size=2560, panoptic_on=True,
              object_mask_threshold=0.7, overlap_threshold=0.8, recipe={"max_iter": 720_000, "crop_size": (640, 640)})
      for d, spec, result in ((50, R50, "34.7 PQ"), (101, R101, "35.7 PQ"))),
    # ADE20K-Full-847.
    *(_preset(f"{tag}_ade20k_full", f"ade20k-full-847/maskformer_{label}_bs16_200k", "ade20k_full_847", spec, result,
              recipe={"max_iter": 200_000})
      for tag, label, spec, result in (("r50", "R50", R50, "16.0 mIoU"), ("r101", "R101", R101, "16.8 mIoU"),
                                       ("r101c", "R101c", R101C, "17.4 mIoU"))),
    # COCO-Stuff-10K-171.
    *(_preset(f"{tag}_coco_stuff", f"coco-stuff-10k-171/maskformer_{label}_bs32_60k", "coco_stuff_171", spec, result,
              test_min_size=640, test_max_size=2560,
              recipe={"batch_size": 32, "max_iter": 60_000, "crop_size": (640, 640)})
      for tag, label, spec, result in (("r50", "R50", R50, "37.1 mIoU"), ("r101", "R101", R101, "38.1 mIoU"),
                                       ("r101c", "R101c", R101C, "38.0 mIoU"))),
    # Cityscapes-19.
    *(_preset(f"{tag}_cityscapes", f"cityscapes-19/maskformer_{label}_bs16_90k", "cityscapes_19", spec, result,
              test_min_size=1024, test_max_size=2048, recipe={"max_iter": 90_000, "crop_size": (512, 1024)})
      for tag, label, spec, result in (("r101", "R101", R101, "78.5 mIoU"), ("r101c", "R101c", R101C, "79.7 mIoU"))),
    # Mapillary Vistas-65.
    _preset("r50_vistas", "mapillary-vistas-65/maskformer_R50_bs16_300k", "mapillary_vistas_65", R50, "53.1 mIoU",
            test_min_size=2048, test_max_size=2048, recipe={"max_iter": 300_000, "crop_size": (1280, 1280)}),
    # COCO panoptic.
    _coco_panoptic("r50_6enc_coco_panoptic", "maskformer_panoptic_R50_bs64_554k", R50, "46.5 PQ", "enc6", params=45.01),
    _coco_panoptic("r101_6enc_coco_panoptic", "maskformer_panoptic_R101_bs64_554k", R101, "47.6 PQ", "enc6",
                   params=63.95),
    _coco_panoptic("swin_t_coco_panoptic", "swin/maskformer_panoptic_swin_tiny_bs64_554k", _swin("T"), "47.7 PQ",
                   "base", **_SWIN_COCO),
    _coco_panoptic("swin_s_coco_panoptic", "swin/maskformer_panoptic_swin_small_bs64_554k", _swin("S"), "49.7 PQ",
                   "base", **_SWIN_COCO),
    _coco_panoptic("swin_b_coco_panoptic", "swin/maskformer_panoptic_swin_base_IN21k_384_bs64_554k", _swin("B"),
                   "51.8 PQ", "base", **_SWIN_COCO),
    _coco_panoptic("swin_l_coco_panoptic", "swin/maskformer_panoptic_swin_large_IN21k_384_bs64_554k", _swin("L"),
                   "52.7 PQ", "base", **_SWIN_COCO),
)}

# Rounded counts of the paper's table for the COCO panoptic Swin models (millions).
PAPER_PARAMS_M = {"swin_t_coco_panoptic": 42, "swin_s_coco_panoptic": 63, "swin_b_coco_panoptic": 102,
                  "swin_l_coco_panoptic": 212}


def get_preset(name: str) -> MaskFormerPreset:
    """A released model's preset by short name, or by its config path (with or without .yaml)."""
    key = name.removesuffix(".yaml").removeprefix("configs/")
    if key in PRESETS:
        return PRESETS[key]
    for preset in PRESETS.values():
        if key in (preset.original_config, preset.original_config.rsplit("/", 1)[-1]):
            return preset
    raise MfportError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} (or their config paths)",
                      parameter="preset")
