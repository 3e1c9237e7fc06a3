"""What a training run's TensorBoard summaries hold, read back: scalar series and the loss-curve plot."""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from mfport.core.checkpoint_io import atomic_write
from mfport.core.errors import MfportError


def read_scalars(log_dir: str | os.PathLike[str], tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar summary in the event files under log_dir, in step order."""
    points = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    points[int(event.step)] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                        else float(value.simple_value)
    return sorted(points.items())

def plot_loss_curve(model_dir: str | os.PathLike[str], png: str | os.PathLike[str], title: str) -> Path:
    """The training loss terms per step (from the TensorBoard summaries) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    total = read_scalars(Path(model_dir) / "train", "total_loss")
    if not total:
        raise MfportError(f"{model_dir}/train: no total_loss summaries to plot", parameter="model_dir")
    axes[0].plot(*zip(*total, strict=True), marker=".", label="total (weighted, final + aux)")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_title(title)
    axes[0].legend()
    for term in ("loss_ce", "loss_mask", "loss_dice"):
        points = read_scalars(Path(model_dir) / "train", term)
        if points:
            axes[1].plot(*zip(*points, strict=True), marker=".", label=term)
    axes[1].set_xlabel("step")
    axes[1].set_yscale("log")
    axes[1].set_title("final-layer terms (unweighted)")
    axes[1].legend()
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return png
