"""mfport: MaskFormer from PyTorch to TensorFlow, proven tensor by tensor.

The repository root is the `mfport` package (pyproject maps it): mfport.core (framework-neutral facts and
checkpoint I/O), mfport.torch_reference and mfport.tf_maskformer (the two models), mfport.converter,
mfport.parity and mfport.cli, each importing only from the layers before it (import-linter checks it).
"""

__version__ = "0.2.0"
