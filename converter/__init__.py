"""PyTorch <-> TensorFlow conversion of MaskFormer checkpoints.

checkpoint_io reads every source format without trusting pickles; naming handles the released/live
key eras and key-set comparison; architecture detects a preset from a checkpoint's keys. The mapping
registry (one rule table per model family) lives in converter/mappings/.
"""
