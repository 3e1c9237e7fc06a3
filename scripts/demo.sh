#!/usr/bin/env bash
# The main job: set up; write a seeded original-format MaskFormer checkpoint, inspect it, convert it to
# TensorFlow (checkpoint + SavedModel), convert it back and check it bit for bit, prove the two models
# agree tap by tap (parity report), segment images, and fine-tune the converted model.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_env.sh"
cd "$MFPORT_ROOT"
out=out/demo
preset=r50_6enc_coco_panoptic
mkdir -p "$out"
mfport presets
mfport init-checkpoint --preset "$preset" --seed 0 -o "$out/${preset}_seed0.pkl" --force
mfport inspect "$out/${preset}_seed0.pkl"
mfport convert "$out/${preset}_seed0.pkl" -o "$out/tf_model" --format tf-checkpoint --format keras --saved-model --force
mfport convert "$out/tf_model" --to torch -o "$out/roundtrip.pkl" --force
python - "$out/${preset}_seed0.pkl" "$out/roundtrip.pkl" <<'PY'
import sys
from converter.checkpoint_io import read_checkpoint
a, b = (read_checkpoint(p).tensors for p in sys.argv[1:])
same = a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
print(f"round trip PyTorch -> TF -> PyTorch: {len(a)} tensors, bit-exact: {same}")
sys.exit(0 if same else 1)
PY
# The proof: both models on the same two 480x640 images, tap by tap, cumulative and isolated, and their
# post-processing. (Gradient parity, `mfport parity` without --no-gradients, is not yet within its bound for
# every input: see the README.)
mfport parity "$out/${preset}_seed0.pkl" --image-size 480 640 --batch 2 --no-gradients --report-dir "$out/parity"
mfport sample-images -o "$out/images" --seed 7 --count 2 --size 480 640
# Seeded (untrained) weights rarely reach the original 0.8/0.8 panoptic thresholds; show segments at 0.5.
mfport predict "$out"/images/*.png --model "$out/tf_model" -o "$out/predict" \
  --object-mask-threshold 0.5 --overlap-threshold 0.5
# Fine-tune the converted model on a synthetic data set in real COCO panoptic format: records with the
# label map generated from the categories, 40 XLA-compiled steps at 128x128 on the Model Garden trainer,
# evaluation (PQ, mIoU) and the loss curve. A rerun resumes from the last checkpoint in $out/finetune.
data="$out/synthetic"
mfport synthetic-data -o "$data" --train 16 --val 4
for split in train val; do
  mfport make-tfrecords --images "$data/${split}2017" --panoptic-json "$data/annotations/panoptic_${split}2017.json" \
    --panoptic-dir "$data/annotations/panoptic_${split}2017" -o "$data/records" --prefix "$split" --shards 2 --force
done
rm -rf "$out/finetune"
mfport train --experiment maskformer_synthetic_smoke --model-dir "$out/finetune" --init-from "$out/tf_model" \
  --train-data "$data/records/train-*" --val-data "$data/records/val-*" --evaluate \
  --loss-curve reports/finetune_synthetic/loss_curve.png
echo "demo outputs in $out/ (parity report: $out/parity/report.html; overlays: $out/predict/*.png;" \
  "loss curve: reports/finetune_synthetic/loss_curve.png)"
