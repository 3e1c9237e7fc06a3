"""Per-tap error metrics and tolerance profiles."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Profile:
    """rel_max bounds max|tf - ref| / max|ref| (the verdict); rtol/atol define the per-element tolerance
    atol * max|ref| + rtol * |ref| whose violations are counted as "share outside"."""

    name: str
    cumulative_rel_max: float
    isolated_rel_max: float
    rtol: float
    atol: float


PROFILES = {
    "fp32": Profile("fp32", cumulative_rel_max=1e-4, isolated_rel_max=1e-5, rtol=1e-4, atol=1e-5),
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
