"""Real Fourier transforms of multi-channel signals, bin weights and norms.

Shift-invariant layers work on the coefficients of the orthonormal DFT of real
signals. Only the ``rfft`` half of the spectrum is stored: bin ``p`` and bin
``T - p`` are complex conjugates, so a sum over all T frequencies is a weighted
sum over the F = T // 2 + 1 stored bins. In two dimensions the (H, W // 2 + 1)
grid of ``rfft2`` is flattened to one axis of F = H * (W // 2 + 1) bins, so that
layers never need to know whether a signal is 1D or 2D.

References:
  Chan et al., "ReduNet: A White-box Deep Network from the Principle of
  Maximizing Rate Reduction", JMLR 23 (2022), section 4.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from redunet_jax._checks import check_float_array, is_concrete


def _check_signal_shape(signal_shape, name: str) -> tuple[int, ...]:
    """Return ``signal_shape`` as a tuple of one or two ints, each >= 2."""
    if isinstance(signal_shape, (int, np.integer)):
        signal_shape = (signal_shape,)
    if not isinstance(signal_shape, (tuple, list)):
        raise TypeError(f"{name} must be (T,) or (H, W), got {signal_shape!r}")
    if len(signal_shape) not in (1, 2) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool)
        for n in signal_shape
    ):
        raise ValueError(
            f"{name} must be (T,) or (H, W) integers, got {tuple(signal_shape)!r}"
        )
    shape = tuple(int(n) for n in signal_shape)
    if min(shape) < 2:
        raise ValueError(
            f"{name} must have every signal axis of length >= 2, got {shape}"
        )
    return shape


def num_bins(signal_shape) -> int:
    """Return the number F of stored ``rfft`` bins for a signal shape.

    Args:
      signal_shape: ``(T,)`` or ``(H, W)``, every axis >= 2.

    Returns:
      ``T // 2 + 1`` or ``H * (W // 2 + 1)``.
    """
    shape = _check_signal_shape(signal_shape, "signal_shape")
    return math.prod(shape[:-1]) * (shape[-1] // 2 + 1)


def check_signals(Z, name: str) -> jax.Array:
    """Return real signals (m, C, T) or (m, C, H, W) with every signal axis >= 2.

    Features narrower than float32 are promoted to float32 so that Fourier
    coefficients and log-determinants are never computed in half precision.
    """
    Z = check_float_array(Z, name, ndims=(3, 4))
    signal_shape = Z.shape[2:]
    if min(signal_shape) < 2:
        raise ValueError(
            f"{name} must have signal axes of length >= 2 (shape (m, C, T) or "
            f"(m, C, H, W)), got shape {tuple(Z.shape)}"
        )
    return Z.astype(jnp.promote_types(Z.dtype, jnp.float32))


def check_fourier(Z_hat, name: str, *, bins: int | None = None) -> jax.Array:
    """Return complex Fourier coefficients of shape (m, C, F) after checking them.

    Real input is rejected: it almost always means that signals were passed
    where their coefficients (from :func:`to_fourier`) were expected.
    """
    if isinstance(Z_hat, (str, bytes)) or Z_hat is None:
        raise TypeError(f"{name} must be an array, got {type(Z_hat).__name__}")
    xp = jnp if isinstance(Z_hat, jax.Array) else np
    try:
        arr = xp.asarray(Z_hat)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array, got {type(Z_hat).__name__}") from err
    if not np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(
            f"{name} must hold complex Fourier coefficients (see to_fourier), "
            f"got dtype {arr.dtype}"
        )
    if arr.ndim != 3 or any(s == 0 for s in arr.shape):
        raise ValueError(
            f"{name} must have non-empty shape (m, C, F), got {tuple(arr.shape)}"
        )
    if bins is not None and arr.shape[2] != bins:
        raise ValueError(
            f"{name} must have {bins} frequency bins on its last axis, "
            f"got shape {tuple(arr.shape)}"
        )
    # Concrete values are checked on the host, so that the check compiles
    # nothing and also works on constants closed over by a jitted caller.
    if is_concrete(arr):
        finite = np.isfinite(np.asarray(arr))
        if not finite.all():
            bad = int(finite.size - finite.sum())
            raise ValueError(f"{name} contains {bad} NaN or infinite values")
    return jnp.asarray(arr, dtype=jnp.promote_types(arr.dtype, jnp.complex64))


def _rfft(Z: jax.Array) -> jax.Array:
    """Orthonormal rfft over the signal axes of (m, C, ...), flattened to (m, C, F)."""
    m, C = Z.shape[:2]
    if Z.ndim == 3:
        return jnp.fft.rfft(Z, axis=-1, norm="ortho")
    return jnp.fft.rfft2(Z, axes=(-2, -1), norm="ortho").reshape(m, C, -1)


def _irfft(Z_hat: jax.Array, signal_shape: tuple[int, ...]) -> jax.Array:
    """Inverse of :func:`_rfft` for a known signal shape ``(T,)`` or ``(H, W)``."""
    m, C = Z_hat.shape[:2]
    if len(signal_shape) == 1:
        return jnp.fft.irfft(Z_hat, n=signal_shape[0], axis=-1, norm="ortho")
    H, W = signal_shape
    grid = Z_hat.reshape(m, C, H, W // 2 + 1)
    return jnp.fft.irfft2(grid, s=(H, W), axes=(-2, -1), norm="ortho")


def _bin_weights(signal_shape: tuple[int, ...]) -> np.ndarray:
    """NumPy (F,) weights: 2 for bins whose conjugate partner is not stored."""
    W = signal_shape[-1]
    column = np.full(W // 2 + 1, 2.0)
    column[0] = 1.0
    if W % 2 == 0:
        column[-1] = 1.0
    return np.tile(column, math.prod(signal_shape[:-1]))


def to_fourier(Z) -> jax.Array:
    """Orthonormal real Fourier transform of multi-channel signals.

    ``rfft`` over the last axis of (m, C, T) signals, or ``rfft2`` over the last
    two axes of (m, C, H, W) signals, with ``norm="ortho"`` so that the
    transform preserves norms once bins are weighted (see :func:`bin_weights`).
    The 2D frequency grid is flattened row-major to one axis. Cost
    O(m C T log T).

    Args:
      Z: (m, C, T) or (m, C, H, W) real signals; every signal axis >= 2.

    Returns:
      Z_hat: (m, C, F) complex coefficients with F = T // 2 + 1 or
      H * (W // 2 + 1); complex64 for float32 (or narrower) input, complex128
      for float64.

    Raises:
      ValueError: if ``Z`` is not 3D or 4D, a signal axis is shorter than 2 or
        values are not finite.
      TypeError: if ``Z`` is not a real numeric array.

    References:
      ReduNet (JMLR 2022), section 4.

    Example:
      >>> import jax.numpy as jnp
      >>> Z = jnp.ones((2, 3, 8))
      >>> to_fourier(Z).shape, to_fourier(jnp.ones((2, 3, 4, 5))).shape
      ((2, 3, 5), (2, 3, 12))
    """
    return _rfft(check_signals(Z, "Z"))


def from_fourier(Z_hat, signal_shape) -> jax.Array:
    """Inverse of :func:`to_fourier`: real signals from their stored bins.

    The imaginary parts of bins that must be real for a real signal (p = 0 and,
    for even lengths, the Nyquist bin) are ignored.

    Args:
      Z_hat: (m, C, F) complex coefficients.
      signal_shape: ``(T,)`` or ``(H, W)`` of the signals, every axis >= 2
        (needed because F does not determine whether T is odd or even).

    Returns:
      (m, C, T) or (m, C, H, W) real signals.

    Raises:
      ValueError: if ``signal_shape`` is malformed or does not match F.
      TypeError: if ``Z_hat`` is not a complex array.

    Example:
      >>> import jax.numpy as jnp
      >>> Z = jnp.arange(12.0).reshape(1, 2, 6)
      >>> bool(jnp.allclose(from_fourier(to_fourier(Z), (6,)), Z, atol=1e-5))
      True
    """
    shape = _check_signal_shape(signal_shape, "signal_shape")
    Z_hat = check_fourier(Z_hat, "Z_hat")
    if Z_hat.shape[2] != num_bins(shape):
        raise ValueError(
            f"signal_shape {shape} needs {num_bins(shape)} frequency bins, but "
            f"Z_hat has shape {tuple(Z_hat.shape)}"
        )
    return _irfft(Z_hat, shape)


def bin_weights(signal_shape) -> jax.Array:
    """Multiplicity of every stored ``rfft`` bin in a sum over all frequencies.

    A bin counts twice when its conjugate partner is not stored: 1 for p = 0
    and, for an even length, the Nyquist bin p = T / 2; 2 for every other bin.
    In 2D the doubled bins are the interior columns of the last axis, for every
    row. The weights sum to T (or H * W).

    Args:
      signal_shape: ``(T,)`` or ``(H, W)``, every axis >= 2.

    Returns:
      (F,) weights in the default float dtype.

    Raises:
      ValueError: if ``signal_shape`` is malformed or an axis is shorter than 2.

    Example:
      >>> bin_weights((7,)).tolist(), bin_weights((8,)).tolist()
      ([1.0, 2.0, 2.0, 2.0], [1.0, 2.0, 2.0, 2.0, 1.0])
    """
    shape = _check_signal_shape(signal_shape, "signal_shape")
    return jnp.asarray(_bin_weights(shape), dtype=jnp.result_type(float))


def weighted_sq_norm(X_hat: jax.Array, weights: jax.Array) -> jax.Array:
    """Squared signal norms ``sum_p w_p ||X_hat[..., :, p]||²`` over the last two axes.

    Args:
      X_hat: (..., C, F) coefficients.
      weights: (F,) bin weights.

    Returns:
      (...) real squared norms.
    """
    power = jnp.real(X_hat) ** 2 + jnp.imag(X_hat) ** 2
    return jnp.einsum("...cp,p->...", power, weights.astype(power.dtype))


def fourier_norm(Z_hat, weights, *, floor: float = 0.0) -> jax.Array:
    """Per-sample Euclidean norm of the signals, computed from their rfft bins.

    By Parseval's identity for the orthonormal DFT, the norm over the whole
    (C, T) signal is ``sqrt(sum_p w_p sum_c |z_hat[c, p]|²)``. Cost O(m C F).

    Args:
      Z_hat: (m, C, F) coefficients.
      weights: (F,) bin weights from :func:`bin_weights`.
      floor: lower clamp of the norm; a positive floor keeps the gradient at
        an all-zero sample finite.

    Returns:
      (m,) norms ``max(||z||, floor)``.

    Raises:
      ValueError: if ``weights`` does not have shape (F,).
      TypeError: if ``Z_hat`` is not a complex array.

    Example:
      >>> import jax.numpy as jnp
      >>> Z = jnp.arange(14.0).reshape(1, 2, 7)
      >>> norm = fourier_norm(to_fourier(Z), bin_weights((7,)))
      >>> bool(jnp.allclose(norm, jnp.linalg.norm(Z)))
      True
    """
    Z_hat = check_fourier(Z_hat, "Z_hat")
    weights = check_weights(weights, "weights", bins=Z_hat.shape[-1])
    return jnp.sqrt(jnp.maximum(weighted_sq_norm(Z_hat, weights), floor * floor))


def check_weights(weights, name: str, *, bins: int) -> jax.Array:
    """Return real bin weights of shape (F,) after checking them."""
    weights = check_float_array(weights, name, ndims=(1,))
    if weights.shape[0] != bins:
        raise ValueError(
            f"{name} must have shape ({bins},) to match the frequency bins, "
            f"got {tuple(weights.shape)}"
        )
    return weights
