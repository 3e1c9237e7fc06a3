"""Per-tap error metrics and tolerance profiles."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Profile:
    """rel_max bounds max|tf - ref| / max|ref| (the verdict); rtol/atol define the per-element tolerance
    atol * max|ref| + rtol * |ref| whose violations are counted as "share outside". `policy` is the Keras
    mixed-precision policy the TF model runs under (the PyTorch reference always runs in float32)."""

    name: str
    cumulative_rel_max: float
    isolated_rel_max: float
    rtol: float
    atol: float
    policy: str | None = None
    semantic_agreement_min: float | None = 0.9999  # None: reported, not judged
    panoptic_pq_min: float | None = 0.999  # None: panoptic maps are reported, not judged
    training: bool = True  # matcher / loss / gradient parity belongs to this profile


PROFILES = {
    "fp32": Profile("fp32", cumulative_rel_max=1e-4, isolated_rel_max=1e-5, rtol=1e-4, atol=1e-5),
    # TPU-style: float32 variables, bfloat16 compute. bfloat16 keeps 8 significant bits (unit roundoff
    # 2^-8 = 3.9e-3), so a block's own error is a few of those (isolated bound 3e-2, about 8 units), and
    # errors grow with depth: PyTorch's own autocast-bfloat16 run of the reference is off its float32 run
    # by up to ~0.2 max|ref| in the pixel decoder (480x640, seeded R50 + 6 Enc); each row reports that
    # figure beside TF's. Matcher assignments, class decisions and panoptic merges flip under bfloat16's
    # noise (with the seeded weights' sharp class logits, PyTorch's own bfloat16 run changes 0.01-20 % of
    # the semantic map's pixels, depending on the input): matcher, loss and gradient parity are the fp32
    # profile's, and the semantic and panoptic maps are reported here (with the reference's own bfloat16
    # semantic agreement beside TF's), not judged.
    "bf16": Profile("bf16", cumulative_rel_max=0.5, isolated_rel_max=3e-2, rtol=3e-2, atol=1e-2,
                    policy="mixed_bfloat16", semantic_agreement_min=None, panoptic_pq_min=None, training=False),
}


def tap_metrics(reference: np.ndarray, value: np.ndarray, profile: Profile, rel_max: float,
                logits: bool = False) -> dict[str, object]:
    ref = np.asarray(reference, np.float64)
    got = np.asarray(value, np.float64)
    if ref.shape != got.shape:
        return {"shape_ref": list(ref.shape), "shape_tf": list(got.shape), "verdict": "shape mismatch"}
    diff = np.abs(got - ref)
    scale = float(np.abs(ref).max()) or 1.0
    tolerance = profile.atol * scale + profile.rtol * np.abs(ref)
    flat_ref, flat_got = ref.ravel(), got.ravel()
    denominator = float(np.linalg.norm(flat_ref) * np.linalg.norm(flat_got)) or 1.0
    metrics: dict[str, object] = {
        "shape": list(ref.shape),
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "max_abs_ref": scale,
        "rel_max_error": float(diff.max()) / scale,
        "cosine": float(flat_ref @ flat_got) / denominator,
        "share_outside_tolerance": float(np.mean(diff > tolerance)),
        "bound": rel_max,
    }
    if logits:
        metrics["argmax_agreement"] = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    metrics["verdict"] = "pass" if metrics["rel_max_error"] <= rel_max else "fail"
    return metrics
