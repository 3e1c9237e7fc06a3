"""Training-curve parity on the tiny architecture: both models fine-tuned side by side, TF as close to a float64
run of the reference as PyTorch's float32 run is (the band rule); the same harness fails when the TF optimiser
adds epsilon the Keras way (the bug the torch-exact AdamW removed), and when a recipe setting differs between
the two sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, tiny_preset

from mfport.core.errors import MfportError
from mfport.parity.results import Verdict
from mfport.parity.training_curve import CurveOptions, run_training_curve

pytestmark = pytest.mark.slow
STEPS = 12


@pytest.fixture(scope="module")
def checkpoint(seeded_checkpoint) -> Path:
    return seeded_checkpoint(tiny_preset())


def _options(checkpoint: Path, dataset: Path) -> CurveOptions:
    return CurveOptions(checkpoint=str(checkpoint), train_data=str(dataset / "records" / "train-*"), steps=STEPS,
                        batch=2, image_size=(64, 64))


def test_the_curves_agree_within_float32s_own_drift(checkpoint: Path, dataset: Path, tmp_path: Path) -> None:
    result = run_cli("training-parity", checkpoint, "--train-data", dataset / "records" / "train-*", "--steps",
                     str(STEPS), "--image-size", "64", "64", "--report-dir", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "training_curve.json").read_text())
    assert report["passed"] and len(report["rows"]) == STEPS
    # Judged against a float64 run of the reference (the default): its loss logged at every step.
    assert report["judged_against"] == "float64" and all(row["float64_loss"] > 0 for row in report["rows"])
    losses = [row["torch_loss"] for row in report["rows"]]
    assert losses[-1] < losses[0]  # it trained
    assert all(p["moved"] > 0 for p in report["parameters"])  # every parameter took part
    assert (tmp_path / "training_curve.png").stat().st_size > 10_000
    assert "training-curve parity" in result.stdout


def test_keras_epsilon_placement_is_caught(checkpoint: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras's Adam adds epsilon to the uncorrected sqrt(v): under full-model clipping the updates shrink."""
    import tensorflow as tf

    from mfport.tf_maskformer.optimization import MaskFormerAdamW

    def keras_epsilon(self: MaskFormerAdamW, grad: tf.Tensor, var: tf.Variable, apply_state: dict | None = None
                      ) -> tf.Operation:
        key = (var.device, var.dtype.base_dtype)
        coefficients = (apply_state or {}).get(key) or self._fallback_apply_state(*key)
        lr = coefficients["lr_t"] * self.learning_rate_multiplier(var)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_t = m.assign_add((grad - m) * coefficients["one_minus_beta_1_t"])
        v_t = v.assign(v * coefficients["beta_2_t"] + tf.square(grad) * coefficients["one_minus_beta_2_t"])
        bias = tf.sqrt(1.0 - coefficients["beta_2_power"]) / (1.0 - coefficients["beta_1_power"])
        return var.assign_sub(lr * bias * m_t / (tf.sqrt(v_t) + coefficients["epsilon"])).op

    monkeypatch.setattr(MaskFormerAdamW, "_resource_apply_dense", keras_epsilon)
    curve = run_training_curve(_options(checkpoint, dataset))
    assert not curve.passed
    failing = [p for p in curve.parameters if p.verdict is Verdict.FAIL]
    # Measured here: 141 of 145 tensors outside their band, the median at 140x it (the correct optimiser: none
    # outside, the worst at 0.3 of its band). Half of them is a margin no kernel choice moves.
    assert len(failing) > len(curve.parameters) // 2, [(p.name, p.tf_drift, p.float32_drift) for p in failing[:5]]


def test_a_recipe_difference_is_named(checkpoint: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mfport.tf_maskformer.optimization import MaskFormerAdamW

    monkeypatch.setattr(MaskFormerAdamW, "learning_rate_multiplier", lambda self, var: 1.0)
    with pytest.raises(MfportError, match="recipe mismatch on backbone"):
        run_training_curve(_options(checkpoint, dataset))


def test_each_step_is_judged_against_float64_or_else_the_thread_repeat() -> None:
    """The drifts a step reports, by hand: with a float64 run both float32 runs are measured from it; without one,
    TF from PyTorch's float32 run and float32's own noise as the repeat on other threads."""
    from mfport.parity.training_curve import CurveStep

    judged = CurveStep(3, 1e-4, torch_loss=10.002, tf_loss=9.996, float64_loss=10.0, other_threads_loss=None)
    assert judged.tf_drift == pytest.approx(4e-4, rel=1e-9) and judged.float32_drift == pytest.approx(2e-4, rel=1e-9)
    repeat = CurveStep(3, 1e-4, torch_loss=10.0, tf_loss=10.003, float64_loss=None, other_threads_loss=10.001)
    assert repeat.tf_drift == pytest.approx(3e-4, rel=1e-9) and repeat.float32_drift == pytest.approx(1e-4, rel=1e-9)
