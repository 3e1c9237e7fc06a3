"""Differential testing of the PyTorch reference against the converted TensorFlow model."""
