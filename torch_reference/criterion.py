"""SetCriterion of MaskFormer: CE with a "no object" weight, sigmoid-focal and dice mask losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfport.core.presets import MaskFormerPreset
from mfport.torch_reference.matcher import HungarianMatcher

LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice")


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float,
                       alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels, summed over masks, divided by num_masks."""
    prob = inputs.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class SetCriterion(nn.Module):
    """Holds `empty_weight` (K+1, last entry = no-object weight) as the checkpoints do."""

    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__()
        self.num_classes = preset.num_classes
        self.focal_alpha = preset.focal_alpha
        self.focal_gamma = preset.focal_gamma
        self.matcher = HungarianMatcher(preset.class_weight, preset.mask_weight, preset.dice_weight,
                                        preset.focal_alpha, preset.focal_gamma)
        empty_weight = torch.ones(preset.num_classes + 1)
        empty_weight[-1] = preset.no_object_weight
        self.register_buffer("empty_weight", empty_weight)
        base = {"loss_ce": preset.class_weight, "loss_mask": preset.mask_weight, "loss_dice": preset.dice_weight}
        self.weight_dict = dict(base)
        if preset.deep_supervision:
            for layer in range(preset.dec_layers - 1):
                self.weight_dict.update({f"{name}_{layer}": w for name, w in base.items()})

    def loss_labels(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                    indices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        logits = outputs["pred_logits"]
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, ((src, tgt), target) in enumerate(zip(indices, targets, strict=True)):
            target_classes[b, src] = target["labels"][tgt]
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)

    def loss_masks(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                   indices: list[tuple[torch.Tensor, torch.Tensor]], num_masks: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        pred_masks = outputs["pred_masks"]
        src_masks = torch.cat([pred_masks[b, src] for b, (src, _) in enumerate(indices)])
        tgt_masks = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)]).to(src_masks)
        # Predictions are upsampled bilinearly to the (padded) target size.
        src_masks = F.interpolate(src_masks[:, None], size=tgt_masks.shape[-2:], mode="bilinear",
                                  align_corners=False)[:, 0].flatten(1)
        tgt_masks = tgt_masks.flatten(1)
        return (sigmoid_focal_loss(src_masks, tgt_masks, num_masks, self.focal_alpha, self.focal_gamma),
                dice_loss(src_masks, tgt_masks, num_masks))

    @staticmethod
    def num_masks(targets: list[dict[str, torch.Tensor]], world_size: int = 1) -> float:
        """Total target masks (summed over replicas by the caller), averaged per replica, at least 1."""
        return max(sum(len(t["labels"]) for t in targets) / world_size, 1.0)

    def forward(self, outputs: dict[str, object], targets: list[dict[str, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
        """Unweighted loss terms: loss_ce/loss_mask/loss_dice and loss_*_{i} for aux layer i.

        targets: per image {"labels": int64 [N], "masks": [N, H, W]} with H, W the padded input size.
        """
        layers = [outputs, *outputs.get("aux_outputs", [])]
        return self.forward_with_indices(outputs, targets, [self.matcher(layer, targets) for layer in layers])

    def forward_with_indices(self, outputs: dict[str, object], targets: list[dict[str, torch.Tensor]],
                             indices: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        """The loss terms for given assignments (per layer, final first, then each aux layer)."""
        num_masks = self.num_masks(targets)
        losses = {}
        for position, layer in enumerate([outputs, *outputs.get("aux_outputs", [])]):
            loss_mask, loss_dice = self.loss_masks(layer, targets, indices[position], num_masks)
            suffix = "" if position == 0 else f"_{position - 1}"
            losses.update({f"loss_ce{suffix}": self.loss_labels(layer, targets, indices[position]),
                           f"loss_mask{suffix}": loss_mask, f"loss_dice{suffix}": loss_dice})
        return losses

    def weighted(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v * self.weight_dict[k] for k, v in losses.items()}
