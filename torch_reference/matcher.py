"""Hungarian matcher of MaskFormer: class, sigmoid-focal and dice costs, solved by scipy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """inputs: mask logits [N, P]; targets: binary [M, P] -> [N, M] of 1 - (2 sum pt + 1)/(sum p + sum t + 1)."""
    inputs = inputs.sigmoid()
    numerator = 2 * torch.einsum("nc,mc->nm", inputs, targets)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_focal_cost(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                             gamma: float = 2.0) -> torch.Tensor:
    """Pairwise sigmoid-focal loss averaged over pixels: [N, P] x [M, P] -> [N, M]."""
    num_pixels = inputs.shape[1]
    prob = inputs.sigmoid()
    focal_pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(
        inputs, torch.ones_like(inputs), reduction="none")
    focal_neg = prob ** gamma * F.binary_cross_entropy_with_logits(
        inputs, torch.zeros_like(inputs), reduction="none")
    if alpha >= 0:
        focal_pos = focal_pos * alpha
        focal_neg = focal_neg * (1 - alpha)
    cost = torch.einsum("nc,mc->nm", focal_pos, targets) + torch.einsum("nc,mc->nm", focal_neg, 1 - targets)
    return cost / num_pixels


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrices(self, outputs: dict[str, torch.Tensor],
                      targets: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Per image, the [Q, num_targets] cost matrix the assignment minimises."""
        costs = []
        for b, target in enumerate(targets):
            out_prob = outputs["pred_logits"][b].softmax(-1)
            out_mask = outputs["pred_masks"][b]
            tgt_ids = target["labels"]
            # Targets are brought to the prediction's resolution with NEAREST resizing.
            tgt_mask = F.interpolate(target["masks"][:, None].to(out_mask), size=out_mask.shape[-2:],
                                     mode="nearest")[:, 0]
            out_flat = out_mask.flatten(1)
            tgt_flat = tgt_mask.flatten(1)
            cost = (self.cost_mask * batch_sigmoid_focal_cost(out_flat, tgt_flat, self.focal_alpha,
                                                              self.focal_gamma)
                    + self.cost_class * -out_prob[:, tgt_ids]
                    + self.cost_dice * batch_dice_cost(out_flat, tgt_flat))
            costs.append(cost.reshape(out_prob.shape[0], -1).cpu())
        return costs

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image, (query indices, target indices) of the optimal assignment."""
        indices = []
        for cost in self.cost_matrices(outputs, targets):
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
