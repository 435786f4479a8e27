"""One shift-invariant ReduNet layer: block-circulant operators in the Fourier domain.

When the rate reduction counts every circular shift of every sample, the
expansion and compression operators are block-circulant (CT)×(CT) matrices.
The orthonormal DFT turns each into one C×C block per frequency, so a layer is
stored as its blocks on the F stored ``rfft`` bins and applied bin by bin, with
norms taken over the whole signal. Features stay in the Fourier domain for a
whole block of layers (see ``to_fourier`` and ``from_fourier``).

References:
  Chan et al., "ReduNet: A White-box Deep Network from the Principle of
  Maximizing Rate Reduction", JMLR 23 (2022), section 4.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from redunet_jax._checks import check_int, check_memberships, check_positive, check_real
from redunet_jax._fourier import check_fourier, check_weights, weighted_sq_norm
from redunet_jax._linalg import scaled_inverse_and_logdet
from redunet_jax._rates import Rates, class_counts, rates_from_logdets
from redunet_jax._spectral_rates import (
    fourier_covariances,
    frequency_average,
    spectral_scales,
)
from redunet_jax._vector import NORM_FLOOR, soft_membership


class CirculantLayer(NamedTuple):
    """Fourier blocks of the operators of one shift-invariant layer.

    Attributes:
      E_hat: (F, C, C) expansion blocks ``alpha * inv(I_C + alpha Sigma_p)``.
      C_hat: (k, F, C, C) compression blocks, one stack per class (zero for an
        empty class).
      gamma: (k,) class proportions ``m_j / m``.

    Example:
      >>> import jax.numpy as jnp
      >>> from redunet_jax._fourier import to_fourier
      >>> Z = jnp.stack([jnp.roll(jnp.arange(6.0), s) for s in range(4)])[:, None]
      >>> layer = build_circulant_layer(
      ...     to_fourier(Z), jnp.eye(2).repeat(2, 0), eps_sq=0.5, num_positions=6
      ... )
      >>> layer.E_hat.shape, layer.C_hat.shape, layer.gamma.tolist()
      ((4, 1, 1), (2, 4, 1, 1), [0.5, 0.5])
    """

    E_hat: jax.Array
    C_hat: jax.Array
    gamma: jax.Array


def _layer_from_covariances(
    stacked: jax.Array,
    m_j: jax.Array,
    m,
    eps_sq,
    weights: jax.Array,
    num_positions,
    factor=scaled_inverse_and_logdet,
) -> tuple[CirculantLayer, Rates]:
    """Blocks and rates from the (k + 1, F, C, C) covariances, one factorization.

    With the orthonormal DFT the 1/T of the dense operators cancels against the
    T of the block-diagonalized covariance, so the blocks do not depend on
    ``num_positions``; the rates, an average over frequencies, do. ``factor``
    has the contract of ``scaled_inverse_and_logdet`` (sharded construction
    passes one that splits the batch across devices).
    """
    safe_m_j = jnp.where(m_j > 0, m_j, 1.0)
    scales = spectral_scales(m, stacked.shape[-1], safe_m_j, eps_sq, stacked.dtype)

    # E is the "class" whose membership is all ones: factoring the k + 1 stacks
    # in one batched Cholesky call also avoids a CPU scheduling hang seen with
    # two concurrent batched factorizations in one compiled step.
    operators, logdets = factor(stacked, scales)

    C_hat = jnp.where((m_j > 0)[:, None, None, None], operators[1:], 0.0)
    layer = CirculantLayer(E_hat=operators[0], C_hat=C_hat, gamma=m_j / m)
    averages = frequency_average(logdets, weights, num_positions)
    return layer, rates_from_logdets(averages, m_j, m)


def _build_circulant_with_rates(
    Z_hat: jax.Array, Pi: jax.Array, eps_sq, weights: jax.Array, num_positions
) -> tuple[CirculantLayer, Rates]:
    """Blocks built from ``Z_hat`` and the rates of ``Z_hat`` (any memberships)."""
    Pi = Pi.astype(jnp.finfo(Z_hat.dtype).dtype)
    m_j, _ = class_counts(Pi)
    stacked = fourier_covariances(Z_hat, Pi)
    return _layer_from_covariances(
        stacked, m_j, Z_hat.shape[0], eps_sq, weights, num_positions
    )


def _build_circulant(Z_hat: jax.Array, Pi: jax.Array, eps_sq, num_positions):
    """Traced construction of the blocks alone (the rates are left unused)."""
    weights = jnp.ones(Z_hat.shape[-1], jnp.finfo(Z_hat.dtype).dtype)
    return _build_circulant_with_rates(Z_hat, Pi, eps_sq, weights, num_positions)[0]


_build_circulant_jit = jax.jit(_build_circulant)


def build_circulant_layer(
    Z_hat, Pi, *, eps_sq: float = 0.1, num_positions: int
) -> CirculantLayer:
    r"""Construct the Fourier blocks of one shift-invariant layer in closed form.

    .. math::

       \hat E_p    = \alpha (I_C + \alpha \Sigma_p)^{-1}, \qquad
       \hat C_{j,p} = \alpha_j (I_C + \alpha_j \Sigma_{j,p})^{-1}

    with ``Sigma_p = sum_i z_hat_i[:, p] z_hat_i[:, p]^H``, ``Sigma_j,p`` the
    same sum weighted by ``Pi[:, j]``, ``alpha = C / (m eps_sq)`` and
    ``alpha_j = C / (m_j eps_sq)``. These are the blocks of the dense
    block-circulant operators ``alpha inv(I + alpha/T sum_i circ(z_i)
    circ(z_i)^T)`` under the orthonormal DFT. Blocks at the unstored bins are
    the conjugates of the stored ones. The k + 1 stacks are factored in one
    batched Cholesky call. Cost O(k m C² F) for the covariances and O(k C³ F)
    for the factorizations, against O(k (CT)³) for dense operators. An empty
    class gets ``C_hat[j] = 0`` and ``gamma_j = 0``.

    Args:
      Z_hat: (m, C, F) Fourier coefficients ``Z_hat`` of the training features
        (from ``to_fourier``).
      Pi: (m, k) memberships ``Pi`` (one-hot labels).
      eps_sq: distortion ``ε²``, > 0.
      num_positions: number of signal positions T (H * W in 2D), >= 2; checked
        against F, which must satisfy T / 2 < F <= T.

    Returns:
      A ``CirculantLayer(E_hat, C_hat, gamma)``.

    Raises:
      ValueError: if shapes disagree, values are not finite, ``eps_sq <= 0`` or
        ``num_positions`` does not fit the number of bins.
      TypeError: if ``Z_hat`` is not complex or ``num_positions`` not an int.

    References:
      ReduNet (JMLR 2022), section 4 (operators of shift-invariant layers).

    Example:
      >>> import jax.numpy as jnp
      >>> from redunet_jax._fourier import to_fourier
      >>> t = jnp.arange(8.0)
      >>> Z = jnp.stack([jnp.cos(t + s) for s in range(8)]).reshape(4, 2, 8)
      >>> Pi = jnp.eye(2).repeat(2, axis=0)
      >>> layer = build_circulant_layer(
      ...     to_fourier(Z), Pi, eps_sq=0.5, num_positions=8
      ... )
      >>> layer.E_hat.shape, layer.C_hat.shape, layer.gamma.tolist()
      ((5, 2, 2), (2, 5, 2, 2), [0.5, 0.5])
    """
    Z_hat = check_fourier(Z_hat, "Z_hat")
    Pi = check_memberships(Pi, "Pi", m=Z_hat.shape[0])
    eps_sq = check_positive(eps_sq, "eps_sq")
    num_positions = check_int(num_positions, "num_positions", minimum=2)
    F = Z_hat.shape[-1]
    if not num_positions < 2 * F <= 2 * num_positions:
        raise ValueError(
            f"num_positions={num_positions} does not fit Z_hat with {F} frequency "
            f"bins (rfft of T positions stores between T/2 and T bins)"
        )
    return _build_circulant_jit(Z_hat, Pi, eps_sq, num_positions)


def _move_circulant(
    layer: CirculantLayer, Z_hat: jax.Array, eta, lam, weights: jax.Array, Pi=None
):
    """Traced application; ``Pi`` replaces ``pihat`` in the update when given."""
    EZ = jnp.einsum("pab,mbp->map", layer.E_hat, Z_hat)
    CZ = jnp.einsum("jpab,mbp->mjap", layer.C_hat, Z_hat)

    sq_norms = weighted_sq_norm(CZ, weights)
    norms = jnp.sqrt(jnp.maximum(sq_norms, NORM_FLOOR * NORM_FLOOR))
    pihat = soft_membership(layer.gamma, norms, lam)

    coefficients = layer.gamma * (pihat if Pi is None else Pi)
    Z_new = Z_hat + eta * (EZ - jnp.einsum("mj,mjap->map", coefficients, CZ))

    scale = jnp.sqrt(jnp.maximum(weighted_sq_norm(Z_new, weights), NORM_FLOOR**2))
    return Z_new / scale[:, None, None], pihat


_move_circulant_jit = jax.jit(_move_circulant)


def apply_circulant_layer(
    layer: CirculantLayer,
    Z_hat,
    *,
    eta: float = 0.5,
    lam: float = 500.0,
    weights,
) -> tuple[jax.Array, jax.Array]:
    r"""Apply one shift-invariant layer to Fourier coefficients.

    With norms over the whole (C, T) signal, ``||C_j z||² = sum_p w_p
    ||C_hat[j, p] z_hat[:, p]||²``:

    .. math::

       \hat\pi_j(z) &= \mathrm{softmax}_j(-\lambda \max(\|C_j z\|, 10^{-8})) \\
       \hat z'[:, p] &= \hat z[:, p] + \eta \big(\hat E_p \hat z[:, p]
           - \textstyle\sum_j \gamma_j \hat\pi_j(z) \hat C_{j,p} \hat z[:, p]\big)

    then every sample is scaled to unit signal norm (norm clamped at 1e-8, so
    an all-zero sample stays zero). Empty classes (``gamma_j = 0``) get
    ``pihat_j = 0``. The map commutes with circular shifts of the signals.
    Cost O(k m C² F).

    Args:
      layer: blocks from :func:`build_circulant_layer`.
      Z_hat: (m, C, F) Fourier coefficients ``Z_hat``.
      eta: step size ``eta``.
      lam: inverse temperature ``lambda`` of the soft membership.
      weights: (F,) bin weights ``w_p`` from ``bin_weights(signal_shape)``.

    Returns:
      ``(Z_hat_next, pihat)`` of shapes (m, C, F) and (m, k).

    Raises:
      ValueError: if ``Z_hat`` or ``weights`` does not match the layer's (C, F),
        or holds non-finite values.
      TypeError: if ``Z_hat`` is not complex.

    References:
      ReduNet (JMLR 2022), section 4 (application of shift-invariant layers).

    Example:
      >>> import jax.numpy as jnp
      >>> from redunet_jax._fourier import bin_weights, fourier_norm, to_fourier
      >>> t = jnp.arange(8.0)
      >>> Z = jnp.stack([jnp.cos(t + s) for s in range(8)]).reshape(4, 2, 8)
      >>> Pi = jnp.eye(2).repeat(2, axis=0)
      >>> Z_hat, weights = to_fourier(Z), bin_weights((8,))
      >>> layer = build_circulant_layer(Z_hat, Pi, eps_sq=0.5, num_positions=8)
      >>> Z_hat_next, pihat = apply_circulant_layer(
      ...     layer, Z_hat, eta=0.5, lam=500.0, weights=weights
      ... )
      >>> fourier_norm(Z_hat_next, weights).round(5).tolist(), pihat.shape
      ([1.0, 1.0, 1.0, 1.0], (4, 2))
    """
    F, C = layer.E_hat.shape[:2]
    Z_hat = check_fourier(Z_hat, "Z_hat", bins=F)
    if Z_hat.shape[1] != C:
        raise ValueError(
            f"Z_hat must have {C} channels for this layer, got shape "
            f"{tuple(Z_hat.shape)}"
        )
    weights = check_weights(weights, "weights", bins=F)
    return _move_circulant_jit(
        layer, Z_hat, check_real(eta, "eta"), check_real(lam, "lam"), weights
    )
