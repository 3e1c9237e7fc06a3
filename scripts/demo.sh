#!/usr/bin/env bash
# The main job: set up, write a seeded original-format MaskFormer checkpoint and summarise it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_env.sh"
cd "$MFPORT_ROOT"
out=out/demo
mkdir -p "$out"
mfport presets
mfport init-checkpoint --preset r50_6enc_coco_panoptic --seed 0 -o "$out/r50_6enc_coco_panoptic_seed0.pkl" --force
mfport inspect "$out/r50_6enc_coco_panoptic_seed0.pkl"
