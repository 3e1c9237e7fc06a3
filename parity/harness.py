"""Differential testing of the PyTorch reference against the converted TF model, tap by tap.

cumulative: both models run end to end on the same images; errors accumulate as a user sees them.
isolated:   each TF block is fed the PyTorch block's own inputs, so a row's error is that block's own.
The first tap whose cumulative error breaks its bound is the first divergence; the isolated column says
whether that block itself is at fault.
"""

from __future__ import annotations

import dataclasses
import platform

import numpy as np

from parity.metrics import PROFILES, Profile, tap_metrics
from parity.taps import Tap, build_taps, to_tf_layout

CONFIG_LINT_FIELDS = ("norm_eps", "num_classes", "no_object_index", "num_queries", "hidden_dim", "nheads",
                      "dec_layers", "pixel_decoder_enc_layers", "size_divisibility", "object_mask_threshold",
                      "overlap_threshold", "pixel_mean", "pixel_std")


@dataclasses.dataclass
class ParityResult:
    preset: str
    profile: str
    modes: list[str]
    inputs: dict[str, object]
    rows: list[dict[str, object]]
    lint: list[dict[str, object]]
    first_divergence: str | None
    passed: bool
    environment: dict[str, object]
    training: dict[str, object] | None = None  # parity.training.run_training_parity, when run


def config_lint(torch_model: object, tf_model: object) -> list[dict[str, object]]:
    """What the two models declare, compared by name (both read a preset; a difference is a bug)."""
    rows = []
    torch_preset, tf_preset = torch_model.preset, tf_model.preset
    for field in CONFIG_LINT_FIELDS:
        a, b = getattr(torch_preset, field), getattr(tf_preset, field)
        rows.append({"field": field, "pytorch": a, "tensorflow": b, "same": a == b})
    # Values the layers themselves hold, not only what the presets say.
    bn = torch_model.backbone.stem.conv1.norm
    rows.append({"field": "frozen_bn_eps (layers)", "pytorch": bn.eps,
                 "tensorflow": tf_model.backbone.stem.conv1.norm.eps,
                 "same": bn.eps == tf_model.backbone.stem.conv1.norm.eps})
    gn = torch_model.sem_seg_head.pixel_decoder.layer_1.norm
    tf_gn = tf_model.sem_seg_head.pixel_decoder.layers[0].norm
    torch_gn, tf_gn = [gn.num_groups, gn.eps], [tf_gn.groups, tf_gn.epsilon]
    rows.append({"field": "group_norm (groups, eps)", "pytorch": torch_gn, "tensorflow": tf_gn,
                 "same": torch_gn == tf_gn})
    ln = torch_model.sem_seg_head.predictor.transformer.decoder.norm
    tf_ln = tf_model.sem_seg_head.predictor.decoder_norm
    rows.append({"field": "layer_norm_eps", "pytorch": ln.eps, "tensorflow": tf_ln.epsilon,
                 "same": ln.eps == tf_ln.epsilon})
    rows.append({"field": "no_object_position", "pytorch": "last", "tensorflow": "last",
                 "same": torch_model.sem_seg_head.predictor.class_embed.out_features
                 == tf_model.sem_seg_head.predictor.class_embed.units})
    return rows


def _torch_capture(torch_model: object, taps: list[Tap], images: list, autocast_bf16: bool = False
                   ) -> tuple[dict, dict, dict]:
    """Run the reference once; returns tap outputs, tap inputs (args, kwargs) and the final outputs (all
    float32; `autocast_bf16` runs it under torch.autocast's bfloat16, for the bf16 profile's context)."""
    import contextlib

    import torch

    def array(t: object) -> np.ndarray:
        return t.detach().float().numpy()

    outputs, inputs, handles = {}, {}, []
    modules = dict(torch_model.named_modules())
    for tap in taps:
        module = modules[tap.torch_module]

        def hook(mod: object, args: tuple, kwargs: dict, out: object, name: str = tap.name) -> None:
            inputs[name] = ([array(a) for a in args], {k: array(v) for k, v in kwargs.items() if torch.is_tensor(v)})
            outputs[name] = array(out)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:
            final = torch_model(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, inputs, final


LOW_THRESHOLDS = (0.3, 0.5)  # seeded weights rarely pass 0.8/0.8: compare the panoptic merge here too


def _panoptic_quality(reference: np.ndarray, other: np.ndarray, categories: dict[int, int], num_classes: int
                      ) -> float:
    """PQ of `other` against `reference` (segment-id maps; categories: segment id -> class), by the Model
    Garden's PanopticQuality (its code reads category_mask/instance_mask for predictions too)."""
    from official.vision.evaluation.panoptic_quality import PanopticQuality

    if not reference.any() and not other.any():
        return 1.0  # no segment on either side: full agreement (the metric would report 0/0 as 0)
    metric = PanopticQuality(num_categories=num_classes + 1, ignored_label=num_classes,
                             max_instances_per_category=256, offset=256 * 256 * 256)

    def masks(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        category = np.full(ids.shape, num_classes, np.uint16)
        for segment_id, class_id in categories.items():
            category[ids == segment_id] = class_id
        return category, ids.astype(np.uint16)

    gt_category, gt_instance = masks(reference)
    pred_category, pred_instance = masks(other)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty segments and absent classes divide by 0
        metric.compare_and_accumulate({"category_mask": gt_category, "instance_mask": gt_instance},
                                      {"category_mask": pred_category, "instance_mask": pred_instance})
        return float(metric.result()["All_pq"])


def postprocess_parity(torch_model: object, images: np.ndarray, torch_final: dict, tf_final: dict, padded: tuple,
                       profile: Profile = PROFILES["fp32"], torch_bf16_final: dict | None = None
                       ) -> list[dict[str, object]]:
    """Semantic argmax agreement and panoptic maps of both inference pipelines (preset and low thresholds),
    each on its own model's raw outputs of the forward already run."""
    from tf_maskformer.modeling.inference import postprocess

    preset = torch_model.preset
    rows = []
    for label, thresholds in (("preset", (preset.object_mask_threshold, preset.overlap_threshold)),
                              ("low", LOW_THRESHOLDS)):
        expected = torch_model.postprocess(torch_final, padded, [tuple(images.shape[1:3])] * len(images),
                                           object_mask_threshold=thresholds[0], overlap_threshold=thresholds[1])
        got = postprocess(tf_final, preset, padded, images.shape[1:3], None, *thresholds)
        if label == "preset":
            agreement = float(np.mean([np.mean(got["semantic_map"][b].numpy() == e["sem_seg"].argmax(0).numpy())
                                       for b, e in enumerate(expected)]))
            bound = profile.semantic_agreement_min
            row = {"argmax_agreement": agreement, "bound": bound,
                   "verdict": "reported" if bound is None else "pass" if agreement >= bound else "fail"}
            if torch_bf16_final is not None:  # the reference's own bfloat16 run against its float32 run
                own = torch_model.postprocess({k: v.float() for k, v in torch_bf16_final.items() if k != "aux_outputs"},
                                              padded, [tuple(images.shape[1:3])] * len(images))
                row["reference_bf16_agreement"] = float(np.mean([np.mean(
                    o["sem_seg"].argmax(0).numpy() == e["sem_seg"].argmax(0).numpy())
                    for o, e in zip(own, expected, strict=True)]))
            rows.append({"tap": "inference/semantic_map", "pytorch_module": "MaskFormer.inference",
                         "tf_layer": "inference.postprocess", "cumulative": row})
        pixel_agreement, pqs, segments_equal, differing = [], [], True, 0
        for b, e in enumerate(expected):
            seg, segments = e["panoptic_seg"]
            reference, other = seg.numpy(), got["panoptic_seg"][b].numpy()
            pixel_agreement.append(float(np.mean(reference == other)))
            differing += int(np.sum(reference != other))
            categories = {s.id: s.category_id for s in segments}
            ids, cats = got["segment_id"][b].numpy(), got["category"][b].numpy()
            tf_categories = {int(i): int(c) for i, c in zip(ids, cats, strict=True) if i > 0}
            segments_equal &= categories == tf_categories
            pqs.append(_panoptic_quality(reference, other, {**tf_categories, **categories}, preset.num_classes))
        # Same segments (ids, classes) and PQ of one map against the other >= the bound; a few pixels may
        # differ where two queries' score * sigmoid tie within float32 noise: reported, not hidden.
        bound = profile.panoptic_pq_min
        verdict = "reported" if bound is None else "pass" if segments_equal and min(pqs) >= bound else "fail"
        rows.append({"tap": f"inference/panoptic_seg ({label} thresholds {thresholds[0]}/{thresholds[1]})",
                     "pytorch_module": "MaskFormer.inference", "tf_layer": "inference.postprocess",
                     "cumulative": {"pixel_agreement": min(pixel_agreement), "differing_pixels": differing,
                                    "identical": differing == 0 and segments_equal,
                                    "segments_equal": segments_equal, "pq_tf_vs_pytorch": min(pqs),
                                    "segments": int(sum(len(e["panoptic_seg"][1]) for e in expected)),
                                    "bound": bound, "verdict": verdict}})
    return rows


def _final_outputs(final: dict) -> dict[str, object]:
    """A final-output dict (PyTorch's or TF's) by row name: 'outputs/pred_logits', 'outputs/aux_3_masks', ..."""
    named = {"outputs/pred_logits": final["pred_logits"], "outputs/pred_masks": final["pred_masks"]}
    if "layer_logits" in final:  # TF: every decoder layer stacked, the last being the final one
        layers = list(zip(final["layer_logits"][:-1], final["layer_masks"][:-1], strict=True))
    else:  # PyTorch: a list of per-layer dicts (absent without deep supervision)
        layers = [(aux["pred_logits"], aux["pred_masks"]) for aux in final.get("aux_outputs", [])]
    for index, (logits, masks) in enumerate(layers):
        named[f"outputs/aux_{index}_logits"], named[f"outputs/aux_{index}_masks"] = logits, masks
    return named


def _as_compute(tf_model: object, value: np.ndarray) -> object:
    """A block input as the TF model computes it: float inputs in its compute dtype (bfloat16 under a
    mixed policy, where Keras casts only a layer's first argument by itself)."""
    import tensorflow as tf

    if np.issubdtype(value.dtype, np.floating):
        return tf.constant(value, dtype=tf_model.compute_dtype)
    return tf.constant(value)


def run_parity(torch_model: object, tf_model: object, images: np.ndarray, profile: Profile | str = "fp32",
               modes: tuple[str, ...] = ("cumulative", "isolated")) -> ParityResult:
    """images: uint8/float [B, H, W, 3] RGB. Compares every tap, the outputs and the aux outputs."""
    import tensorflow as tf
    import torch

    from tf_maskformer.modeling.taps import record_taps

    profile = PROFILES[profile] if isinstance(profile, str) else profile
    preset = torch_model.preset
    taps = build_taps(preset)
    torch_images = list(torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2))
    torch_out, torch_in, torch_final = _torch_capture(torch_model, taps, torch_images)
    # Under a reduced-precision profile, the reference's own bfloat16 error is each row's context.
    torch_bf16 = _torch_capture(torch_model, taps, torch_images, autocast_bf16=True) if profile.policy else None
    with record_taps() as tf_taps:
        tf_inputs = tf_model.preprocess(tf.constant(np.asarray(images, np.float32)))
        tf_final = tf_model(tf_inputs, training=False)

    rows = []
    for tap in taps:
        reference = to_tf_layout(torch_out[tap.name], tap.layout)
        row: dict[str, object] = {"tap": tap.name, "pytorch_module": tap.torch_module, "tf_layer": tap.tf_path}
        if "cumulative" in modes:
            row["cumulative"] = tap_metrics(reference, tf_taps[tap.name].numpy(), profile,
                                            profile.cumulative_rel_max, tap.logits)
            if torch_bf16 is not None:
                own = tap_metrics(reference, to_tf_layout(torch_bf16[0][tap.name], tap.layout), profile,
                                  profile.cumulative_rel_max, tap.logits)
                row["cumulative"]["reference_bf16_rel_max_error"] = own["rel_max_error"]
        if "isolated" in modes and tap.isolated is not None:
            args, kwargs = torch_in[tap.name]
            layouts = list(tap.input_layouts)
            tf_args = [_as_compute(tf_model, to_tf_layout(a, layouts[i])) for i, a in enumerate(args)]
            tf_kwargs = {k: _as_compute(tf_model, to_tf_layout(v, layouts[0])) for k, v in kwargs.items()}
            isolated = tap.isolated(tf_model, tf_args, tf_kwargs)
            row["isolated"] = tap_metrics(reference, isolated.numpy(), profile, profile.isolated_rel_max, tap.logits)
        rows.append(row)
    tf_named = _final_outputs(tf_final)
    bf16_named = None if torch_bf16 is None else _final_outputs(torch_bf16[2])
    for name, reference in _final_outputs(torch_final).items():
        row = {"tap": name, "pytorch_module": "MaskFormer.forward", "tf_layer": "MaskFormer.call"}
        if "cumulative" in modes:
            logits = name.endswith("logits")
            row["cumulative"] = tap_metrics(reference.numpy(), np.asarray(tf_named[name]), profile,
                                            profile.cumulative_rel_max, logits)
            if bf16_named is not None:
                own = bf16_named[name].detach().float().numpy()
                row["cumulative"]["reference_bf16_rel_max_error"] = tap_metrics(
                    reference.numpy(), own, profile, profile.cumulative_rel_max)["rel_max_error"]
        rows.append(row)

    if "cumulative" in modes:
        rows += postprocess_parity(torch_model, np.asarray(images), torch_final, tf_final,
                                   tuple(tf_inputs.shape[1:3]), profile,
                                   None if torch_bf16 is None else torch_bf16[2])
    lint = config_lint(torch_model, tf_model)
    judged = ("pass", "reported")  # "reported": shown, not judged under this profile
    first = next((r["tap"] for r in rows if r.get("cumulative", {}).get("verdict", "pass") not in judged), None)
    passed = all(m.get("verdict") in judged for r in rows for k, m in r.items() if k in ("cumulative", "isolated")) \
        and all(item["same"] for item in lint)
    return ParityResult(
        preset=preset.name, profile=profile.name, modes=list(modes),
        inputs={"shape": list(np.asarray(images).shape), "dtype": str(np.asarray(images).dtype)},
        rows=rows, lint=lint, first_divergence=first, passed=passed,
        environment={"torch": torch.__version__, "tensorflow": tf.__version__, "python": platform.python_version(),
                     "device": "cpu", "machine": platform.machine(), "torch_threads": torch.get_num_threads()})
