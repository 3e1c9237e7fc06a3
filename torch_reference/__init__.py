"""PyTorch reference MaskFormer whose state dict is exactly the original checkpoints'.

`presets` and `class_metadata` are framework-neutral; the model modules import torch.
"""
