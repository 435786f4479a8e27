"""Matplotlib figures of a constructed ReduNet (written atomically as PNG)."""

from __future__ import annotations

import io
import os

import numpy as np

from redunet_jax.io import atomic_write_bytes


def _figure_module():
    import sys

    import matplotlib

    # Headless by default, but a process that already uses pyplot (a notebook
    # with inline figures) keeps its backend: the figures here are closed
    # after saving, so they never show up there.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_rates(per_layer: dict, path: str | os.PathLike, *, title: str = "") -> None:
    """Plot delta R, R and Rc per layer for each split.

    Args:
      per_layer: ``{split: {"true": {"delta_r": [...], "r": [...], "rc": [...]},
        "estimated": {...}}}`` as stored in ``metrics.json``; index 0 is the
        normalized input, index l the output of layer l.
      path: PNG file to write.
      title: figure title.
    """
    plt = _figure_module()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    colors = {"train": "C0", "test": "C1"}
    for ax, key, label in zip(
        axes, ("delta_r", "r", "rc"), (r"$\Delta R$", r"$R$", r"$R_c$"), strict=True
    ):
        for split, rates in per_layer.items():
            color = colors.get(split)
            values = np.asarray(rates["true"][key])
            ax.plot(np.arange(len(values)), values, "-", color=color, label=split)
            estimated = np.asarray(rates["estimated"][key])
            ax.plot(
                np.arange(len(estimated)),
                estimated,
                "--",
                color=color,
                alpha=0.6,
                label=f"{split}, estimated labels",
            )
        ax.set_xlabel("layer (0: input)")
        ax.set_title(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def cosine_matrix(Z, labels) -> np.ndarray:
    """Absolute cosine similarities of samples sorted by class, (m, m)."""
    Z = np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)
    order = np.argsort(np.asarray(labels), kind="stable")
    Z = Z[order]
    norms = np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    Z = Z / norms
    return np.abs(Z @ Z.T)


def plot_cosine(
    features: dict, labels, path: str | os.PathLike, *, max_samples: int = 1000
) -> None:
    """Heat maps of |cosine similarity| between samples sorted by class.

    Args:
      features: ``{panel title: (m, ...) features}``, e.g. inputs and outputs.
      labels: (m,) labels shared by all panels.
      path: PNG file to write.
      max_samples: evenly spaced subsample above this many samples.
    """
    plt = _figure_module()
    labels = np.asarray(labels)
    keep = np.linspace(0, len(labels) - 1, min(len(labels), max_samples)).astype(int)
    fig, axes = plt.subplots(1, len(features), figsize=(4.6 * len(features), 4.2))
    axes = np.atleast_1d(axes)
    image = None
    for ax, (name, Z) in zip(axes, features.items(), strict=True):
        image = ax.imshow(
            cosine_matrix(np.asarray(Z)[keep], labels[keep]),
            cmap="Blues",
            vmin=0,
            vmax=1,
        )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    _save(fig, path)
    plt.close(fig)


def plot_loss(history: dict, path: str | os.PathLike) -> None:
    """Plot the fine-tuning loss and the mini-batch delta R per step.

    Args:
      history: ``{"loss": [...], "delta_r": [...]}`` as returned by ``finetune``.
      path: PNG file to write.
    """
    plt = _figure_module()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, key, title in zip(
        axes, ("loss", "delta_r"), ("loss", r"mini-batch $\Delta R$"), strict=True
    ):
        values = np.asarray(history.get(key, []))
        ax.plot(np.arange(1, len(values) + 1), values)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
