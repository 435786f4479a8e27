"""Batched factorizations of Hermitian positive definite matrices.

Both the vector and the shift-invariant layers reduce to the same two kernels:
log-determinants and scaled inverses of ``I + a * S`` for a stack of Gram or
covariance matrices ``S``. They are written once here, for real or complex
input, so that every caller factors through a single batched Cholesky call.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular


def _shifted(S: jax.Array, a: jax.Array) -> jax.Array:
    """Return the symmetrized ``I + a * S`` for a stack ``S`` of shape (..., n, n)."""
    n = S.shape[-1]
    A = jnp.eye(n, dtype=S.dtype) + a[..., None, None] * S
    return 0.5 * (A + jnp.conj(jnp.swapaxes(A, -1, -2)))


def logdet_shifted(S: jax.Array, a: jax.Array) -> jax.Array:
    """Log-determinants of ``I + a * S`` through a Cholesky factor.

    Args:
      S: (..., n, n) Hermitian positive semi-definite matrices.
      a: (...) non-negative scales, broadcast against the batch axes of ``S``.

    Returns:
      (...) real log-determinants ``2 * sum(log(diag(L)))``.
    """
    L = jnp.linalg.cholesky(_shifted(S, a))
    diag = jnp.real(jnp.diagonal(L, axis1=-2, axis2=-1))
    return 2.0 * jnp.sum(jnp.log(diag), axis=-1)


def scaled_inverse_and_logdet(S: jax.Array, a: jax.Array):
    """Return ``a * inv(I + a * S)`` and ``logdet(I + a * S)`` from one Cholesky call.

    The operators of a ReduNet layer are these matrices themselves (they are
    applied to test data later), so the inverse is formed explicitly: with
    ``I + a * S = L L^H``, two triangular solves give ``L^{-H} (L^{-1} a I)``.
    Both solves take LAPACK's column-major factor as it is; forming
    ``W^H W`` with ``W = sqrt(a) L^{-1}`` instead needs two layout copies
    besides, and was measured slower for batched 16×16 complex blocks (the
    shift-invariant layers) and for n = 784, and within noise at n = 64, 256.
    The log-determinants of the same factor give the rates of the features
    the layer was built from, so a layer step needs a single batched
    factorization. (Two concurrent batched factorizations in one compiled
    CPU program have been seen to deadlock in jaxlib 0.10; keeping one per
    program avoids that as well.)

    Args:
      S: (..., n, n) Hermitian positive semi-definite matrices.
      a: (...) non-negative scales.

    Returns:
      ``(operators, logdets)`` of shapes (..., n, n) and (...).
    """
    n = S.shape[-1]
    L = jnp.linalg.cholesky(_shifted(S, a))
    scale = a.astype(S.dtype)[..., None, None]
    rhs = scale * jnp.broadcast_to(jnp.eye(n, dtype=S.dtype), S.shape)
    W = solve_triangular(L, rhs, lower=True)
    X = solve_triangular(L, W, lower=True, trans="C")
    diag = jnp.real(jnp.diagonal(L, axis1=-2, axis2=-1))
    return 0.5 * (X + jnp.conj(jnp.swapaxes(X, -1, -2))), 2.0 * jnp.sum(
        jnp.log(diag), -1
    )


def safe_norm(x: jax.Array, axis, *, floor: float = 1e-8) -> jax.Array:
    """Euclidean norm clamped below at ``floor`` with a finite gradient at 0."""
    sq = jnp.sum(jnp.real(x * jnp.conj(x)), axis=axis)
    return jnp.sqrt(jnp.maximum(sq, floor * floor))


@contextlib.contextmanager
def single_threaded_lapack():
    """Run the enclosed work with one OpenBLAS/LAPACK thread.

    On CPU, jaxlib factors matrices through the LAPACK of SciPy's OpenBLAS.
    A layer makes many small batched calls, for which a second BLAS thread
    brings nothing, and on a busy machine its spinning threads were measured
    to stall calls by 15-75 ms each (a 10-layer circulant construction ran in
    0.77 s with the default two threads, 0.49 s with one). XLA's own
    thread pool, which runs the matrix products, is not affected.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
