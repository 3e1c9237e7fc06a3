"""Differential testing of the PyTorch reference against the converted TF model, tap by tap.

cumulative: both models run end to end on the same images; errors accumulate as a user sees them. With a
            float64 run of the reference (default), each row is judged by the float32 band rule of
            parity.metrics: TF against the exact function, within a factor of PyTorch's own float32 error.
isolated:   each TF block is fed the PyTorch block's own inputs, so a row's error is that block's own.
The first tap whose cumulative verdict fails is the first divergence; the isolated column says whether
that block itself is at fault.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import platform
import time
from collections.abc import Callable

import numpy as np

from mfport.core.environment import cpu_model, kernel_settings
from mfport.core.presets import MaskFormerPreset
from mfport.parity.metrics import FLOAT32_BAND_FACTOR, PROFILES, Profile, compare, rel_max_error
from mfport.parity.results import LintRow, PanopticRow, ParityResult, RowKind, SemanticRow, TapRow, Verdict
from mfport.parity.taps import Tap, build_taps, to_tf_layout

CONFIG_LINT_FIELDS = ("norm_eps", "num_classes", "no_object_index", "num_queries", "hidden_dim", "nheads",
                      "dec_layers", "pixel_decoder_enc_layers", "size_divisibility", "object_mask_threshold",
                      "overlap_threshold", "pixel_mean", "pixel_std", "backbone")
LOW_THRESHOLDS = (0.3, 0.5)  # seeded weights rarely pass 0.8/0.8: compare the panoptic merge here too


def config_lint(torch_model: object, tf_model: object) -> list[LintRow]:
    """What the two models declare, compared by name (both read a preset; a difference is a bug), and the
    epsilons the layers themselves hold."""
    rows = [LintRow(field, getattr(torch_model.preset, field), getattr(tf_model.preset, field),
                    getattr(torch_model.preset, field) == getattr(tf_model.preset, field))
            for field in CONFIG_LINT_FIELDS]

    def add(field: str, torch_value: object, tf_value: object) -> None:
        rows.append(LintRow(field, torch_value, tf_value, torch_value == tf_value))

    import torch

    torch_norms = {type(m).__name__: m for m in torch_model.backbone.modules()
                   if type(m).__name__ in ("FrozenBatchNorm2d", "LayerNorm")}
    tf_norms = {type(layer).__name__: layer for layer in tf_model.backbone.submodules
                if type(layer).__name__ in ("FrozenBatchNorm", "LayerNormalization")}
    if "FrozenBatchNorm2d" in torch_norms:
        add("frozen_bn_eps (layers)", torch_norms["FrozenBatchNorm2d"].eps, tf_norms["FrozenBatchNorm"].eps)
    if "LayerNorm" in torch_norms:
        add("backbone layer_norm_eps (layers)", torch_norms["LayerNorm"].eps, tf_norms["LayerNormalization"].epsilon)
    gn = torch_model.sem_seg_head.pixel_decoder.layer_1.norm
    tf_gn = tf_model.sem_seg_head.pixel_decoder.layers[0].norm
    add("group_norm (groups, eps)", [gn.num_groups, gn.eps], [tf_gn.groups, tf_gn.epsilon])
    add("layer_norm_eps", torch_model.sem_seg_head.predictor.transformer.decoder.norm.eps,
        tf_model.sem_seg_head.predictor.decoder_norm.epsilon)
    add("no_object_position (class head outputs)", torch_model.sem_seg_head.predictor.class_embed.out_features,
        tf_model.sem_seg_head.predictor.class_embed.units)
    del torch
    return rows


def _torch_capture(torch_model: object, taps: list[Tap], images: list, autocast_bf16: bool = False,
                   with_inputs: bool = True) -> tuple[dict, dict, dict]:
    """Run the reference once; returns tap outputs, tap inputs (args, kwargs) and the final outputs (as float
    arrays in the model's dtype; `autocast_bf16` runs it under torch.autocast's bfloat16)."""
    import torch

    def array(t: object) -> np.ndarray:
        t = t.detach()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    outputs, inputs, handles = {}, {}, []
    modules = dict(torch_model.named_modules())
    for tap in taps:
        module = modules[tap.torch_module]

        def hook(mod: object, args: tuple, kwargs: dict, out: object, name: str = tap.name) -> None:
            if with_inputs:
                inputs[name] = ([array(a) for a in args if torch.is_tensor(a)],
                                {k: array(v) if torch.is_tensor(v) else v for k, v in kwargs.items()})
            outputs[name] = array(out[0] if isinstance(out, tuple) else out)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:
            final = torch_model(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, inputs, final


def float64_twin(torch_model: object) -> object:
    """A float64 copy of the reference (same weights, widened exactly)."""
    return copy.deepcopy(torch_model).double().eval()


def _panoptic_quality(reference: np.ndarray, other: np.ndarray, categories: dict[int, int], num_classes: int
                      ) -> float:
    """PQ of `other` against `reference` (segment-id maps; categories: segment id -> class), by the Model
    Garden's PanopticQuality (its code reads category_mask/instance_mask for predictions too)."""
    from official.vision.evaluation.panoptic_quality import PanopticQuality

    if not reference.any() and not other.any():
        return 1.0  # no segment on either side: full agreement (the metric would report 0/0 as 0)
    # The offset as uint64: the metric multiplies the uint32 ids of ignored segments (class x 256 + instance) by
    # it; with a Python int NumPy 2 keeps uint32, and every id >= 256 wraps past 2^32: unmatched predictions then
    # lose their overlap with the ignored region and count as false positives.
    metric = PanopticQuality(num_categories=num_classes + 1, ignored_label=num_classes,
                             max_instances_per_category=256, offset=np.uint64(256 * 256 * 256))

    def masks(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # int64: the metric multiplies ids by its 2^24 offset (uint16 arrays overflow there).
        category = np.full(ids.shape, num_classes, np.int64)
        for segment_id, class_id in categories.items():
            category[ids == segment_id] = class_id
        return category, ids.astype(np.int64)

    gt_category, gt_instance = masks(reference)
    pred_category, pred_instance = masks(other)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty segments and absent classes divide by 0
        metric.compare_and_accumulate({"category_mask": gt_category, "instance_mask": gt_instance},
                                      {"category_mask": pred_category, "instance_mask": pred_instance})
        return float(metric.result()["All_pq"])


def semantic_row(reference: list, exact: list | None, tf_map: np.ndarray, profile: Profile,
                 reference_bf16_agreement: float | None = None) -> SemanticRow:
    """TF's semantic argmax against PyTorch's scores (per image, [K, H, W] tensors): differing pixels must sit at
    near-ties of the reference (top-2 scores within the band: FLOAT32_BAND_FACTOR x the scores' float32 error
    against float64, or 1e-5 x their largest magnitude without a float64 run)."""
    ref_maps, margins, errors = [], [], []
    for b, scores in enumerate(reference):
        ref_maps.append(scores.argmax(0).numpy())  # the first maximum, as everywhere else
        # Top score minus the runner-up (0 at an exact tie), in float64 as the band is; per image and by torch's
        # top-k over the class axis: no [B, K, H, W] float64 copies (~0.6 GB at 512x512 with 133 classes).
        top2 = scores.topk(2, dim=0).values.double()
        margins.append((top2[0] - top2[1]).numpy())
        errors.append(float((scores.double() - exact[b]).abs().max()) if exact is not None
                      else 1e-5 * float(scores.abs().max()))
    ref_map, margin = np.stack(ref_maps), np.stack(margins)
    band = (FLOAT32_BAND_FACTOR if exact is not None else 1.0) * max(errors)
    differing = tf_map != ref_map
    near = differing & (margin <= band)
    agreement = float(np.mean(~differing))
    bound = profile.semantic_agreement_min
    if bound is None:
        verdict = Verdict.REPORTED
    else:
        verdict = Verdict.PASS if agreement >= bound and int(near.sum()) == int(differing.sum()) else Verdict.FAIL
    return SemanticRow(agreement, int(differing.sum()), int(near.sum()), band, bound, verdict,
                       reference_bf16_agreement)


def postprocess_rows(torch_model: object, images: np.ndarray, torch_final: dict, tf_final: dict, padded: tuple,
                     profile: Profile = PROFILES["fp32"], exact_final: dict | None = None,
                     torch_bf16_final: dict | None = None) -> tuple[SemanticRow, list[PanopticRow]]:
    """Semantic argmax and panoptic maps of both inference pipelines (preset and low thresholds), each on its own
    model's raw outputs of the forward already run (and the float64 reference's, for context). The semantic row
    is the preset pass's (thresholds do not enter it); the float64 panoptic maps are computed only for a row
    whose float32 ones disagree with TF's."""
    from mfport.tf_maskformer.modeling.inference import postprocess

    preset = torch_model.preset
    sizes = [tuple(images.shape[1:3])] * len(images)
    exact_outputs = None if exact_final is None else {k: v.double() for k, v in exact_final.items()
                                                      if k != "aux_outputs"}
    semantic, panoptic = None, []
    for label, thresholds in (("preset", (preset.object_mask_threshold, preset.overlap_threshold)),
                              ("low", LOW_THRESHOLDS)):
        with_semantic = label == "preset"
        options = {"object_mask_threshold": thresholds[0], "overlap_threshold": thresholds[1]}
        expected = torch_model.postprocess(torch_final, padded, sizes, semantic=with_semantic, **options)
        got = postprocess(tf_final, preset, padded, images.shape[1:3], None, *thresholds, semantic=with_semantic)

        def exact_panoptic(options: dict = options) -> list:
            return torch_model.postprocess(exact_outputs, padded, sizes, semantic=False, **options)

        if with_semantic:
            own = None
            if torch_bf16_final is not None:  # the reference's own bfloat16 run against its float32 run
                bf16 = torch_model.postprocess(
                    {k: v.float() for k, v in torch_bf16_final.items() if k != "aux_outputs"}, padded, sizes,
                    panoptic=False)
                own = float(np.mean([(low["sem_seg"].argmax(0) == full["sem_seg"].argmax(0)).numpy()
                                     for low, full in zip(bf16, expected, strict=True)]))
            exact = None if exact_outputs is None else torch_model.postprocess(exact_outputs, padded, sizes,
                                                                               panoptic=False)
            semantic = semantic_row([e["sem_seg"] for e in expected],
                                    None if exact is None else [e["sem_seg"] for e in exact],
                                    got["semantic_map"].numpy(), profile, own)
        panoptic.append(_panoptic_row(label, thresholds, expected, None if exact_outputs is None else exact_panoptic,
                                      got, preset, profile))
    return semantic, panoptic


def _panoptic_row(label: str, thresholds: tuple[float, float], expected: list, exact: Callable[[], list] | None,
                  got: dict, preset: MaskFormerPreset, profile: Profile) -> PanopticRow:
    """TF's panoptic maps against PyTorch's float32 ones; where they differ, against the float64 reference's (a
    merge decision at a float32 near-tie may go either way: TF then agrees with the exact run). `exact` computes
    the float64 reference's maps, when they are needed."""

    def agreement(reference: list) -> tuple[float, int, bool, float]:
        pixels, differing, equal, pqs = [], 0, True, []
        for b, e in enumerate(reference):
            seg, segments = e["panoptic_seg"]
            ref_map, tf_map = seg.numpy(), got["panoptic_seg"][b].numpy()
            pixels.append(float(np.mean(ref_map == tf_map)))
            differing += int(np.sum(ref_map != tf_map))
            categories = {s.id: s.category_id for s in segments}
            ids, cats = got["segment_id"][b].numpy(), got["category"][b].numpy()
            tf_categories = {int(i): int(c) for i, c in zip(ids, cats, strict=True) if i > 0}
            equal &= categories == tf_categories
            pqs.append(_panoptic_quality(ref_map, tf_map, {**tf_categories, **categories}, preset.num_classes))
        return min(pixels), differing, equal, min(pqs)

    pixel, differing, equal, pq = agreement(expected)
    bound = profile.panoptic_pq_min
    agrees_with = "float32" if equal and (bound is None or pq >= bound) else "neither"
    if agrees_with == "neither" and exact is not None:
        _, _, exact_equal, exact_pq = agreement(exact())
        if exact_equal and (bound is None or exact_pq >= bound):
            agrees_with = "float64"
    verdict = Verdict.REPORTED if bound is None else Verdict.PASS if agrees_with != "neither" else Verdict.FAIL
    return PanopticRow(label, thresholds, pixel, differing, int(sum(len(e["panoptic_seg"][1]) for e in expected)),
                       equal, pq, bound, verdict, agrees_with)


def _final_outputs(final: dict) -> dict[str, object]:
    """A final-output dict (PyTorch's or TF's) by row name: 'outputs/pred_logits', 'outputs/aux_3_masks', ..."""
    named = {"outputs/pred_logits": final["pred_logits"], "outputs/pred_masks": final["pred_masks"]}
    if "layer_logits" in final:  # TF: every decoder layer stacked, the last being the final one
        layers = list(zip(final["layer_logits"][:-1], final["layer_masks"][:-1], strict=True))
    else:  # PyTorch: a list of per-layer dicts (absent without deep supervision)
        layers = [(aux["pred_logits"], aux["pred_masks"]) for aux in final.get("aux_outputs", [])]
    for index, (logits, masks) in enumerate(layers):
        named[f"outputs/aux_{index}_logits"], named[f"outputs/aux_{index}_masks"] = logits, masks
    return {k: np.asarray(v.detach().double().numpy() if hasattr(v, "detach") else v) for k, v in named.items()}


def _as_compute(tf_model: object, value: object) -> object:
    """A block input as the TF model computes it: float inputs in its compute dtype (bfloat16 under a
    mixed policy, where Keras casts only a layer's first argument by itself); other values as they are."""
    import tensorflow as tf

    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return tf.constant(value, dtype=tf_model.compute_dtype)
    if isinstance(value, np.ndarray):
        return tf.constant(value)
    return value


def _amplification(rows: dict[str, TapRow], taps: list[Tap]) -> None:
    """Each block's error out over its error in (the largest of its inputs'), for TF and for PyTorch's float32
    run, both against the float64 reference."""
    for tap in taps:
        comparison = rows[tap.name].cumulative
        sources = [rows[name].cumulative for name in tap.inputs if name in rows and rows[name].cumulative]
        if comparison is None or comparison.tf_vs_float64 is None or not sources:
            continue
        tf_in = max(s.tf_vs_float64 or 0.0 for s in sources)
        ref_in = max(s.reference_vs_float64 or 0.0 for s in sources)
        comparison.tf_amplification = comparison.tf_vs_float64 / tf_in if tf_in > 0 else None
        comparison.reference_amplification = comparison.reference_vs_float64 / ref_in if ref_in > 0 else None


@dataclasses.dataclass
class ReferenceCapture:
    """Everything the reference contributes to a parity run (reusable for several TF models: fault injection)."""

    images: np.ndarray
    taps: list[Tap]
    outputs: dict[str, np.ndarray]
    inputs: dict[str, tuple]
    final: dict
    exact_outputs: dict[str, np.ndarray]  # the float64 run's (empty without one)
    exact_final: dict | None
    bf16: tuple | None  # the autocast-bfloat16 run's (outputs, inputs, final), for the bf16 profile
    timings_s: dict[str, float]


def capture_reference(torch_model: object, images: np.ndarray, profile: Profile | str = "fp32",
                      float64: bool = True) -> ReferenceCapture:
    """Run the reference (float32; float64 for the band rule; autocast-bf16 for the bf16 profile's context)."""
    import torch

    profile = PROFILES[profile] if isinstance(profile, str) else profile
    taps = build_taps(torch_model.preset)
    timings = {}
    start = time.perf_counter()
    torch_images = list(torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2))
    outputs, inputs, final = _torch_capture(torch_model, taps, torch_images)
    timings["pytorch_s"] = time.perf_counter() - start
    exact_outputs, exact_final = {}, None
    if float64 and profile.float64_band:
        start = time.perf_counter()
        exact_outputs, _, exact_final = _torch_capture(float64_twin(torch_model), taps,
                                                       [i.double() for i in torch_images], with_inputs=False)
        timings["pytorch_float64_s"] = time.perf_counter() - start
    bf16 = _torch_capture(torch_model, taps, torch_images, autocast_bf16=True) if profile.policy else None
    return ReferenceCapture(np.asarray(images), taps, outputs, inputs, final, exact_outputs, exact_final, bf16, timings)


def run_parity(torch_model: object, tf_model: object, images: np.ndarray, profile: Profile | str = "fp32",
               modes: tuple[str, ...] = ("cumulative", "isolated"), float64: bool = True,
               reference: ReferenceCapture | None = None) -> ParityResult:
    """images: uint8/float [B, H, W, 3] RGB. Compares every tap, the outputs, the aux outputs and inference;
    `reference` reuses a capture of the same images (several TF models against one reference run)."""
    import tensorflow as tf

    from mfport.tf_maskformer.modeling.taps import record_taps

    profile = PROFILES[profile] if isinstance(profile, str) else profile
    float64 = float64 and profile.float64_band and "cumulative" in modes
    preset = torch_model.preset
    if reference is None:
        reference = capture_reference(torch_model, images, profile, float64)
    float64 = float64 and reference.exact_final is not None
    taps, torch_out, torch_in, torch_final = reference.taps, reference.outputs, reference.inputs, reference.final
    exact_out, exact_final, torch_bf16 = reference.exact_outputs, reference.exact_final, reference.bf16
    timings = dict(reference.timings_s)
    start = time.perf_counter()
    with record_taps() as tf_taps:
        tf_inputs = tf_model.preprocess(tf.constant(np.asarray(images, np.float32)))
        tf_final = tf_model(tf_inputs, training=False)
    timings["tensorflow_s"] = time.perf_counter() - start

    rows: dict[str, TapRow] = {}
    for tap in taps:
        reference = to_tf_layout(torch_out[tap.name], tap.layout)
        row = TapRow(tap.name, tap.torch_module, tap.tf_path, RowKind.TAP)
        if "cumulative" in modes:
            exact = to_tf_layout(exact_out[tap.name], tap.layout) if float64 else None
            row.cumulative = compare(reference, tf_taps[tap.name].numpy(), profile, profile.cumulative_rel_max,
                                     tap.logits, exact)
            if torch_bf16 is not None:
                row.cumulative.reference_bf16 = rel_max_error(
                    reference, to_tf_layout(torch_bf16[0][tap.name], tap.layout))
        if "isolated" in modes and tap.isolated is not None:
            args, kwargs = torch_in[tap.name]
            layouts = list(tap.input_layouts)
            tf_args = [_as_compute(tf_model, to_tf_layout(a, layouts[i])) for i, a in enumerate(args)]
            tf_kwargs = {k: _as_compute(tf_model, to_tf_layout(v, layouts[0]) if isinstance(v, np.ndarray) and
                                        v.ndim == 3 else v) for k, v in kwargs.items()}
            isolated = tap.isolated(tf_model, tf_args, tf_kwargs)
            row.isolated = compare(reference, isolated.numpy(), profile, profile.isolated_rel_max, tap.logits)
        rows[tap.name] = row
    if float64:
        _amplification(rows, taps)
    tf_named = _final_outputs(tf_final)
    exact_named = _final_outputs(exact_final) if float64 else {}
    bf16_named = None if torch_bf16 is None else _final_outputs(torch_bf16[2])
    for name, reference in _final_outputs(torch_final).items():
        row = TapRow(name, "MaskFormer.forward", "MaskFormer.call", RowKind.OUTPUT)
        if "cumulative" in modes:
            row.cumulative = compare(reference, tf_named[name], profile, profile.cumulative_rel_max,
                                     name.endswith("logits"), exact_named.get(name))
            if bf16_named is not None:
                row.cumulative.reference_bf16 = rel_max_error(reference, bf16_named[name])
        rows[name] = row

    semantic, panoptic = None, []
    if "cumulative" in modes:
        semantic, panoptic = postprocess_rows(torch_model, np.asarray(images), torch_final, tf_final,
                                              tuple(tf_inputs.shape[1:3]), profile, exact_final,
                                              None if torch_bf16 is None else torch_bf16[2])
    lint = config_lint(torch_model, tf_model)
    ordered = list(rows.values())
    first = next((r.tap for r in ordered if r.cumulative is not None and not r.cumulative.verdict.ok), None)
    if first is None and semantic is not None and not semantic.verdict.ok:
        first = "inference/semantic_map"
    if first is None:
        first = next((f"inference/panoptic_seg ({p.label})" for p in panoptic if not p.verdict.ok), None)
    passed = (all(r.verdict.ok for r in ordered) and (semantic is None or semantic.verdict.ok)
              and all(p.verdict.ok for p in panoptic) and all(item.same for item in lint))
    return ParityResult(
        preset=preset.name, profile=profile.name, modes=list(modes),
        inputs={"shape": list(np.asarray(images).shape), "dtype": str(np.asarray(images).dtype)},
        rows=ordered, semantic=semantic, panoptic=panoptic, lint=lint, first_divergence=first, passed=passed,
        float64=float64, band_factor=FLOAT32_BAND_FACTOR,
        environment=environment(), timings_s=timings)


def environment() -> dict[str, object]:
    import tensorflow as tf
    import torch

    return {"torch": torch.__version__, "tensorflow": tf.__version__, "python": platform.python_version(),
            "device": "cpu", "machine": platform.machine(), "cpu": cpu_model(), "kernel_settings": kernel_settings(),
            "torch_threads": torch.get_num_threads()}
