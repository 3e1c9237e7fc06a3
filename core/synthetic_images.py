"""Deterministic real-looking RGB images (smooth backgrounds, textured shapes, sensor noise), numpy only."""

from __future__ import annotations

import numpy as np


def synthetic_images(seed: int, batch: int, height: int, width: int) -> np.ndarray:
    """uint8 [batch, height, width, 3] RGB images; the same seed always gives the same pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, height), np.linspace(0.0, 1.0, width), indexing="ij")
    images = np.empty((batch, height, width, 3), dtype=np.uint8)
    for b in range(batch):
        img = np.empty((height, width, 3))
        img[:] = rng.uniform(40, 200, size=3)
        # Low-frequency illumination and colour variation.
        for _ in range(4):
            freq = rng.uniform(0.3, 2.5, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.cos(2 * np.pi * (freq[0] * yy + freq[1] * xx) + phase)
            img += wave[..., None] * rng.uniform(-25, 25, size=3)
        # Objects: ellipses and rectangles, each with its own colour and a striped texture.
        for _ in range(int(rng.integers(4, 9))):
            cy, cx = rng.uniform(0, 1, size=2)
            ry, rx = rng.uniform(0.05, 0.3, size=2)
            if rng.random() < 0.5:
                region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            else:
                region = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            stripes = np.sin(2 * np.pi * rng.uniform(5, 30) * (yy * np.cos(cx * 6) + xx * np.sin(cy * 6)))
            colour = rng.uniform(0, 255, size=3)
            texture = colour + stripes[..., None] * rng.uniform(0, 30)
            img[region] = texture[region]
        img += rng.normal(0, 6, size=img.shape)
        images[b] = np.clip(img, 0, 255).astype(np.uint8)
    return images
