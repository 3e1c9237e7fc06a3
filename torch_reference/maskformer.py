"""The MaskFormer meta-architecture: normalisation, padding, backbone, head, losses and inference.

Module tree (and so state-dict names) as the live original: backbone.*, sem_seg_head.pixel_decoder.*,
sem_seg_head.predictor.*, criterion.empty_weight. Released model-zoo files flatten the pixel decoder
(`sem_seg_head.adapter_1...`): converter.naming translates between the two eras.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from mfport.core.presets import MaskFormerPreset
from mfport.torch_reference.backbone import build_backbone
from mfport.torch_reference.criterion import SetCriterion
from mfport.torch_reference.pixel_decoder import build_pixel_decoder
from mfport.torch_reference.transformer_predictor import TransformerPredictor


class MaskFormerHead(nn.Module):
    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__()
        self.pixel_decoder = build_pixel_decoder(preset)
        self.predictor = TransformerPredictor(preset)
        self.transformer_in_feature = preset.transformer_in_feature

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, object]:
        mask_features, encoder_features = self.pixel_decoder.forward_features(features)
        if self.transformer_in_feature == "transformer_encoder":
            return self.predictor(encoder_features, mask_features)
        return self.predictor(features[self.transformer_in_feature], mask_features)


@dataclasses.dataclass
class PanopticSegment:
    id: int
    category_id: int
    isthing: bool
    area: int


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """mask_cls [Q, K+1] logits, mask_pred [Q, H, W] logits -> per-class scores [K, H, W]."""
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def panoptic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, num_classes: int,
                       thing_ids: frozenset[int], object_mask_threshold: float,
                       overlap_threshold: float) -> tuple[torch.Tensor, list[PanopticSegment]]:
    """Original MaskFormer panoptic merge: returns an int32 [H, W] segment-id map (0 = void) and segments."""
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    mask_pred = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    height, width = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_pred.device)
    segments: list[PanopticSegment] = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments
    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    stuff_segment_ids: dict[int, int] = {}
    current_segment_id = 0
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k])
        isthing = pred_class in thing_ids
        mask = cur_mask_ids == k
        mask_area = int(mask.sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        if mask_area == 0 or original_area == 0 or mask_area / original_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segment_ids:  # all segments of one stuff class merge
            segment_id = stuff_segment_ids[pred_class]
            panoptic_seg[mask] = segment_id
            next(s for s in segments if s.id == segment_id).area += mask_area
            continue
        current_segment_id += 1
        if not isthing:
            stuff_segment_ids[pred_class] = current_segment_id
        panoptic_seg[mask] = current_segment_id
        segments.append(PanopticSegment(current_segment_id, pred_class, isthing, mask_area))
    return panoptic_seg, segments


def crop_and_resize(maps: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]
                    ) -> torch.Tensor:
    """[C, Hp, Wp] -> crop to image_size -> bilinear (align_corners=False) resize to output_size."""
    height, width = image_size
    cropped = maps[None, :, :height, :width]
    return F.interpolate(cropped, size=tuple(output_size), mode="bilinear", align_corners=False)[0]


class MaskFormer(nn.Module):
    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__()
        self.preset = preset
        self.backbone = build_backbone(preset)
        self.sem_seg_head = MaskFormerHead(preset)
        self.criterion = SetCriterion(preset)
        # Not in the checkpoints (non-persistent buffers in the original too).
        self.register_buffer("pixel_mean", torch.tensor(preset.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(preset.pixel_std).view(-1, 1, 1), persistent=False)

    def preprocess(self, images: list[torch.Tensor] | torch.Tensor
                   ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB 0..255 images [3, H, W] -> normalised batch zero-padded bottom/right to the largest image,
        rounded up to size_divisibility; plus each image's (H, W)."""
        images = [(img.to(self.pixel_mean) - self.pixel_mean) / self.pixel_std for img in images]
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        stride = self.preset.size_divisibility
        if stride > 1:
            max_h = (max_h + stride - 1) // stride * stride
            max_w = (max_w + stride - 1) // stride * stride
        batch = images[0].new_zeros((len(images), 3, max_h, max_w))
        for b, img in enumerate(images):
            batch[b, :, : img.shape[-2], : img.shape[-1]] = img
        return batch, sizes

    def forward_padded(self, padded: torch.Tensor) -> dict[str, object]:
        """The network on an already normalised and padded batch [B, 3, H, W]."""
        return self.sem_seg_head(self.backbone(padded))

    def forward(self, images: list[torch.Tensor] | torch.Tensor) -> dict[str, object]:
        """RGB 0..255 -> {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H/4, W/4], "aux_outputs": [...]}."""
        padded, _ = self.preprocess(images)
        return self.forward_padded(padded)

    def prepare_targets(self, targets: list[dict[str, torch.Tensor]], padded_size: tuple[int, int]
                        ) -> list[dict[str, torch.Tensor]]:
        """Zero-pad each image's binary masks [N, h, w] to the padded batch size."""
        prepared = []
        for target in targets:
            masks = target["masks"]
            padded = masks.new_zeros((masks.shape[0], *padded_size))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            prepared.append({"labels": target["labels"], "masks": padded})
        return prepared

    def losses(self, images: list[torch.Tensor] | torch.Tensor,
               targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Weighted loss terms of the training forward (final output and every aux layer)."""
        padded, _ = self.preprocess(images)
        outputs = self.forward_padded(padded)
        terms = self.criterion(outputs, self.prepare_targets(targets, tuple(padded.shape[-2:])))
        return self.criterion.weighted(terms)

    @torch.no_grad()
    def inference(self, images: list[torch.Tensor] | torch.Tensor,
                  output_sizes: list[tuple[int, int]] | None = None,
                  object_mask_threshold: float | None = None,
                  overlap_threshold: float | None = None) -> list[dict[str, object]]:
        """Per image: "sem_seg" [K, h, w] scores and "panoptic_seg" (id map, segments), at output size."""
        padded, sizes = self.preprocess(images)
        return self.postprocess(self.forward_padded(padded), tuple(padded.shape[-2:]), sizes, output_sizes,
                                object_mask_threshold, overlap_threshold)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, object], padded_size: tuple[int, int], sizes: list[tuple[int, int]],
                    output_sizes: list[tuple[int, int]] | None = None, object_mask_threshold: float | None = None,
                    overlap_threshold: float | None = None, semantic: bool = True, panoptic: bool = True
                    ) -> list[dict[str, object]]:
        """The inference of `inference` on raw outputs already computed for a padded batch ("sem_seg" only if
        `semantic`, "panoptic_seg" only if `panoptic`)."""
        mask_preds = F.interpolate(outputs["pred_masks"], size=padded_size, mode="bilinear", align_corners=False)
        preset = self.preset
        results = []
        for b, (height, width) in enumerate(sizes):
            out_size = output_sizes[b] if output_sizes else (height, width)
            mask_cls = outputs["pred_logits"][b]
            # Crop the padding, then resize to the output size (detectron2's sem_seg_postprocess); semantic configs
            # without a panoptic pass never read it.
            needs_mask_pred = panoptic or (semantic and preset.postprocess_before_semantic_inference)
            mask_pred = crop_and_resize(mask_preds[b], (height, width), out_size) if needs_mask_pred else None
            result: dict[str, object] = {}
            if semantic and preset.postprocess_before_semantic_inference:
                result["sem_seg"] = semantic_inference(mask_cls, mask_pred)
            elif semantic:  # semantic configs: scores on the padded grid first, then crop and resize them
                result["sem_seg"] = crop_and_resize(semantic_inference(mask_cls, mask_preds[b]), (height, width),
                                                    out_size)
            if panoptic:
                result["panoptic_seg"] = panoptic_inference(
                    mask_cls, mask_pred, preset.num_classes, preset.thing_ids,
                    preset.object_mask_threshold if object_mask_threshold is None else object_mask_threshold,
                    preset.overlap_threshold if overlap_threshold is None else overlap_threshold)
            results.append(result)
        return results
