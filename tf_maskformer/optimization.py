"""The original recipe's AdamW for the Model Garden's optimizer factory (type "maskformer_adamw").

detectron2's MaskFormer optimiser scales the backbone's learning rate by BACKBONE_MULTIPLIER (0.1); the
Model Garden's AdamWeightDecay has one learning rate, so this subclass scales the per-variable
coefficients (learning rate in the weight-decay and Adam updates alike) of variables matching a pattern.
Decoupled weight decay var -= lr * wd * var is torch.optim.AdamW's.
"""

from __future__ import annotations

import re

import tensorflow as tf
from official.modeling.optimization import legacy_adamw, optimizer_factory


class MaskFormerAdamW(legacy_adamw.AdamWeightDecay):
    def __init__(self, *args: object, backbone_lr_multiplier: float = 0.1, backbone_pattern: str = "/backbone/",
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.backbone_lr_multiplier = backbone_lr_multiplier
        self.backbone_pattern = backbone_pattern

    def _scaled_state(self, var: tf.Variable, apply_state: dict | None) -> dict | None:
        if self.backbone_lr_multiplier == 1.0 or not re.search(self.backbone_pattern, var.name):
            return apply_state
        key = (var.device, var.dtype.base_dtype)
        coefficients = dict((apply_state or {}).get(key) or self._fallback_apply_state(*key))
        for name in ("lr_t", "lr"):
            coefficients[name] = coefficients[name] * self.backbone_lr_multiplier
        return {**(apply_state or {}), key: coefficients}

    def _resource_apply_dense(self, grad: tf.Tensor, var: tf.Variable, apply_state: dict | None = None) -> tf.Operation:
        return super()._resource_apply_dense(grad, var, self._scaled_state(var, apply_state))

    def _resource_apply_sparse(self, grad: tf.Tensor, var: tf.Variable, indices: tf.Tensor,
                               apply_state: dict | None = None) -> tf.Operation:
        return super()._resource_apply_sparse(grad, var, indices, self._scaled_state(var, apply_state))

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "backbone_lr_multiplier": self.backbone_lr_multiplier,
                "backbone_pattern": self.backbone_pattern}


optimizer_factory.register_optimizer_cls("maskformer_adamw", MaskFormerAdamW)
