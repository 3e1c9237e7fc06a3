"""The parity harness: verdicts judged against float32's own accuracy (a float64 run of the reference), every
family within them, real faults still caught at the right tap on weights that amplify float32 noise, reports.

What the tests assert holds on any CPU: verdicts come from the band rule (TF's error against float64 within a
factor of PyTorch's own float32 error there), not from one machine's figures; where a figure is asserted, its
comment says where the margin comes from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assigned, changed, run_cli

import mfport.tf_maskformer.modeling.resize as resize
from mfport.core.synthetic_images import synthetic_images
from mfport.parity.harness import capture_reference, run_parity
from mfport.parity.metrics import FLOAT32_BAND_FACTOR, rel_max_error
from mfport.parity.results import Verdict

pytestmark = pytest.mark.numerics


def _passes(result) -> None:
    failures = [(row.tap, mode) for row in result.rows for mode in ("cumulative", "isolated")
                if getattr(row, mode) is not None and not getattr(row, mode).verdict.ok]
    assert not failures, failures
    assert result.passed and result.first_divergence is None, result.first_divergence
    assert all(item.same for item in result.lint)


def _band_rule_holds(result) -> None:
    """Every cumulative verdict is the band rule applied to the row's own numbers (recomputed here)."""
    for row in result.rows:
        c = row.cumulative
        if c is None or c.metrics is None:
            continue
        allowed = max(c.bound, FLOAT32_BAND_FACTOR * c.reference_vs_float64)
        assert c.allowed == pytest.approx(allowed)
        assert (c.verdict is Verdict.PASS) == (c.tf_vs_float64 <= allowed), row.tap


@pytest.mark.heavy
@pytest.mark.parametrize(("preset_name", "size"), [
    ("r50_6enc_coco_panoptic", (259, 323)),  # not divisible by 32, no padding (COCO)
    ("r101c_ade20k", (160, 224)),  # DeepLab stem: its three convs are taps
    ("swin_t_coco_panoptic", (123, 161)),  # unpadded COCO Swin: odd stage sizes, res5 4x6 < the 7x7 window
    ("swin_b_ade20k", (96, 128)),  # window 12 over maps of 24x32 .. 3x4
])
def test_every_family_within_float32s_band(models, preset_name, size):
    torch_model, tf_model = models(preset_name)
    result = run_parity(torch_model, tf_model, synthetic_images(2, 2, *size))
    _passes(result)
    _band_rule_holds(result)
    names = [row.tap for row in result.rows]
    if preset_name == "r101c_ade20k":
        assert names[:4] == ["backbone/stem/conv1", "backbone/stem/conv2", "backbone/stem/conv3", "backbone/stem"]
    if preset_name.startswith("swin"):
        spec = torch_model.preset.backbone
        assert sum(n.startswith("backbone/layers/") and "/blocks/" in n for n in names) == sum(spec.depths)
        block = result.row("backbone/layers/2/blocks/1")  # a shifted block, judged on its own in isolation
        assert block.isolated is not None and block.isolated.verdict.ok
    assert sum(name.startswith("outputs/aux_") for name in names) == 10
    logits = result.row("outputs/pred_logits").cumulative
    # Errors within the band (<= ~1e-4 of the max) leave the cosine within ~1e-8 of 1; a fault moves it by >= 1e-4.
    assert logits.metrics.cosine > 0.99999
    # The harness's float64 figures are what they say: the reference's own error recomputed by hand.
    exact = result.row("outputs/pred_masks").cumulative
    assert exact.reference_vs_float64 > 0 and exact.tf_vs_float64 > 0
    assert result.semantic.verdict.ok and all(p.verdict.ok for p in result.panoptic)


@pytest.fixture(scope="module")
def sharp(models):
    """R50 + 6 Enc with sharp attention (q/k 6/sqrt(fan_in)): the decoder amplifies float32 rounding ~100x."""
    torch_model, tf_model = models("r50_6enc_coco_panoptic", attention="sharp")
    images = synthetic_images(3, 2, 192, 256)
    return torch_model, tf_model, images, capture_reference(torch_model, images)


@pytest.mark.heavy
def test_sharp_attention_is_no_false_alarm(sharp):
    torch_model, tf_model, images, reference = sharp
    result = run_parity(torch_model, tf_model, images, reference=reference)
    _passes(result)
    _band_rule_holds(result)
    # The regime the issue reported: PyTorch's own float32 run is farther than the fixed bound (1e-4) from its
    # float64 run (measured here 4.6e-4 to 1.6e-3 at 192x256 .. 480x640: a 4x margin), so the old verdict,
    # TF against PyTorch's float32 run at 1e-4, fails although TF is as close to float64 as PyTorch.
    worst_reference = max(r.cumulative.reference_vs_float64 for r in result.rows if r.cumulative)
    assert worst_reference > 1e-4
    assert any(r.cumulative.metrics.rel_max_error > r.cumulative.bound for r in result.rows if r.cumulative)
    encoder = result.row("pixel_decoder/encoder_layer_0").cumulative
    assert encoder.tf_amplification is not None and encoder.reference_amplification is not None


def _first_divergence_with(sharp, fault) -> object:
    torch_model, tf_model, images, reference = sharp
    with fault(tf_model):
        return run_parity(torch_model, tf_model, images, reference=reference)


def _layer_norm_epsilon(model):
    # The LayerNorm after decoder layer 0's self-attention: its input (attention over a zero tgt) has a tiny
    # variance, so eps 1e-6 instead of 1e-5 changes its output by ~1 %.
    return changed(model.sem_seg_head.predictor.decoder_layers[0].norm1, "epsilon", 1e-6)


def _transposed_kernel(model):
    kernel = model.sem_seg_head.predictor.mask_embed.mlp_layers[0].kernel  # square: a missed transpose fits
    return assigned(kernel, kernel.numpy().T)


def _padding(model):
    return changed(model.sem_seg_head.pixel_decoder.adapters[2], "torch_padding", 1)  # adapter_3: 1x1, pad 0


def _nearest_off_by_one(model):
    original = resize._torch_nearest_indices

    def shifted(in_size, out_size):
        import tensorflow as tf

        return tf.minimum(original(in_size, out_size) + 1, tf.cast(in_size, tf.int32) - 1)

    return changed(resize, "_torch_nearest_indices", shifted)


@pytest.mark.heavy
@pytest.mark.parametrize(("fault", "tap"), [
    (_layer_norm_epsilon, "predictor/decoder_layer_0"),
    (_transposed_kernel, "predictor/mask_embed"),
    (_padding, "pixel_decoder/layer_3"),
    (_nearest_off_by_one, "pixel_decoder/layer_3"),
])
def test_real_faults_fail_at_their_tap_on_sharp_weights(sharp, fault, tap):
    result = _first_divergence_with(sharp, fault)
    assert not result.passed and result.first_divergence == tap
    row = result.row(tap)
    assert not row.verdict.ok
    if row.cumulative.metrics is not None:  # the padding fault changes the shape: a failure by itself
        assert row.cumulative.tf_vs_float64 > row.cumulative.allowed
    # Blocks before it are untouched and pass.
    before = [r for r in result.rows[: result.rows.index(row)] if r.cumulative]
    assert all(r.cumulative.verdict.ok for r in before)


@pytest.mark.heavy
def test_a_small_kernel_error_is_blamed_on_its_block_in_isolation(models):
    torch_model, tf_model = models("r50_ade20k")
    kernel = tf_model.backbone.stages[2].blocks[3].conv2.kernel  # res4 block 3
    with assigned(kernel, kernel.numpy() * 1.001):
        result = run_parity(torch_model, tf_model, synthetic_images(2, 1, 128, 160))
    rows = {row.tap: row for row in result.rows}
    assert not result.passed and result.first_divergence == "backbone/res4"
    assert rows["backbone/res3"].isolated.verdict.ok
    assert not rows["backbone/res4"].isolated.verdict.ok  # ~1e-3 of the kernel, isolated bound 1e-5
    assert rows["backbone/res5"].isolated.verdict.ok  # res5 itself is fine, only fed bad input


@pytest.mark.heavy
def test_config_lint_names_a_difference(models):
    from mfport.tf_maskformer.modeling.maskformer_model import MaskFormer

    torch_model, _ = models("r50_ade20k")
    tf_model = MaskFormer(torch_model.preset.with_overrides(norm_eps=1e-3, overlap_threshold=0.5)).build_for()
    result = run_parity(torch_model, tf_model, synthetic_images(2, 1, 64, 64), modes=("cumulative",), float64=False)
    differing = {item.field for item in result.lint if not item.same}
    assert {"norm_eps", "overlap_threshold", "frozen_bn_eps (layers)", "group_norm (groups, eps)",
            "layer_norm_eps"} <= differing
    assert not result.passed


@pytest.mark.slow
def test_bf16_profile_runs_tf_in_bfloat16_and_still_catches_a_fault(seeded_checkpoint, models):
    from mfport.converter.convert import tf_model_from_checkpoint

    torch_model, _ = models("r50_6enc_coco_panoptic")
    tf_model, _ = tf_model_from_checkpoint(seeded_checkpoint("r50_6enc_coco_panoptic"), torch_model.preset,
                                           policy="mixed_bfloat16")
    assert tf_model.compute_dtype == "bfloat16" and tf_model.variables[0].dtype == "float32"
    images = synthetic_images(2, 2, 128, 160)
    result = run_parity(torch_model, tf_model, images, "bf16")
    assert result.passed and result.profile == "bf16" and not result.float64, result.first_divergence
    for row in result.rows:
        cumulative = row.cumulative
        if cumulative is None or cumulative.metrics is None:
            continue
        # bfloat16 really ran (float32 parity is ~1e-5 here) ...
        assert cumulative.metrics.rel_max_error > 1e-3, row.tap
        # ... and TF's error is of the order of PyTorch's own autocast-bfloat16 error at the same tap (both are
        # bfloat16 rounding of the same function; measured 0.5-1.9x, bound 3x).
        assert cumulative.metrics.rel_max_error <= 3 * cumulative.reference_bf16, row.tap
        if row.isolated:
            assert row.isolated.metrics.rel_max_error <= 8 * 2.0**-8, row.tap  # 8 units of bfloat16's roundoff
    assert result.semantic.verdict is Verdict.REPORTED and 0 < result.semantic.reference_bf16_agreement <= 1
    # res4 block 3's 3x3 kernel 25 % off: a real bug, far above bfloat16's 8-bit noise (a 5 % error in this
    # residual branch moves res4 by ~2 % of its range, inside the 3e-2 isolated bound: bf16 cannot see it).
    kernel = tf_model.backbone.stages[2].blocks[3].conv2.kernel
    with assigned(kernel, kernel.numpy() * 1.25):
        faulty = {r.tap: r for r in run_parity(torch_model, tf_model, images, "bf16", ("isolated",)).rows}
    assert not faulty["backbone/res4"].isolated.verdict.ok and faulty["backbone/res3"].isolated.verdict.ok


@pytest.mark.heavy
@pytest.mark.parametrize("preset_name", ["r50_ade20k", "swin_t_coco_panoptic"])
def test_matcher_losses_and_gradients_within_float32s_band(models, preset_name):
    from mfport.parity.training import GRADIENT_COSINE_BOUND, LOSS_REL_BOUND, run_training_parity

    torch_model, tf_model = models(preset_name)
    result = run_training_parity(torch_model, tf_model, synthetic_images(4, 2, 128, 160), seed=4,
                                 float64_reference=True)
    assert result.passed, [r.tf_variable for r in result.gradients if not r.verdict.ok][:5]
    assert [r.layer for r in result.matcher] == ["final", "aux_0", "aux_1", "aux_2", "aux_3", "aux_4"]
    for row in result.matcher:  # identical, or equally optimal within the cost matrices' float32 difference
        assert row.identical or row.cost_gap <= row.cost_tolerance
    assert len(result.losses) == 18 and not result.missing_gradients
    assert len(result.gradients) == len(tf_model.trainable_variables)
    for row in result.losses:  # the band rule, recomputed from the row's own numbers
        allowed = max(LOSS_REL_BOUND, FLOAT32_BAND_FACTOR * row.reference_isolated_vs_float64)
        assert row.isolated_allowed == pytest.approx(allowed) and row.tf_isolated_vs_float64 <= allowed
        exact = row.end_to_end_float64
        assert row.tf_rel_error_vs_float64 == pytest.approx(abs(row.tensorflow - exact) / abs(exact))
        assert row.reference_rel_error_vs_float64 == pytest.approx(abs(row.pytorch - exact) / abs(exact))
    for row in result.gradients:
        if not row.analytically_zero:
            # float32's own error: PyTorch's, or a float64 backward with the ReLU gates float32 noise may flip
            # flipped (a gate within noise of zero goes either way: TF's float32 run flips some, PyTorch's others).
            own = max(1 - row.reference_cosine_to_float64, 1 - (row.ambiguous_gates_cosine or 1.0))
            allowed = max(1 - GRADIENT_COSINE_BOUND, FLOAT32_BAND_FACTOR * own)
            assert row.allowed_deficit == pytest.approx(allowed)
            assert 1 - row.tf_cosine_to_float64 <= allowed, row.tf_variable
    # Only gradients that are zero by construction may be classed as such: attention key biases (softmax
    # ignores a per-query shift) and decoder layer 0's self-attention q/k/v kernels and q bias (tgt starts
    # at zeros, so every value equals the value bias).
    layer0 = "sem_seg_head/predictor/transformer/decoder/layers/0/self_attn/"
    expected_zero = {r.tf_variable for r in result.gradients if r.tf_variable.endswith("key/bias")}
    expected_zero |= {layer0 + n for n in ("query/kernel", "key/kernel", "value/kernel", "query/bias")}
    assert {r.tf_variable for r in result.gradients if r.analytically_zero} == expected_zero


@pytest.mark.heavy
def test_cli_writes_typed_reports_and_the_exit_code_follows_the_verdict(seeded_checkpoint, tmp_path):
    result = run_cli("parity", seeded_checkpoint("r50_ade20k"), "--image-size", "96", "130", "--batch", "1",
                     "--report-dir", tmp_path / "rep", "--json")
    verdict = json.loads(result.stdout.strip().splitlines()[-1])["passed"]
    assert result.returncode == (0 if verdict else 1) and verdict, result.stdout[-3000:]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["schema_version"] == 2 and report["preset"] == "r50_ade20k" and report["float64"] is True
    assert report["environment"]["cpu"] and report["bounds"] == {"cumulative": 1e-4, "isolated": 1e-5}
    row = next(r for r in report["rows"] if r["tap"] == "backbone/res3")
    assert row["pytorch_module"] == "backbone.res3" and row["cumulative"]["verdict"] == "pass"
    assert row["cumulative"]["tf_vs_float64"] <= row["cumulative"]["allowed"]
    assert len(report["training"]["matcher"]) == 6 and len(report["training"]["losses"]) == 18
    assert report["training"]["passed"] == all(g["verdict"] == "pass" for g in report["training"]["gradients"])
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert "| backbone/res3 |" in markdown and "## gradients" in markdown and "TF vs float64" in markdown
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and "overflow-wrap:anywhere" in html
    # Exact zeros (the isolated heads compute bit for bit what PyTorch does) say so instead of 0.00e+00.
    if any(r.get("isolated") and r["isolated"]["metrics"] and r["isolated"]["metrics"]["max_abs_error"] == 0
           for r in report["rows"]):
        assert ">exact ok<" in html
    console = result.stdout
    assert "backbone/res3" in console and "TF vs float64" in console


@pytest.mark.heavy
def test_console_markdown_and_html_render_the_same_rows(models, tmp_path):
    from mfport.parity.report import render_html, render_markdown, tables

    torch_model, tf_model = models("r50_ade20k")
    result = run_parity(torch_model, tf_model, synthetic_images(5, 1, 64, 96))
    meta = {"bounds": {"cumulative": 1e-4, "isolated": 1e-5}}
    markdown, html = render_markdown(result, meta), render_html(result, meta)
    for table in tables(result):
        for row in table.rows:
            assert row[0].text in markdown and row[0].text.replace("&", "&amp;") in html
    assert rel_max_error(np.ones(3), np.ones(3)) == 0.0


def test_panoptic_agreement_excuses_segments_in_the_unlabelled_region():
    """PQ of one panoptic map against the other: a predicted segment lying wholly where the reference has no
    segment is excused (COCO's void rule), not counted as a false positive, as the metric intends."""
    from mfport.parity.harness import _panoptic_quality

    reference = np.zeros((40, 40), np.int32)
    reference[:, :20] = 1  # segment 1 (class 5) on the left half, nothing on the right
    other = reference.copy()
    other[5:15, 25:35] = 2  # an extra segment inside the unlabelled half
    assert _panoptic_quality(reference, other, {1: 5, 2: 7}, num_classes=133) == pytest.approx(1.0)
    other[5:15, 5:15] = 2  # now half of it covers segment 1: a false positive, and segment 1 shrinks
    assert _panoptic_quality(reference, other, {1: 5, 2: 7}, num_classes=133) < 1.0
