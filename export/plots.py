"""Evaluation figures: identity confusion matrix and a t-SNE map of the embeddings (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows = true identity)."""
    plt = _pyplot()
    path = Path(path)
    m = np.asarray(matrix, np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    size = max(5.0, 0.32 * len(classes) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted identity")
    ax.set_ylabel("true identity")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true identity's samples")
    _save(fig, path)
    plt.close(fig)
    return path


def plot_tsne(
    embeddings: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str,
    seed: int = 42,
    max_points: int = 1500,
) -> Path:
    """2-D t-SNE of (at most `max_points`, evenly subsampled) embeddings, coloured by identity."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    path = Path(path)
    x = np.asarray(embeddings, np.float32)
    y = np.asarray(labels)
    if len(x) > max_points:
        keep = np.linspace(0, len(x) - 1, max_points).round().astype(np.int64)
        x, y = x[keep], y[keep]
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    xy = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine"
    ).fit_transform(x)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20", max(len(classes), 1))
    for c in np.unique(y):
        sel = y == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(int(c) % cmap.N), label=classes[int(c)])
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 40:
        ax.legend(
            fontsize=6,
            markerscale=2,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            ncol=1 + len(classes) // 20,
        )
    _save(fig, path)
    plt.close(fig)
    return path


__all__ = ["plot_confusion", "plot_tsne"]
