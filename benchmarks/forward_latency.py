"""Forward latency of the TF MaskFormer (eager, tf.function, XLA) next to the PyTorch reference.

Same preset, weights (a converted seeded checkpoint), input size, batch and thread count; the modes are
measured in interleaved rounds so machine drift hits all of them alike.
Target: XLA forward at 512x512, batch 1 <= 0.7x the PyTorch reference's time on two threads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import interleaved_medians, model_benchmark_main, pin_threads

TARGET_XLA_RATIO = 0.7


def run(preset_name: str, height: int, width: int, batch: int, threads: int, repeats: int) -> dict[str, object]:
    pin_threads(threads)
    import tensorflow as tf
    import torch

    from mfport.converter.convert import convert_to_tf, load_tf_model
    from mfport.core.presets import get_preset
    from mfport.core.synthetic_images import synthetic_images
    from mfport.torch_reference.loading import load_maskformer
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "seeded.pkl"
        write_seeded_checkpoint(get_preset(preset_name), 0, checkpoint)
        torch_model, _ = load_maskformer(checkpoint)
        convert_to_tf(checkpoint, Path(tmp) / "tf")
        tf_model = load_tf_model(Path(tmp) / "tf")
    images = synthetic_images(0, batch, height, width)
    torch_images = list(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    tf_inputs = tf_model.preprocess(tf.constant(images, tf.float32))

    def torch_forward() -> object:
        with torch.no_grad():
            return torch_model(torch_images)["pred_masks"]

    graph = tf.function(lambda x: tf_model(x, training=False))
    xla = tf.function(lambda x: tf_model(x, training=False), jit_compile=True)
    modes = {
        "pytorch": torch_forward,
        "tf_eager": lambda: tf_model(tf_inputs, training=False)["pred_masks"].numpy(),
        "tf_function": lambda: graph(tf_inputs)["pred_masks"].numpy(),
        "tf_xla": lambda: xla(tf_inputs)["pred_masks"].numpy(),
    }
    results = interleaved_medians(modes, repeats)
    reference = results["pytorch"]["median_s"]
    ratios = {name: r["median_s"] / reference for name, r in results.items()}
    return {"preset": preset_name, "input": [batch, height, width, 3], "threads": threads, "modes": results,
            "ratio_to_pytorch": ratios, "target": {"tf_xla_ratio_at_most": TARGET_XLA_RATIO,
                                                   "met": ratios["tf_xla"] <= TARGET_XLA_RATIO}}


def main(argv: list[str] | None = None) -> dict[str, object]:
    return model_benchmark_main("forward_latency", run, __doc__.splitlines()[0], argv, batch=1, repeats=7)


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
