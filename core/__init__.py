"""Framework-neutral facts and checkpoint I/O: presets and label sets of the released models, checkpoint
reading and writing (pickles never trusted), key naming eras (released, live, Hugging Face), architecture
detection from keys, and the error type of the library. Imports neither torch nor TensorFlow."""
