"""Coding rates and the rate reduction of MCR² (vector case).

References:
  Yu et al., "Learning Diverse and Discriminative Representations via the
  Principle of Maximal Coding Rate Reduction", NeurIPS 2020, eqs. (8)-(11).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from redunet_jax._checks import (
    check_finite_result,
    check_float_array,
    check_memberships,
    check_positive,
)
from redunet_jax._guards import cast_features, resolve_compute_dtype
from redunet_jax._linalg import logdet_shifted


class Rates(NamedTuple):
    """Rate reduction ``delta_r = r - rc`` with its two terms (natural logs).

    Returned by :func:`rate_reduction`, by the shift-invariant rates and, with
    a leading layer axis, by ``rates_per_layer``; a plain named tuple, so it is
    a pytree and unpacks as ``delta_r, r, rc``.

    Attributes:
      delta_r: the rate reduction ``ΔR = R - R_c``.
      r: the coding rate ``R`` of the whole set.
      rc: the coding rate ``R_c`` of the classes, weighted by their sizes.

    Example:
      >>> import jax.numpy as jnp
      >>> Z = jnp.eye(2).repeat(5, axis=0)  # two classes on orthogonal axes
      >>> rates = rate_reduction(Z, Z, eps_sq=0.1)
      >>> delta_r, r, rc = rates
      >>> bool(jnp.isclose(delta_r, r - rc)), sorted(rates._asdict())
      (True, ['delta_r', 'r', 'rc'])
    """

    delta_r: jax.Array
    r: jax.Array
    rc: jax.Array


def class_counts(Pi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return ``(m_j, safe_m_j)``: class sizes and sizes with zeros replaced by 1.

    ``safe_m_j`` keeps ``alpha_j = d / (m_j eps_sq)`` finite for an empty class;
    such a class has a zero covariance, so its terms vanish regardless.

    Args:
      Pi: (m, k) memberships.

    Returns:
      ``(m_j, safe_m_j)``, both (k,).

    Raises:
      TypeError: from JAX, if ``Pi`` is not numeric; the values are not
        validated here (the public functions check them).
    """
    m_j = jnp.sum(Pi, axis=0)
    return m_j, jnp.where(m_j > 0, m_j, 1.0)


def rates_from_logdets(averages: jax.Array, m_j: jax.Array, m) -> Rates:
    """Combine log-determinants of the whole set and of each class into rates.

    Args:
      averages: (k + 1,) log-determinants (averaged over frequencies for
        shift-invariant features); entry 0 is the whole set, then each class.
      m_j: (k,) class sizes; empty classes contribute zero.
      m: number of samples.

    Returns:
      ``Rates(delta_r, r, rc)`` as scalar arrays.

    Raises:
      TypeError: from JAX, if the shapes of ``averages`` and ``m_j`` do not
        broadcast; they are not validated here.
    """
    r = 0.5 * averages[0]
    rc = jnp.sum(jnp.where(m_j > 0, m_j / (2.0 * m) * averages[1:], 0.0))
    return Rates(r - rc, r, rc)


def paired_rates(rates_fn, Z, Pi_a, Pi_b, eps_sq) -> tuple[Rates, Rates]:
    """Rates under two membership matrices from a single factorization call.

    Stacking the memberships (m, 2k) shares the covariance of the whole set;
    the class terms then split into the two sums.

    Args:
      rates_fn: a rates function ``rates_fn(Z, Pi, eps_sq, per_class=True)``
        returning ``(r, per-class terms)``.
      Z: features in the form ``rates_fn`` takes.
      Pi_a: (m, k) first memberships (for example the true labels).
      Pi_b: (m, k) second memberships (for example ``argmax pihat``).
      eps_sq: distortion ``ε²``.

    Returns:
      ``(rates_a, rates_b)``: ``Rates`` under ``Pi_a`` and under ``Pi_b``.

    Raises:
      TypeError: from JAX, if the memberships do not have matching shapes;
        they are not validated here.
    """
    k = Pi_a.shape[1]
    both = rates_fn(Z, jnp.concatenate([Pi_a, Pi_b], axis=1), eps_sq, per_class=True)
    r, terms = both
    rc_a, rc_b = jnp.sum(terms[:k]), jnp.sum(terms[k:])
    return Rates(r - rc_a, r, rc_a), Rates(r - rc_b, r, rc_b)


def vector_covariances(Z: jax.Array, Pi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return ``Z^T Z`` (d, d) and ``Z^T diag(Pi_j) Z`` stacked as (k, d, d).

    Args:
      Z: (m, d) features.
      Pi: (m, k) memberships.

    Returns:
      ``(full, per_class)``: (d, d) and (k, d, d) covariances.

    Raises:
      TypeError, ValueError: from JAX, if the shapes do not match; they are
        not validated here.
    """
    full = Z.T @ Z
    per_class = jnp.einsum("ij,ia,ib->jab", Pi, Z, Z)
    return full, per_class


def vector_scales(Z: jax.Array, safe_m_j: jax.Array, eps_sq) -> jax.Array:
    """``[alpha, alpha_1, ..., alpha_k]`` with ``alpha = d / (m eps_sq)``.

    Args:
      Z: (m, d) features (only the shape is used).
      safe_m_j: (k,) class sizes with zeros replaced by 1.
      eps_sq: distortion ``ε²`` (> 0; not checked here).

    Returns:
      (k + 1,) scales, in the dtype of ``Z``.

    Raises:
      ValueError: if ``Z`` is not two-dimensional.
    """
    m, d = Z.shape
    alpha = jnp.asarray(d / (m * eps_sq), Z.dtype)
    return jnp.concatenate([alpha[None], d / (safe_m_j * eps_sq)])


def _vector_rates(Z: jax.Array, Pi: jax.Array, eps_sq, *, per_class: bool = False):
    Z = Z.astype(jnp.promote_types(Z.dtype, jnp.float32))
    Pi = Pi.astype(Z.dtype)
    m_j, safe_m_j = class_counts(Pi)
    full, per_class_cov = vector_covariances(Z, Pi)
    stacked = jnp.concatenate([full[None], per_class_cov], axis=0)
    logdets = logdet_shifted(stacked, vector_scales(Z, safe_m_j, eps_sq))
    rates = rates_from_logdets(logdets, m_j, Z.shape[0])
    if per_class:
        terms = jnp.where(m_j > 0, m_j / (2.0 * Z.shape[0]) * logdets[1:], 0.0)
        return rates.r, terms
    return rates


_vector_rates_jit = jax.jit(_vector_rates)


def rate_reduction(Z, Pi, *, eps_sq: float, compute_dtype=None) -> Rates:
    r"""Rate reduction of features ``Z`` under memberships ``Pi``.

    .. math::

       R   &= \tfrac12 \log\det(I_d + \alpha Z^\top Z),
              \quad \alpha = d / (m \epsilon^2) \\
       R_c &= \sum_j \tfrac{m_j}{2m} \log\det(I_d + \alpha_j Z^\top
              \mathrm{diag}(\Pi_j) Z), \quad \alpha_j = d / (m_j \epsilon^2)

    Log-determinants use a Cholesky factor of the d×d Gram form; the cost is
    O(k m d² + k d³). A class with no members contributes zero.

    Args:
      Z: (m, d) features ``Z`` (rows are samples).
      Pi: (m, k) memberships ``Pi``: one-hot labels or soft, rows summing to 1.
      eps_sq: distortion ``ε²`` (squared), > 0.
      compute_dtype: dtype of the covariances, the Cholesky factorization and
        the log-determinants: ``jnp.float32`` or ``jnp.float64`` (needs
        ``jax_enable_x64``). Default: float64 for float64 ``Z`` under x64,
        float32 otherwise; bfloat16 and float16 features are never factored in
        their own precision. float32 loses accuracy when ``eps_sq`` is below
        about 1e-3 or classes are much smaller than d.

    Returns:
      ``Rates(delta_r, r, rc)`` as scalar arrays of ``compute_dtype``.
      ``delta_r >= 0`` for one-hot memberships.

    Raises:
      ValueError: if shapes disagree, values are not finite, ``eps_sq <= 0``,
        ``compute_dtype`` is not float32 or float64 (or float64 without x64), or
        the rates overflow (features far too large for ``compute_dtype``:
        normalize them first).
      TypeError: if ``Z`` or ``Pi`` is not a real numeric array.

    References:
      MCR², eqs. (8)-(11); ReduNet (JMLR 2022), section 2.

    Example:
      >>> import jax.numpy as jnp
      >>> Z = jnp.eye(2).repeat(500, axis=0)          # two collapsed classes
      >>> Pi = jnp.eye(2).repeat(500, axis=0)
      >>> round(float(rate_reduction(Z, Pi, eps_sq=0.1).delta_r), 4)
      0.8756
    """
    Z = check_float_array(Z, "Z", ndims=(2,))
    Z = cast_features(Z, resolve_compute_dtype(compute_dtype, Z.dtype), "Z")
    Pi = check_memberships(Pi, "Pi", m=Z.shape[0]).astype(Z.dtype)
    eps_sq = check_positive(eps_sq, "eps_sq")
    return check_finite_result(_vector_rates_jit(Z, Pi, eps_sq))
