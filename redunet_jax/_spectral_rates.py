"""Coding rates of multi-channel signals under circular shifts, in the Fourier domain.

Counting every circular shift of every sample makes the covariance of the
features block-circulant; the orthonormal DFT splits it into one C×C Hermitian
block per frequency, so the (CT)×(CT) log-determinant becomes a sum of T small
ones. For real signals only the F stored ``rfft`` bins are factored and the
sum weights each bin by its multiplicity (see ``bin_weights``).

References:
  Chan et al., "ReduNet: A White-box Deep Network from the Principle of
  Maximizing Rate Reduction", JMLR 23 (2022), section 4.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from redunet_jax._checks import check_finite_result, check_memberships, check_positive
from redunet_jax._fourier import _bin_weights, _rfft, check_signals
from redunet_jax._guards import cast_features, resolve_compute_dtype
from redunet_jax._linalg import logdet_shifted
from redunet_jax._rates import Rates, class_counts, rates_from_logdets


def fourier_covariances(Z_hat: jax.Array, Pi: jax.Array) -> jax.Array:
    """Per-frequency covariances of all samples and of every class, stacked.

    Entry 0 is ``Sigma_p = sum_i z_hat_i[:, p] z_hat_i[:, p]^H``, entries
    1..k are ``Sigma_j,p`` with sample i weighted by ``Pi[i, j]``: the full
    set of samples is the class whose membership is all ones, which lets
    callers factor all k + 1 stacks in one batched call. The membership
    columns are visited one at a time, so besides the coefficients only one
    weighted copy of them is held (one einsum over all columns would form a
    (m, k + 1, C, F) intermediate). Cost O(k m C² F) for soft memberships;
    construction with labels uses the class-partitioned fast path instead.

    Args:
      Z_hat: (m, C, F) complex coefficients.
      Pi: (m, k) memberships.

    Returns:
      (k + 1, F, C, C) Hermitian positive semi-definite matrices.
    """
    m = Z_hat.shape[0]
    memberships = jnp.concatenate([jnp.ones((m, 1), Pi.dtype), Pi], axis=1)
    Z_p = jnp.moveaxis(Z_hat, -1, 0)  # (F, m, C)
    Z_conj = jnp.conj(Z_p)

    def covariance(weights):
        return jnp.einsum("pia,pib->pab", Z_p * weights[None, :, None], Z_conj)

    return jax.lax.map(covariance, memberships.T.astype(Z_p.real.dtype))


def spectral_scales(m, C: int, safe_m_j: jax.Array, eps_sq, dtype) -> jax.Array:
    """Scales ``[alpha, alpha_1, ..., alpha_k]`` as (k + 1, 1); alpha = C/(m eps_sq).

    ``dtype`` is the (real or complex) dtype of the covariances.
    """
    alpha = jnp.asarray(C / (m * eps_sq), jnp.finfo(dtype).dtype)
    return jnp.concatenate([alpha[None], C / (safe_m_j * eps_sq)])[:, None]


def frequency_average(logdets: jax.Array, weights: jax.Array, num_positions):
    """Average (..., F) log-determinants over all T frequencies (bin weights)."""
    return logdets @ weights.astype(logdets.dtype) / num_positions


def _spectral_rates(
    Z_hat: jax.Array,
    Pi: jax.Array,
    eps_sq,
    weights: jax.Array,
    num_positions,
    *,
    per_class: bool = False,
):
    """Traced rates from stored bins; ``num_positions`` is T (or H * W).

    With ``per_class=True`` returns ``(r, terms)``: R and the (k,) class terms
    whose sum is Rc.
    """
    m = Z_hat.shape[0]
    Pi = Pi.astype(jnp.finfo(Z_hat.dtype).dtype)
    m_j, safe_m_j = class_counts(Pi)
    stacked = fourier_covariances(Z_hat, Pi)
    m, C, _ = Z_hat.shape
    scales = spectral_scales(m, C, safe_m_j, eps_sq, Z_hat.dtype)
    logdets = logdet_shifted(stacked, scales)
    averages = frequency_average(logdets, weights, num_positions)
    rates = rates_from_logdets(averages, m_j, m)
    if per_class:
        return rates.r, jnp.where(m_j > 0, m_j / (2.0 * m) * averages[1:], 0.0)
    return rates


@jax.jit
def _signal_rates(Z: jax.Array, Pi: jax.Array, eps_sq) -> Rates:
    """Rates of real signals (m, C, ...): one compiled rfft and factorization."""
    signal_shape = tuple(Z.shape[2:])
    weights = jnp.asarray(_bin_weights(signal_shape))
    rates = _spectral_rates(_rfft(Z), Pi, eps_sq, weights, math.prod(signal_shape))
    assert isinstance(rates, Rates)  # per_class=False
    return rates


def shift_invariant_rate_reduction(
    Z, Pi, *, eps_sq: float, compute_dtype=None
) -> Rates:
    r"""Rate reduction of multi-channel signals with every circular shift counted.

    .. math::

       R   &= \frac{1}{2T} \sum_{p=0}^{T-1} \log\det(I_C + \alpha \Sigma_p),
              \quad \alpha = C / (m \epsilon^2) \\
       R_c &= \sum_j \frac{m_j}{m} \frac{1}{2T} \sum_{p=0}^{T-1}
              \log\det(I_C + \alpha_j \Sigma_{j,p}),
              \quad \alpha_j = C / (m_j \epsilon^2)

    with ``Sigma_p = sum_i z_hat_i[:, p] z_hat_i[:, p]^H`` over the orthonormal
    DFT of each sample and ``Sigma_j,p`` the same sum weighted by ``Pi[:, j]``.
    This equals ``1/(2T) logdet(I_CT + alpha/T sum_i circ(z_i) circ(z_i)^T)``
    for the (CT)×T matrices ``circ(z_i)`` of all shifts of ``z_i``. Only the F
    stored ``rfft`` bins are factored (one batched Cholesky call for all k + 1
    stacks), weighted by their multiplicity. For 2D signals T stands for H * W.
    Cost O(k m C² F + k C³ F). An empty class contributes zero.

    Args:
      Z: (m, C, T) or (m, C, H, W) real features ``Z``; signal axes >= 2.
      Pi: (m, k) memberships ``Pi``: one-hot labels or soft, rows summing to 1.
      eps_sq: distortion ``ε²`` (squared), > 0.
      compute_dtype: real dtype of the transforms, covariances, factorizations
        and log-determinants: ``jnp.float32`` (complex64 coefficients) or
        ``jnp.float64`` (complex128; needs ``jax_enable_x64``). Default:
        float64 for float64 ``Z`` under x64, float32 otherwise; bfloat16 and
        float16 features are never factored in their own precision.

    Returns:
      ``Rates(delta_r, r, rc)`` as scalar arrays of ``compute_dtype``; float32
      loses accuracy when ``eps_sq`` is below about 1e-3.

    Raises:
      ValueError: if shapes disagree, a signal axis is shorter than 2, values
        are not finite, ``eps_sq <= 0``, ``compute_dtype`` is not float32 or
        float64 (or float64 without x64), or the rates overflow (features far
        too large for ``compute_dtype``: normalize them first).
      TypeError: if ``Z`` or ``Pi`` is not a real numeric array.

    References:
      ReduNet (JMLR 2022), section 4 (rates of shift-invariant features).

    Example:
      >>> import jax.numpy as jnp
      >>> t = jnp.arange(8.0)
      >>> Z = jnp.stack([jnp.cos(t)[None], jnp.cos(2 * t + 1.0)[None]]).repeat(
      ...     5, axis=0
      ... )                                   # (10, 1, 8), two repeated signals
      >>> Pi = jnp.eye(2).repeat(5, axis=0)
      >>> rates = shift_invariant_rate_reduction(Z, Pi, eps_sq=0.1)
      >>> bool(rates.delta_r > 0), rates.r.shape
      (True, ())
    """
    Z = check_signals(Z, "Z")
    Z = cast_features(Z, resolve_compute_dtype(compute_dtype, Z.dtype), "Z")
    Pi = check_memberships(Pi, "Pi", m=Z.shape[0]).astype(Z.dtype)
    eps_sq = check_positive(eps_sq, "eps_sq")
    return check_finite_result(_signal_rates(Z, Pi, eps_sq))
