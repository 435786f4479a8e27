"""Experiment settings shared by the command line and the notebooks.

Per data set: default hyperparameters, whether the network is shift-invariant,
how inputs are lifted to many channels, and the circular shifts used to check
invariance.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from redunet_jax._lift import lift, lifting_filters


def _settings(layers: int, eps_sq: float, **extra) -> dict:
    return {"layers": layers, "eps_sq": eps_sq, "eta": 0.5, "lam": 500.0, **extra}


def _invariant(lift_channels: int, kernel_size: int, **extra) -> dict:
    return _settings(
        20,
        0.1,
        invariant=True,
        lift_channels=lift_channels,
        kernel_size=kernel_size,
        **extra,
    )


DEFAULTS: dict[str, dict] = {
    # Settings of the ReduNet digits experiment: the nearest-subspace test
    # accuracy beats the same classifier on the inputs.
    "digits": _settings(30, 0.5),
    # The mixtures approach the closed-form plateau within 1% after about 770
    # layers; 1000 layers take a few seconds.
    "gaussian2d": _settings(1000, 0.1),
    "gaussian3d": _settings(1000, 0.1),
    "idx": _settings(30, 0.5),
    "sinusoids": _invariant(8, 5),
    "digits-translation": _invariant(16, 3),
    "digits-rotation": _invariant(16, 5, radii=8, angles=32),
    "mnist1d": _invariant(16, 5),
}

SHIFTS = (-8, -4, 0, 4, 8)


def defaults_for(dataset: str) -> dict:
    """Default settings of a data set name (``idx:PATH`` shares ``idx``)."""
    base = {"invariant": False, "lift_channels": 0, "kernel_size": 3}
    base.update(DEFAULTS["idx" if dataset.startswith("idx:") else dataset])
    return base


def signal_ndim(X) -> int:
    """Number of signal axes of raw inputs: 0 for vectors, 1 or 2 for signals."""
    return max(np.ndim(X) - 2, 0)


def prepare(X, config: dict, *, seed: int) -> jnp.ndarray:
    """Raw inputs to network inputs: lifting for invariant networks, else flat.

    Invariant networks take (m, C, T) or (m, C, H, W) signals, lifted to
    ``lift_channels`` channels by seeded random circular filters and a ReLU
    when ``lift_channels > 0``; vector networks take every sample flattened.
    """
    X = jnp.asarray(X)
    if not config["invariant"]:
        return X.reshape(X.shape[0], -1)
    if signal_ndim(X) == 0:
        raise ValueError(
            "shift-invariant networks need signals (m, C, T) or (m, C, H, W); "
            f"this data set has vectors of shape {tuple(X.shape)}"
        )
    if config["lift_channels"] <= 0:
        return X
    size = config["kernel_size"]
    filters = lifting_filters(
        seed,
        in_channels=int(X.shape[1]),
        out_channels=int(config["lift_channels"]),
        kernel_size=size if signal_ndim(X) == 1 else (size, size),
    )
    return lift(X, filters)


def shift_grid(X) -> list[tuple[int, ...]]:
    """Circular shifts {-8, -4, 0, 4, 8} per signal axis of raw inputs."""
    return list(itertools.product(SHIFTS, repeat=max(signal_ndim(X), 1)))


def roll(X, shift: tuple[int, ...]):
    """Circularly shift raw signals along their signal axes."""
    axes = tuple(range(2, 2 + len(shift)))
    return np.roll(np.asarray(X), shift, axis=axes)
