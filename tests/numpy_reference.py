"""Independent numpy implementations of the original's definitions, written from the paper and
../shared/reference/MASKFORMER.md, used as the expected values of the tests."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def nearest_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch "nearest": src = floor(dst * in / out), on the last two axes."""
    in_h, in_w = x.shape[-2:]
    rows = np.minimum(np.floor(np.arange(out_h) * (in_h / out_h)).astype(int), in_h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (in_w / out_w)).astype(int), in_w - 1)
    return x[..., rows, :][..., :, cols]


def bilinear_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """align_corners=False: src = (dst + 0.5) * in / out - 0.5, clamped at 0, on the last two axes."""
    def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo
    in_h, in_w = x.shape[-2:]
    r0, r1, wr = axis_weights(in_h, out_h)
    c0, c1, wc = axis_weights(in_w, out_w)
    top = x[..., r0, :] * (1 - wr)[:, None] + x[..., r1, :] * wr[:, None]
    return top[..., c0] * (1 - wc) + top[..., c1] * wc


def bce_with_logits(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return -(t * np.log(sigmoid(x)) + (1 - t) * np.log(1 - sigmoid(x)))


def focal_pixelwise(x: np.ndarray, t: np.ndarray, alpha: float = 0.25, gamma: float = 2.0) -> np.ndarray:
    p = sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return alpha_t * (1 - p_t) ** gamma * bce_with_logits(x, t)


def dice(x: np.ndarray, t: np.ndarray) -> float:
    p = sigmoid(x)
    return 1.0 - (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)


def pair_cost(logits: np.ndarray, masks: np.ndarray, labels: np.ndarray, tgt_masks: np.ndarray,
              w_class: float = 1.0, w_mask: float = 20.0, w_dice: float = 1.0) -> np.ndarray:
    """[Q, T] matching cost, one pair at a time; targets nearest-resized to the prediction's size."""
    probs = softmax(logits)
    tgt = nearest_resize(tgt_masks, *masks.shape[-2:])
    cost = np.zeros((logits.shape[0], len(labels)))
    for q in range(logits.shape[0]):
        for j, label in enumerate(labels):
            cost[q, j] = (w_class * -probs[q, label]
                          + w_mask * focal_pixelwise(masks[q], tgt[j]).mean()
                          + w_dice * dice(masks[q], tgt[j]))
    return cost
