"""Per-family rule tables mapping PyTorch state-dict names to TensorFlow variables (see converter/)."""
