import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from reference import blobs

from redunet_jax import apply_vector_layer, build_vector_layer


def test_build_matches_reference(x64):
    X, y = blobs(6, 4, 3, seed=0)
    Pi = np.eye(4)[y]  # class 3 is empty
    layer = build_vector_layer(jnp.asarray(X), jnp.asarray(Pi), eps_sq=0.4)
    E, C, gamma = ref.build_layer(X, Pi, 0.4)
    np.testing.assert_allclose(layer.E, E, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.C, C, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.gamma, gamma, rtol=1e-12)
    assert np.all(layer.C[3] == 0)


def test_build_equals_explicit_inverse():
    X, y = blobs(20, 6, 2, seed=1)
    Z, Pi = jnp.asarray(X, jnp.float32), jax.nn.one_hot(y, 2)
    layer = build_vector_layer(Z, Pi, eps_sq=0.5)
    alpha = 6 / (40 * 0.5)
    E = alpha * jnp.linalg.inv(jnp.eye(6) + alpha * Z.T @ Z)
    np.testing.assert_allclose(layer.E, E, rtol=1e-4, atol=1e-6)


def test_apply_matches_reference(x64):
    X, y = blobs(6, 4, 3, seed=2)
    Pi = np.eye(3)[y]
    layer = build_vector_layer(jnp.asarray(X), jnp.asarray(Pi), eps_sq=0.4)
    Z, pihat = apply_vector_layer(layer, jnp.asarray(X), eta=0.3, lam=5.0)
    Z_ref, pi_ref = ref.apply_layer(*ref.build_layer(X, Pi, 0.4), X, 0.3, 5.0)
    np.testing.assert_allclose(Z, Z_ref, rtol=1e-10)
    np.testing.assert_allclose(pihat, pi_ref, rtol=1e-9, atol=1e-14)


def test_apply_properties():
    X, y = blobs(10, 5, 3, seed=3)
    X[0] = 0.0  # an all-zero sample
    Pi = np.eye(4)[y]  # an empty class
    layer = build_vector_layer(X, Pi, eps_sq=0.1)
    Z, pihat = apply_vector_layer(layer, X, eta=0.5, lam=500.0)
    norms = np.linalg.norm(Z, axis=1)
    np.testing.assert_allclose(norms[1:], 1.0, rtol=1e-5)
    assert norms[0] == 0.0
    np.testing.assert_allclose(pihat.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(pihat[:, 3] == 0)
    assert np.all(np.isfinite(pihat))


def test_apply_gradient_finite_with_zero_sample_and_empty_class():
    X, y = blobs(4, 3, 2, seed=4)
    X[1] = 0.0
    layer = build_vector_layer(X, np.eye(3)[y], eps_sq=0.1)

    def f(Z):
        return jnp.sum(apply_vector_layer(layer, Z, eta=0.5, lam=500.0)[0] ** 2)

    assert np.all(np.isfinite(jax.grad(f)(jnp.asarray(X, jnp.float32))))


def test_apply_rejects_wrong_width():
    X, y = blobs(4, 3, 2)
    layer = build_vector_layer(X, np.eye(2)[y], eps_sq=0.1)
    with pytest.raises(ValueError, match="columns"):
        apply_vector_layer(layer, np.ones((2, 4)))
