"""The forward parity suite: every tap of every preset within its bound, and the harness localises faults."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import mfport_command
from tf_helpers import converted_tf_model

from parity.harness import run_parity
from torch_reference.loading import load_maskformer
from torch_reference.presets import PRESETS
from torch_reference.synthetic_images import synthetic_images


def _all_rows_pass(result) -> None:
    failures = [(row["tap"], mode, metrics.get("rel_max_error")) for row in result.rows
                for mode, metrics in row.items() if mode in ("cumulative", "isolated") and metrics["verdict"] != "pass"]
    assert not failures, failures
    assert result.passed and result.first_divergence is None
    assert all(item["same"] for item in result.lint)


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_every_preset_at_reduced_size(seeded_checkpoint, preset_name):
    torch_model, _ = load_maskformer(seeded_checkpoint(preset_name))
    tf_model = converted_tf_model(seeded_checkpoint(preset_name), preset_name)
    result = run_parity(torch_model, tf_model, synthetic_images(2, 2, 259, 323))  # not divisible by 32
    _all_rows_pass(result)
    names = [row["tap"] for row in result.rows]
    assert names[:5] == ["backbone/stem", "backbone/res2", "backbone/res3", "backbone/res4", "backbone/res5"]
    assert ("pixel_decoder/encoder_layer_5" in names) == (PRESETS[preset_name].pixel_decoder == "transformer_encoder")
    assert sum(name.startswith("outputs/aux_") for name in names) == 10
    logits = next(row for row in result.rows if row["tap"] == "outputs/pred_logits")["cumulative"]
    assert logits["argmax_agreement"] == 1.0 and logits["cosine"] > 0.9999999
    panoptic = [row["cumulative"] for row in result.rows if row["tap"].startswith("inference/panoptic_seg")]
    assert len(panoptic) == 2 and all(p["segments_equal"] and p["pq_tf_vs_pytorch"] >= 0.999 for p in panoptic)
    assert sum(p["segments"] for p in panoptic) > 0  # the low thresholds give segments to compare


def test_full_size_batch_two(seeded_checkpoint):
    torch_model, _ = load_maskformer(seeded_checkpoint("r50_6enc_coco_panoptic"))
    tf_model = converted_tf_model(seeded_checkpoint("r50_6enc_coco_panoptic"), "r50_6enc_coco_panoptic")
    _all_rows_pass(run_parity(torch_model, tf_model, synthetic_images(3, 2, 480, 640)))


def test_bf16_profile_runs_tf_in_bfloat16_near_the_references_own_bf16_error_and_still_catches_a_fault(
        seeded_checkpoint):
    from converter.convert import tf_model_from_checkpoint

    checkpoint = seeded_checkpoint("r50_6enc_coco_panoptic")
    torch_model, _ = load_maskformer(checkpoint)
    tf_model, _ = tf_model_from_checkpoint(checkpoint, "r50_6enc_coco_panoptic", policy="mixed_bfloat16")
    assert tf_model.compute_dtype == "bfloat16" and tf_model.variables[0].dtype == "float32"
    images = synthetic_images(2, 2, 259, 323)
    result = run_parity(torch_model, tf_model, images, "bf16")
    assert result.passed and result.profile == "bf16", result.first_divergence
    judged = [row for row in result.rows if "rel_max_error" in (row.get("cumulative") or {})]
    for row in judged:
        cumulative = row["cumulative"]
        # bfloat16 really ran (float32 parity is ~1e-5 here), and TF's error is of the order of PyTorch's
        # own autocast-bfloat16 error at the same tap, computed here by running the reference that way.
        assert cumulative["rel_max_error"] > 1e-3, row["tap"]
        assert cumulative["rel_max_error"] <= 3 * cumulative["reference_bf16_rel_max_error"], row["tap"]
        if row.get("isolated"):
            assert row["isolated"]["rel_max_error"] <= 8 * 2.0**-8, row["tap"]
    semantic = next(row for row in result.rows if row["tap"] == "inference/semantic_map")["cumulative"]
    assert semantic["verdict"] == "reported" and 0 < semantic["reference_bf16_agreement"] <= 1

    kernel = tf_model.backbone.stages[2].blocks[3].conv2.kernel  # res4 block 3: a 5 % error, above bf16 noise
    kernel.assign(kernel * 1.05)
    faulty = {row["tap"]: row for row in run_parity(torch_model, tf_model, images, "bf16", ("isolated",)).rows}
    assert faulty["backbone/res4"]["isolated"]["verdict"] == "fail"
    assert faulty["backbone/res3"]["isolated"]["verdict"] == "pass"


def test_injected_fault_is_the_first_divergence_and_isolated_blames_it(seeded_checkpoint):
    torch_model, _ = load_maskformer(seeded_checkpoint("r50_ade20k"))
    tf_model = converted_tf_model(seeded_checkpoint("r50_ade20k"), "r50_ade20k")
    kernel = tf_model.backbone.stages[2].blocks[3].conv2.kernel  # res4 block 3
    kernel.assign(kernel * 1.001)
    result = run_parity(torch_model, tf_model, synthetic_images(2, 1, 128, 160))
    rows = {row["tap"]: row for row in result.rows}
    assert not result.passed and result.first_divergence == "backbone/res4"
    assert rows["backbone/res3"]["isolated"]["verdict"] == "pass"
    assert rows["backbone/res4"]["isolated"]["verdict"] == "fail"
    assert rows["backbone/res5"]["isolated"]["verdict"] == "pass"  # res5 itself is fine, only fed bad input


def test_config_lint_names_a_difference(seeded_checkpoint):
    from tf_maskformer.modeling.maskformer_model import MaskFormer

    torch_model, _ = load_maskformer(seeded_checkpoint("r50_ade20k"))
    tf_model = MaskFormer(PRESETS["r50_ade20k"].with_overrides(norm_eps=1e-3, overlap_threshold=0.5)).build_for()
    result = run_parity(torch_model, tf_model, synthetic_images(2, 1, 64, 64), modes=("cumulative",))
    differing = {item["field"] for item in result.lint if not item["same"]}
    assert {"norm_eps", "overlap_threshold", "frozen_bn_eps (layers)", "group_norm (groups, eps)",
            "layer_norm_eps"} <= differing
    assert not result.passed


def test_cli_writes_reports(seeded_checkpoint, tmp_path):
    command = [*mfport_command(), "parity", str(seeded_checkpoint("r50_ade20k")), "--image-size", "96", "130",
               "--batch", "1", "--json"]
    result = subprocess.run([*command, "--no-gradients", "--report-dir", str(tmp_path / "rep")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["passed"] is True
    # With gradients: the exit code follows the verdict, and the report holds every training row.
    full = subprocess.run([*command, "--report-dir", str(tmp_path / "full")], capture_output=True, text=True,
                          timeout=600)
    verdict = json.loads(full.stdout)["passed"]
    assert full.returncode == (0 if verdict else 1)
    training = json.loads((tmp_path / "full" / "report.json").read_text())["training"]
    assert len(training["matcher"]) == 6 and len(training["losses"]) == 18 and len(training["gradients"]) == 245
    assert verdict == all(r["verdict"] == "pass" for r in training["gradients"])
    assert "## Matcher, losses, gradients" in (tmp_path / "full" / "report.md").read_text()
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["schema_version"] == 1 and report["preset"] == "r50_ade20k"
    assert report["environment"]["torch"] and report["bounds"] == {"cumulative": 1e-4, "isolated": 1e-5}
    row = next(r for r in report["rows"] if r["tap"] == "backbone/res3")
    assert row["pytorch_module"] == "backbone.res3" and row["cumulative"]["verdict"] == "pass"
    assert np.isfinite(row["isolated"]["rel_max_error"])
    assert "| backbone/res3 |" in (tmp_path / "rep" / "report.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "rep" / "report.html").read_text()


@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r50_6enc_coco_panoptic"])
def test_matcher_losses_and_gradients_agree(seeded_checkpoint, preset_name):
    from parity.training import run_training_parity

    torch_model, _ = load_maskformer(seeded_checkpoint(preset_name))
    tf_model = converted_tf_model(seeded_checkpoint(preset_name), preset_name)
    result = run_training_parity(torch_model, tf_model, synthetic_images(4, 2, 150, 210))
    assert [r["layer"] for r in result["matcher"]] == ["final", "aux_0", "aux_1", "aux_2", "aux_3", "aux_4"]
    assert all(r["identical"] and r["in_graph_identical"] for r in result["matcher"])
    assert len(result["losses"]) == 18
    for row in result["losses"]:
        assert row["rel_error_isolated"] <= 1e-6, row
        assert row["rel_error_cumulative"] <= 1e-4, row
    assert len(result["gradients"]) == len(tf_model.trainable_variables) and not result["missing_gradients"]
    # The bound is cosine >= 0.99999 per tensor. Measured on r50_ade20k at 150x210: seed 0 meets it
    # everywhere, seed 4 has 33 backbone tensors down to 0.99992, seed 9 142 tensors down to 0.99901 (the
    # backward pass of the seeded model is sensitive to float32 forward differences). This test holds the
    # measured floor so that a regression shows; the parity report states the 0.99999 verdicts as they are.
    assert min(r["cosine"] for r in result["gradients"] if not r["analytically_zero"]) >= 0.999
    # Only gradients that are zero by construction may be classed as such: attention key biases (softmax
    # ignores a per-query shift) and decoder layer 0's self-attention q/k/v kernels and q bias (its values
    # all equal the value bias, since tgt starts at zeros).
    layer0 = "sem_seg_head/predictor/transformer/decoder/layers/0/self_attn/"
    expected_zero = {name for name in (r["tf_variable"] for r in result["gradients"]) if name.endswith("key/bias")}
    expected_zero |= {layer0 + n for n in ("query/kernel", "key/kernel", "value/kernel", "query/bias")}
    assert {r["tf_variable"] for r in result["gradients"] if r["analytically_zero"]} == expected_zero


def test_float64_context_of_gradient_parity(seeded_checkpoint):
    """Seed 4 at 150x210 puts r50_ade20k gradients below the cosine bound; a float64 backward of the
    reference shows why: PyTorch's own float32 gradient is below the bound there too, TF's mostly is not."""
    from parity.training import run_training_parity

    torch_model, _ = load_maskformer(seeded_checkpoint("r50_ade20k"))
    tf_model = converted_tf_model(seeded_checkpoint("r50_ade20k"), "r50_ade20k")
    result = run_training_parity(torch_model, tf_model, synthetic_images(4, 2, 150, 210), seed=4,
                                 float64_reference=True)
    assert result["float64_reference"]["same_assignment_as_float32"]
    judged = [r for r in result["gradients"] if not r["analytically_zero"]]
    failing = [r for r in judged if r["verdict"] == "fail"]
    assert failing and all(r["reference_below_bound_vs_float64"] for r in failing)
    assert min(r["tf_cosine_to_float64"] for r in judged) > min(r["reference_cosine_to_float64"] for r in judged)
    assert min(r["tf_cosine_to_float64"] for r in judged) >= 0.9999
    # The report's one-line context for the failing rows, counted here by hand.
    from parity.training import thread_count_context

    own = sum(r["reference_self_cosine"] < 0.99999 for r in failing)
    context = thread_count_context(result["gradients"])
    assert f" {own} of the {len(failing)} failing tensors too" in context and "--float64-gradients" not in context
    float32_only = [{k: v for k, v in r.items() if "float64" not in k} for r in result["gradients"]]
    assert "--float64-gradients compares" in thread_count_context(float32_only)
    assert thread_count_context([{**r, "verdict": "pass"} for r in result["gradients"]]) is None
    # Loss terms end to end against the float64 reference's, recomputed from the stored values.
    for row in result["losses"]:
        exact = row["pytorch_float64"]
        assert row["tf_rel_error_vs_float64"] == pytest.approx(abs(row["tensorflow"] - exact) / abs(exact))
        assert row["reference_rel_error_vs_float64"] == pytest.approx(abs(row["pytorch"] - exact) / abs(exact))
    # Measured here: the mask (focal) terms of PyTorch's own float32 run are off float64 by up to 5.0e-6, TF's
    # by up to 5.8e-6, so a 1e-6 end-to-end bound lies below float32's accuracy (the verdict is isolated). The
    # 3x allowance for TF is loose here (1.2x); at 480x640 (R50 + 6 Enc) it measured 6.4e-6 against 2.0e-6.
    worst_tf = max(r["tf_rel_error_vs_float64"] for r in result["losses"])
    worst_reference = max(r["reference_rel_error_vs_float64"] for r in result["losses"])
    assert worst_reference > 1e-6 and worst_tf <= 3 * worst_reference
