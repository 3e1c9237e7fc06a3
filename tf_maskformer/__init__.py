"""TensorFlow (tf_keras) MaskFormer laid out as a Model Garden project."""
