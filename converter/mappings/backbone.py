"""ResNet backbone (detectron2 names) -> tf_maskformer backbone. FrozenBN keeps its four buffer names."""

from __future__ import annotations

from mfport.converter.rules import IDENTITY, Rule, conv

CONV = r"stem\.conv[1-3]|res[2-5]\.\d+\.(?:conv[1-3]|shortcut)"

RULES: tuple[Rule, ...] = (
    *conv(f"backbone.{{conv:{CONV}}}", "backbone/{conv}"),
    *(Rule(f"backbone.{{conv:{CONV}}}.norm.{buffer}", (f"backbone/{{conv}}/norm/{buffer}",), IDENTITY)
      for buffer in ("weight", "bias", "running_mean", "running_var")),
)
