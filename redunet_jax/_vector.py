"""One ReduNet layer for vector features: closed-form construction and application.

References:
  Chan et al., "ReduNet: A White-box Deep Network from the Principle of
  Maximizing Rate Reduction", JMLR 23 (2022), section 2.3, eqs. (12)-(16).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from redunet_jax._checks import (
    check_float_array,
    check_memberships,
    check_positive,
    check_real,
)
from redunet_jax._linalg import safe_norm, scaled_inverse_and_logdet
from redunet_jax._rates import (
    Rates,
    class_counts,
    rates_from_logdets,
    vector_covariances,
    vector_scales,
)

NORM_FLOOR = 1e-8


class VectorLayer(NamedTuple):
    """Operators of one vector layer.

    Attributes:
      E: (d, d) expansion operator ``alpha * inv(I + alpha Z^T Z)``.
      C: (k, d, d) compression operators, one per class.
      gamma: (k,) class proportions ``m_j / m``.

    Example:
      >>> import jax.numpy as jnp
      >>> layer = build_vector_layer(jnp.eye(4), jnp.eye(2).repeat(2, 0), eps_sq=0.5)
      >>> layer.E.shape, layer.C.shape, layer.gamma.tolist()
      ((4, 4), (2, 4, 4), [0.5, 0.5])
    """

    E: jax.Array
    C: jax.Array
    gamma: jax.Array


def _build_with_rates(Z: jax.Array, Pi: jax.Array, eps_sq) -> tuple[VectorLayer, Rates]:
    """Operators built from ``Z`` and the rates of ``Z``, from one factorization."""
    m = Z.shape[0]
    Pi = Pi.astype(Z.dtype)
    m_j, safe_m_j = class_counts(Pi)
    full, per_class = vector_covariances(Z, Pi)

    # E is the "class" whose membership is all ones: one batched factorization
    # of k + 1 matrices instead of two separate calls.
    operators, logdets = scaled_inverse_and_logdet(
        jnp.concatenate([full[None], per_class]), vector_scales(Z, safe_m_j, eps_sq)
    )

    C = jnp.where((m_j > 0)[:, None, None], operators[1:], 0.0)
    layer = VectorLayer(E=operators[0], C=C, gamma=m_j / m)
    return layer, rates_from_logdets(logdets, m_j, m)


def _build(Z: jax.Array, Pi: jax.Array, eps_sq) -> VectorLayer:
    return _build_with_rates(Z, Pi, eps_sq)[0]


def build_vector_layer(Z, Pi, *, eps_sq: float = 0.1) -> VectorLayer:
    r"""Construct the operators of one vector ReduNet layer in closed form.

    .. math::

       E   = \alpha (I + \alpha Z^\top Z)^{-1}, \qquad
       C_j = \alpha_j (I + \alpha_j Z^\top \mathrm{diag}(\Pi_j) Z)^{-1}

    with ``alpha = d / (m eps_sq)`` and ``alpha_j = d / (m_j eps_sq)``. The
    k + 1 matrices are factored in one batched Cholesky call; cost
    O(k m d² + k d³). An empty class gets ``C_j = 0`` and ``gamma_j = 0``.

    Args:
      Z: (m, d) training features ``Z``.
      Pi: (m, k) memberships ``Pi`` (one-hot labels).
      eps_sq: distortion ``ε²``, > 0.

    Returns:
      A ``VectorLayer(E, C, gamma)``.

    Raises:
      ValueError: if shapes disagree, values are not finite or ``eps_sq <= 0``.

    References:
      ReduNet (JMLR 2022), eqs. (12)-(13).

    Example:
      >>> import jax.numpy as jnp
      >>> Z = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
      >>> Pi = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> layer = build_vector_layer(Z, Pi, eps_sq=0.5)
      >>> layer.E.shape, layer.C.shape, [round(float(g), 4) for g in layer.gamma]
      ((2, 2), (2, 2, 2), [0.3333, 0.6667])
    """
    Z = check_float_array(Z, "Z", ndims=(2,))
    Pi = check_memberships(Pi, "Pi", m=Z.shape[0])
    eps_sq = check_positive(eps_sq, "eps_sq")
    return _build_jit(Z, Pi, eps_sq)


def soft_membership(gamma: jax.Array, norms: jax.Array, lam) -> jax.Array:
    """Return ``pihat = softmax(-lam * norms)`` over classes with ``gamma > 0``.

    Args:
      gamma: (k,) class proportions; empty classes get probability 0.
      norms: (m, k) clamped norms ``||C_j z||``.
      lam: inverse temperature ``lambda``.
    """
    logits = jnp.where(gamma > 0, -lam * norms, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def _move(layer: VectorLayer, Z: jax.Array, eta, lam, Pi=None):
    EZ = Z @ layer.E
    CZ = jnp.einsum("kab,mb->mka", layer.C, Z)
    pihat = soft_membership(layer.gamma, safe_norm(CZ, axis=-1, floor=NORM_FLOOR), lam)
    weights = layer.gamma * (pihat if Pi is None else Pi)
    Z_new = Z + eta * (EZ - jnp.einsum("mk,mka->ma", weights, CZ))
    Z_new = Z_new / safe_norm(Z_new, axis=-1, floor=NORM_FLOOR)[:, None]
    return Z_new, pihat


_build_jit = jax.jit(_build)
_move_jit = jax.jit(_move)


def apply_vector_layer(layer: VectorLayer, Z, *, eta: float = 0.5, lam: float = 500.0):
    r"""Apply one vector layer to features, returning new features and ``pihat``.

    .. math::

       \hat\pi_j(z) &= \mathrm{softmax}_j(-\lambda \max(\|C_j z\|, 10^{-8})) \\
       z' &= z + \eta \big(E z - \textstyle\sum_j \gamma_j \hat\pi_j(z) C_j z\big),
       \qquad z_{next} = z' / \max(\|z'\|, 10^{-8})

    Args:
      layer: operators from :func:`build_vector_layer`.
      Z: (m, d) features.
      eta: step size ``eta``.
      lam: inverse temperature ``lambda`` of the soft membership.

    Returns:
      ``(Z_next, pihat)`` of shapes (m, d) and (m, k).

    Raises:
      ValueError: if ``Z`` does not have d columns or holds non-finite values.

    Example:
      >>> import jax.numpy as jnp
      >>> Z = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
      >>> Pi = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> layer = build_vector_layer(Z, Pi, eps_sq=0.5)
      >>> Z_next, pihat = apply_vector_layer(layer, Z, eta=0.5, lam=500.0)
      >>> jnp.linalg.norm(Z_next, axis=1).round(5).tolist()
      [1.0, 1.0, 1.0]
    """
    Z = check_float_array(Z, "Z", ndims=(2,))
    d = layer.E.shape[-1]
    if Z.shape[1] != d:
        raise ValueError(f"Z must have {d} columns for this layer, got shape {Z.shape}")
    return _move_jit(layer, Z, check_real(eta, "eta"), check_real(lam, "lam"))


#: Class operators come from the smaller m_j×m_j system (Woodbury) when the
#: largest class has at most this many samples per feature dimension: factoring
#: and forming C_j then costs about m_j³/3 + m_j² d + m_j d² instead of 4 d³/3,
#: which is cheaper below m_j ≈ 0.7 d.
WOODBURY_RATIO = 0.7


def blocked_layer_with_rates(Z, Pi, eps_sq, plan, *, block, groups=None, classes=None):
    """:func:`_build_with_rates` for one-hot ``Pi`` with class-sorted row blocks.

    The class covariances are summed over class-pure blocks of rows (see
    ``_packed.plan_blocks``), so together they cost one covariance of all
    samples, and the covariance of all samples is their sum. With
    ``classes = (C, logdets)`` from :func:`woodbury_classes`, only E is
    factored here.

    Args:
      Z: (m, d) features.
      Pi: (m, k) one-hot memberships.
      eps_sq: distortion.
      plan: ``(order, inverse, block_class)`` arrays of a ``BlockPlan``.
      block: rows per block.
      groups: static ``BlockPlan.groups``.
      classes: optional precomputed class operators and log-determinants.

    Returns:
      ``(layer, rates)`` as :func:`_build_with_rates`.
    """
    from redunet_jax._packed import class_grams, pack_rows

    m, d = Z.shape
    Pi = Pi.astype(Z.dtype)
    m_j, safe_m_j = class_counts(Pi)
    scales = vector_scales(Z, safe_m_j, eps_sq)
    order, _, block_class = plan
    k = Pi.shape[1]

    if classes is None:
        per_class = class_grams(
            pack_rows(Z, order, block), block_class, k, groups=groups
        )
        stacked = jnp.concatenate([jnp.sum(per_class, axis=0)[None], per_class])
        operators, logdets = scaled_inverse_and_logdet(stacked, scales)
    else:
        C, class_logdets = classes
        E, E_logdet = scaled_inverse_and_logdet((Z.T @ Z)[None], scales[:1])
        operators = jnp.concatenate([E, C])
        logdets = jnp.concatenate([E_logdet, class_logdets])

    C = jnp.where((m_j > 0)[:, None, None], operators[1:], 0.0)
    layer = VectorLayer(E=operators[0], C=C, gamma=m_j / m)
    return layer, rates_from_logdets(logdets, m_j, m)


def woodbury_classes(Z, order, block_class, m_j, eps_sq, *, block, num_classes):
    r"""Class operators and log-determinants from the m_j×m_j systems.

    With the rows ``Z_j`` (m_j, d) of class j,

    .. math::

       C_j = \alpha_j (I_d + \alpha_j Z_j^\top Z_j)^{-1}
           = \alpha_j \big(I_d - \alpha_j Z_j^\top
             (I_{m_j} + \alpha_j Z_j Z_j^\top)^{-1} Z_j\big)

    and ``logdet(I_d + a Z_j^T Z_j) = logdet(I_{m_j} + a Z_j Z_j^T)``
    (Sylvester). Every class is padded with zero rows to ``block`` rows (one
    block per class), which leaves both unchanged. One batched Cholesky call;
    the caller factors E in a separate compiled program (two batched
    factorizations in one CPU program can deadlock in jaxlib 0.10).

    Args:
      Z: (m, d) features.
      order: (g * block,) rows of every present class (``m`` marks padding).
      block_class: (g,) class of every block.
      m_j: (k,) class sizes.
      eps_sq: distortion.
      block: rows per class block (the largest class size).
      num_classes: k.

    Returns:
      ``(C, logdets)`` of shapes (k, d, d) and (k,), zero for empty classes.
    """
    from jax.scipy.linalg import cho_solve

    from redunet_jax._packed import pack_rows

    d = Z.shape[1]
    Zc = pack_rows(Z, order, block)  # (g, b, d)
    a = (d / (jnp.where(m_j > 0, m_j, 1.0) * eps_sq))[block_class]
    K = jnp.einsum("gia,gja->gij", Zc, Zc)
    A = jnp.eye(block, dtype=Z.dtype) + a[:, None, None] * K
    L = jnp.linalg.cholesky(0.5 * (A + jnp.swapaxes(A, -1, -2)))
    logdets = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    X = cho_solve((L, True), Zc)  # (I + a Z_j Z_j^T)^{-1} Z_j
    C = a[:, None, None] * (
        jnp.eye(d, dtype=Z.dtype) - a[:, None, None] * jnp.einsum("gia,gib->gab", Zc, X)
    )
    C = 0.5 * (C + jnp.swapaxes(C, -1, -2))
    zeros = jnp.zeros((num_classes, d, d), Z.dtype)
    return (
        zeros.at[block_class].set(C),
        jnp.zeros(num_classes, Z.dtype).at[block_class].set(logdets),
    )


woodbury_classes_jit = jax.jit(
    woodbury_classes, static_argnames=("block", "num_classes")
)
