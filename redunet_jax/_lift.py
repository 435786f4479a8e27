"""Lifting of raw signals to many channels, and polar resampling of images.

Shift-invariant layers separate classes well only once the input has been
lifted to many channels. The lifting is a bank of seeded random Gaussian
filters applied by multi-channel circular convolution, followed by a ReLU;
being circular, it commutes with every circular shift of the input, so the
lifted features of a shifted sample are the shifted features of the sample.

Rotations of images are handled by resampling the image on a polar grid: a
rotation by 2π/angles about the image centre becomes a circular shift along the
angle axis, and the radii become channels for 1D lifting.

References:
  Chan et al., "ReduNet: A White-box Deep Network from the Principle of
  Maximizing Rate Reduction", JMLR 23 (2022), section 4 (lifting of the input
  before the shift-invariant layers).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from redunet_jax._checks import (
    check_float_array,
    check_int,
    check_positive,
    is_concrete,
)

# jax.random.key keeps only the low 32 bits of a Python int seed, so larger seeds
# would silently collide with smaller ones.
_SEED_LIMIT = 2**32


def _check_kernel_size(kernel_size) -> tuple[int, ...]:
    """Return ``kernel_size`` as ``(k,)`` or ``(kh, kw)``, every entry >= 1."""
    if isinstance(kernel_size, numbers.Integral) and not isinstance(kernel_size, bool):
        kernel_size = (kernel_size,)
    if not isinstance(kernel_size, (tuple, list)) or len(kernel_size) not in (1, 2):
        raise TypeError(
            f"kernel_size must be an int (1D) or a tuple (kh, kw) (2D), "
            f"got {kernel_size!r}"
        )
    return tuple(check_int(k, "kernel_size", minimum=1) for k in kernel_size)


def lifting_filters(
    seed: int,
    *,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
) -> jax.Array:
    r"""Draw the seeded random Gaussian filters of a lifting layer.

    Entries are i.i.d. normal with variance ``1 / (in_channels * prod(kernel))``,
    so that for inputs with unit-variance entries every lifted channel has
    O(1) variance before the ReLU:

    .. math::

       w_{o,c,j} \sim \mathcal N\bigl(0, 1 / (C_{in} \, |\mathrm{kernel}|)\bigr).

    Args:
      seed: integer in [0, 2**32) for ``jax.random.key``; the same seed gives
        the same filters. A traced integer is also accepted (unchecked).
      in_channels: number C_in of input channels, >= 1.
      out_channels: number C_out of lifted channels, >= 1.
      kernel_size: ``k`` or ``(k,)`` for 1D filters, ``(kh, kw)`` for 2D
        filters; every entry >= 1.

    Returns:
      Filters of shape (C_out, C_in, k) or (C_out, C_in, kh, kw), in the
      default float dtype.

    Raises:
      TypeError: if ``seed``, the channel counts or ``kernel_size`` are not
        integers of the expected form.
      ValueError: if a channel count or kernel entry is < 1, or ``seed`` lies
        outside [0, 2**32).

    References:
      Chan et al., JMLR 23 (2022), section 4: random filters lift the input to
      many channels.

    Example:
      >>> filters = lifting_filters(0, in_channels=3, out_channels=8, kernel_size=5)
      >>> filters.shape
      (8, 3, 5)
      >>> lifting_filters(0, in_channels=1, out_channels=4, kernel_size=(3, 3)).shape
      (4, 1, 3, 3)
    """
    if is_concrete(seed):
        seed = check_int(seed, "seed", minimum=0)
        if seed >= _SEED_LIMIT:
            raise ValueError(f"seed must be < 2**32, got {seed}")
    in_channels = check_int(in_channels, "in_channels", minimum=1)
    out_channels = check_int(out_channels, "out_channels", minimum=1)
    kernel = _check_kernel_size(kernel_size)

    shape = (out_channels, in_channels, *kernel)
    scale = 1.0 / math.sqrt(in_channels * math.prod(kernel))
    return scale * jax.random.normal(jax.random.key(seed), shape)


def _check_lift_input(X, filters) -> tuple[jax.Array, jax.Array]:
    """Return ``X`` and ``filters`` checked against each other, in one float dtype."""
    filters = check_float_array(filters, "filters", ndims=(3, 4))
    d = filters.ndim - 2
    layout = "(m, C_in, T)" if d == 1 else "(m, C_in, H, W)"
    if isinstance(X, (jax.Array, np.ndarray)) and X.ndim != d + 2:
        hint = (
            "; for single-channel input add a channel axis with X[:, None]"
            if X.ndim == d + 1
            else ""
        )
        raise ValueError(
            f"X must have shape {layout} to match {d}D filters of shape "
            f"{tuple(filters.shape)}, got shape {tuple(X.shape)}{hint}"
        )
    X = check_float_array(X, "X", ndims=(d + 2,))

    if X.shape[1] != filters.shape[1]:
        raise ValueError(
            f"X has {X.shape[1]} channels (shape {tuple(X.shape)}) but filters "
            f"expect in_channels={filters.shape[1]} (shape {tuple(filters.shape)})"
        )
    if any(k > n for k, n in zip(filters.shape[2:], X.shape[2:], strict=True)):
        raise ValueError(
            f"filters of shape {tuple(filters.shape)} have a kernel larger than "
            f"the signal of X (shape {tuple(X.shape)}) along some axis"
        )

    dtype = jnp.promote_types(jnp.promote_types(X.dtype, filters.dtype), jnp.float32)
    return X.astype(dtype), filters.astype(dtype)


def _lift(X: jax.Array, filters: jax.Array) -> jax.Array:
    """Traced lifting of checked inputs (see :func:`lift`)."""
    # Both transforms are unnormalized and the inverse divides by the signal
    # size, which is exactly the circular convolution theorem. HIGHEST precision
    # keeps accelerators from summing the channel products in reduced precision.
    precision = jax.lax.Precision.HIGHEST
    if X.ndim == 3:
        (T,) = X.shape[2:]
        X_hat = jnp.fft.rfft(X, axis=-1)
        W_hat = jnp.fft.rfft(filters, n=T, axis=-1)
        Y_hat = jnp.einsum("ncp,ocp->nop", X_hat, W_hat, precision=precision)
        Y = jnp.fft.irfft(Y_hat, n=T, axis=-1)
    else:
        H, W = X.shape[2:]
        X_hat = jnp.fft.rfft2(X, axes=(-2, -1))
        W_hat = jnp.fft.rfft2(filters, s=(H, W), axes=(-2, -1))
        Y_hat = jnp.einsum("ncpq,ocpq->nopq", X_hat, W_hat, precision=precision)
        Y = jnp.fft.irfft2(Y_hat, s=(H, W), axes=(-2, -1))
    return jax.nn.relu(Y)


_lift_jit = jax.jit(_lift)


def lift(X, filters) -> jax.Array:
    r"""Lift signals to many channels: circular convolution with filters, then ReLU.

    The convolution (not correlation) is circular over the signal axes and
    summed over input channels. In 1D,

    .. math::

       Y_{n,o,t} = \mathrm{ReLU}\Bigl(\sum_{c=1}^{C_{in}} \sum_{j=0}^{k-1}
                   w_{o,c,j} \, X_{n,c,(t - j) \bmod T}\Bigr),

    and in 2D the same with the index pair ``(t - i) mod H, (u - j) mod W``.
    It is computed with real FFTs of the signal and of the zero-padded kernel
    in O(m C_in C_out T log T), or O(m C_in C_out H W log(H W)) in 2D. Because
    the convolution is circular, ``lift`` commutes with circular shifts of the
    signal axes (up to floating-point rounding).

    Args:
      X: real signals (m, C_in, T) for 1D filters, or images (m, C_in, H, W)
        for 2D filters. The channel axis is required even when C_in = 1.
      filters: (C_out, C_in, k) or (C_out, C_in, kh, kw), for instance from
        :func:`lifting_filters`; every kernel axis no longer than the
        matching signal axis.

    Returns:
      Non-negative lifted features (m, C_out, T) or (m, C_out, H, W), in the
      floating dtype of ``X`` and ``filters`` promoted to at least float32.

    Raises:
      TypeError: if ``X`` or ``filters`` are not real numeric arrays.
      ValueError: if the ranks of ``X`` and ``filters`` do not match (a missing
        channel axis is named), the channel counts differ, a kernel axis is
        longer than the signal axis, or an input holds NaN or inf.

    References:
      Chan et al., JMLR 23 (2022), section 4: lifting by random circular
      convolutions keeps the network invariant to circular shifts.

    Example:
      >>> import jax.numpy as jnp
      >>> X = jnp.arange(16.0).reshape(2, 1, 8)
      >>> filters = lifting_filters(0, in_channels=1, out_channels=4, kernel_size=3)
      >>> Y = lift(X, filters)
      >>> Y.shape
      (2, 4, 8)
      >>> shifted = lift(jnp.roll(X, 3, axis=-1), filters)
      >>> bool(jnp.allclose(shifted, jnp.roll(Y, 3, axis=-1), atol=1e-5))
      True
    """
    X, filters = _check_lift_input(X, filters)
    return _lift_jit(X, filters)


def _polar_grid(
    H: int, W: int, radii: int, angles: int, max_radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy (4, radii * angles) flat pixel indices and bilinear weights.

    The grid depends only on static sizes, so it is built once in float64 on
    the host; a neighbour outside the image gets weight 0 (zero padding).
    """
    r = (np.arange(radii) + 0.5) * (max_radius / radii)
    theta = 2.0 * np.pi * np.arange(angles) / angles
    rows = (H - 1) / 2 - r[:, None] * np.sin(theta)[None, :]
    cols = (W - 1) / 2 + r[:, None] * np.cos(theta)[None, :]
    rows, cols = rows.ravel(), cols.ravel()

    row0, col0 = np.floor(rows), np.floor(cols)
    frac_r, frac_c = rows - row0, cols - col0
    neighbours = [
        (row0, col0, (1 - frac_r) * (1 - frac_c)),
        (row0, col0 + 1, (1 - frac_r) * frac_c),
        (row0 + 1, col0, frac_r * (1 - frac_c)),
        (row0 + 1, col0 + 1, frac_r * frac_c),
    ]

    index, weight = [], []
    for row, col, w in neighbours:
        inside = (row >= 0) & (row <= H - 1) & (col >= 0) & (col <= W - 1)
        row = np.clip(row, 0, H - 1).astype(np.int64)
        col = np.clip(col, 0, W - 1).astype(np.int64)
        index.append(row * W + col)
        weight.append(np.where(inside, w, 0.0))
    return np.stack(index).astype(np.int32), np.stack(weight)


@jax.jit
def _gather_bilinear(images: jax.Array, index: jax.Array, weight: jax.Array):
    """(m, C, H, W) images read at (4, P) flat indices and weights, to (m, C, P)."""
    m, C, H, W = images.shape
    flat = images.reshape(m, C, H * W)
    return jnp.sum(flat[..., index] * weight.astype(images.dtype), axis=-2)


def polar_resample(
    images, *, radii: int, angles: int, max_radius: float | None = None
) -> jax.Array:
    r"""Resample images on a polar grid, so that rotations become circular shifts.

    Sample ``(i, a)`` is read by bilinear interpolation at

    .. math::

       r_i = (i + \tfrac12) \, \frac{R}{\mathrm{radii}}, \qquad
       \theta_a = \frac{2 \pi a}{\mathrm{angles}}, \qquad
       (\mathrm{row}, \mathrm{col}) = \Bigl(\frac{H-1}{2} - r_i \sin\theta_a,\;
                                            \frac{W-1}{2} + r_i \cos\theta_a\Bigr),

    with ``R = max_radius``: angle 0 points along increasing columns and angles
    grow counterclockwise as the image is displayed (row 0 at the top). Pixels
    outside the image read as 0. A counterclockwise rotation of the image by
    2π/angles about its centre is a circular shift by +1 along the angle axis;
    for square images and ``angles`` divisible by 4, ``np.rot90(image)`` gives
    exactly ``jnp.roll(polar, angles // 4, axis=-1)`` (to rounding). Cost
    O(m C radii angles); the sampling grid is built on the host from the static
    sizes.

    Args:
      images: (m, H, W) single-channel or (m, C, H, W) multi-channel images,
        H and W >= 2.
      radii: number of radii, >= 1; they become channels.
      angles: number of angles, >= 2; they become the signal axis T.
      max_radius: outer radius R in pixels, a Python number > 0 (static under
        ``jit``). Defaults to
        ``(min(H, W) - 1) / 2``, the largest circle about the centre that
        stays within the pixel centres, so that no sample reads outside the
        image.

    Returns:
      Polar images (m, radii, angles) for (m, H, W) input, or
      (m, C * radii, angles) for (m, C, H, W) input, channel-major: output
      channel ``c * radii + i`` holds radius ``i`` of input channel ``c``. The
      dtype is that of ``images`` promoted to at least float32.

    Raises:
      TypeError: if ``images`` is not a real numeric array, or ``radii`` /
        ``angles`` are not integers.
      ValueError: if ``images`` has the wrong rank, an axis shorter than 2, or
        NaN/inf values; if ``radii`` < 1, ``angles`` < 2, or ``max_radius`` is
        not a finite positive number.

    References:
      Chan et al., JMLR 23 (2022), section 4: invariance to other groups by a
      change of coordinates in which they act as circular shifts.

    Example:
      >>> import numpy as np
      >>> image = np.arange(36.0).reshape(1, 6, 6)
      >>> polar = polar_resample(image, radii=3, angles=8)
      >>> polar.shape
      (1, 3, 8)
      >>> rotated = polar_resample(np.rot90(image, axes=(1, 2)), radii=3, angles=8)
      >>> bool(np.allclose(rotated, np.roll(polar, 2, axis=-1), atol=1e-5))
      True
    """
    images = check_float_array(images, "images", ndims=(3, 4))
    H, W = images.shape[-2:]
    if min(H, W) < 2:
        raise ValueError(
            f"images must have height and width >= 2, got shape {tuple(images.shape)}"
        )
    radii = check_int(radii, "radii", minimum=1)
    angles = check_int(angles, "angles", minimum=2)
    if max_radius is None:
        max_radius = (min(H, W) - 1) / 2
    else:
        max_radius = float(check_positive(max_radius, "max_radius"))

    if images.ndim == 3:
        images = images[:, None]
    images = images.astype(jnp.promote_types(images.dtype, jnp.float32))
    index, weight = _polar_grid(H, W, radii, angles, max_radius)

    m, C = images.shape[:2]
    polar = _gather_bilinear(images, index, weight)
    return polar.reshape(m, C * radii, angles)
