#!/usr/bin/env bash
# The main job: set up; write a seeded original-format MaskFormer checkpoint, inspect it, convert it to
# TensorFlow (checkpoint + SavedModel), convert it back and check it bit for bit, prove the two models
# agree tap by tap against float32's own accuracy (parity report), segment images as the original predictor
# does, fine-tune the converted model on the Model Garden trainer, show that fine-tuning learns (overfit
# check: PQ and mIoU >= 0.8 on the training images) and that it learns what PyTorch would (training-curve
# parity). About 20-35 minutes on a 2-core CPU; outputs in out/demo/.
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
from mfport.core.checkpoint_io import read_checkpoint
a, b = (read_checkpoint(p).tensors for p in sys.argv[1:])
same = a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
print(f"round trip PyTorch -> TF -> PyTorch: {len(a)} tensors, bit-exact: {same}")
sys.exit(0 if same else 1)
PY
# The proof: both models on the same two 480x640 images, tap by tap, cumulative and isolated, each judged
# against a float64 run of the reference (TF may be off by up to 4x PyTorch's own float32 error), then the
# matcher, the losses and every gradient, and the post-processing.
mfport parity "$out/${preset}_seed0.pkl" --image-size 480 640 --batch 2 --report-dir "$out/parity"
# Predict as the original predictor: each image resized to 800 on the short side (COCO's test size),
# maps written at the input's own size. Seeded (untrained) weights rarely reach the 0.8/0.8 panoptic
# thresholds; show segments at 0.5.
mfport sample-images -o "$out/images" --seed 7 --count 2 --size 480 640
mfport predict "$out"/images/*.png --model "$out/tf_model" -o "$out/predict" \
  --object-mask-threshold 0.5 --overlap-threshold 0.5
# Fine-tune the converted model on a synthetic data set in real COCO panoptic format: records with the label
# map generated from the categories, 40 XLA-compiled steps at 128x128 on the Model Garden trainer,
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
# Does fine-tuning learn? Overfit 4 training images (the recipe of maskformer_synthetic_overfit: see
# docs/training.md) and evaluate on the same 4 images; the command fails unless PQ and mIoU reach 0.8.
overfit="$out/overfit"
mfport synthetic-data -o "$overfit" --train 4 --val 0
mfport make-tfrecords --images "$overfit/train2017" --panoptic-json "$overfit/annotations/panoptic_train2017.json" \
  --panoptic-dir "$overfit/annotations/panoptic_train2017" -o "$overfit/records" --prefix train --shards 1 --force
rm -rf "$overfit/run"
mfport train --experiment maskformer_synthetic_overfit --model-dir "$overfit/run" --init-from "$out/tf_model" \
  --train-data "$overfit/records/train-*" --val-data "$overfit/records/train-*" --evaluate \
  --require panoptic_pq=0.8 --require semantic_miou=0.8 --loss-curve reports/overfit_synthetic/loss_curve.png
# Does it learn what PyTorch would? Both models fine-tuned side by side for 50 steps from the same weights
# on the same batches with the same recipe; loss per step and every parameter, each judged against a float64 run
# of the reference (TF within 4x the distance PyTorch's own float32 run keeps from it).
mfport training-parity "$out/${preset}_seed0.pkl" --train-data "$data/records/train-*" --steps 50 \
  --report-dir reports/training_parity
echo "demo outputs in $out/ (parity report: $out/parity/report.html; overlays: $out/predict/*.png;" \
  "loss curves: reports/finetune_synthetic/, reports/overfit_synthetic/; training-curve parity:" \
  "reports/training_parity/training_curve.png)"
