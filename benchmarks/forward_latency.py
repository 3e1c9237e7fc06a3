"""Forward latency of the TF MaskFormer (XLA, and for R50 also eager and tf.function) next to the PyTorch reference.

Per case the same preset, weights (a converted seeded checkpoint, loaded as `mfport predict` loads it), input
size, batch and thread count; the modes are measured in interleaved rounds so machine drift hits all alike.
Targets (XLA forward, batch 1, two threads, against the PyTorch reference): R50 + 6 Enc at 512x512 <= 0.7x;
Swin-T at 512x512 and Swin-B (window 12) at 640x640 <= 0.8x. `met` judges the forward with every output (the
reference's work); `met_by_inference_forward` the forward that inference runs (final outputs only).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import interleaved_medians, pin_threads, write_result

# (preset, height, width, target XLA ratio, also time eager and tf.function)
CASES = (("r50_6enc_coco_panoptic", 512, 512, 0.7, True),
         ("swin_t_ade20k", 512, 512, 0.8, False),
         ("swin_b_ade20k", 640, 640, 0.8, False))


def run_case(preset_name: str, height: int, width: int, target: float, all_modes: bool, batch: int,
             repeats: int) -> dict[str, object]:
    import tensorflow as tf
    import torch

    from mfport.converter.convert import convert_to_tf
    from mfport.core.presets import get_preset
    from mfport.core.synthetic_images import synthetic_images
    from mfport.tf_maskformer.serving.model_dir import load_converted_model
    from mfport.torch_reference.loading import load_maskformer
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "seeded.pkl"
        write_seeded_checkpoint(get_preset(preset_name), 0, checkpoint)
        torch_model, _ = load_maskformer(checkpoint)
        convert_to_tf(checkpoint, Path(tmp) / "tf")
        tf_model = load_converted_model(Path(tmp) / "tf")
    images = synthetic_images(0, batch, height, width)
    torch_images = list(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    tf_inputs = tf_model.preprocess(tf.constant(images, tf.float32))

    def torch_forward() -> object:
        with torch.no_grad():
            return torch_model(torch_images)["pred_masks"]

    xla = tf.function(lambda x: tf_model(x, training=False), jit_compile=True)
    # What inference uses (predict, the SavedModel): the final pred_logits and pred_masks. The reference, like the
    # original, also computes every auxiliary layer's masks at inference; "tf_xla" returns them too (the same
    # work), "tf_xla_inference" leaves them to XLA's dead-code elimination.
    inference = tf.function(lambda x: {k: v for k, v in tf_model(x, training=False).items() if k.startswith("pred_")},
                            jit_compile=True)
    modes = {"pytorch": torch_forward, "tf_xla": lambda: xla(tf_inputs)["pred_masks"].numpy(),
             "tf_xla_inference": lambda: inference(tf_inputs)["pred_masks"].numpy()}
    if all_modes:
        graph = tf.function(lambda x: tf_model(x, training=False))
        modes["tf_eager"] = lambda: tf_model(tf_inputs, training=False)["pred_masks"].numpy()
        modes["tf_function"] = lambda: graph(tf_inputs)["pred_masks"].numpy()
    results = interleaved_medians(modes, repeats)
    reference = results["pytorch"]["median_s"]
    ratios = {name: r["median_s"] / reference for name, r in results.items()}
    return {"preset": preset_name, "input": [batch, height, width, 3], "modes": results, "ratio_to_pytorch": ratios,
            "target": {"tf_xla_ratio_at_most": target, "met": ratios["tf_xla"] <= target,
                       "met_by_inference_forward": ratios["tf_xla_inference"] <= target}}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c[0] for c in CASES], help="presets of CASES to run")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    cases = {}
    for name, height, width, target, all_modes in CASES:
        if name in args.cases:
            cases[f"{name}@{height}x{width}"] = run_case(name, height, width, target, all_modes, args.batch,
                                                         args.repeats)
    result = {"threads": args.threads, "batch": args.batch, "cases": cases}
    write_result("forward_latency", result)
    return result


if __name__ == "__main__":
    main()
