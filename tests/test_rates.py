import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import blobs
from reference import rates as ref_rates

from redunet_jax import rate_reduction


def collapsed(d, per_class=500):
    Z = np.repeat(np.eye(d), per_class, axis=0)
    return Z, Z.copy()


@pytest.mark.parametrize(
    "d, expected", [(2, (0.8756, 2.3979, 1.5223)), (3, (1.8798, 3.5968, 1.7170))]
)
def test_closed_form_values(d, expected):
    Z, Pi = collapsed(d)
    rates = rate_reduction(Z, Pi, eps_sq=0.1)
    np.testing.assert_allclose(
        [float(rates.delta_r), float(rates.r), float(rates.rc)], expected, atol=5e-5
    )


def test_closed_form_matches_analytic_expression():
    # R = d/2 log(1 + 1/eps_sq), Rc = 1/2 log(1 + d/eps_sq) for d collapsed classes.
    for d in (2, 3, 5):
        Z, Pi = collapsed(d, per_class=100)
        rates = rate_reduction(Z, Pi, eps_sq=0.1)
        np.testing.assert_allclose(float(rates.r), d / 2 * np.log(11.0), rtol=1e-6)
        np.testing.assert_allclose(
            float(rates.rc), 0.5 * np.log(1 + d / 0.1), rtol=1e-6
        )


@pytest.mark.parametrize("soft", [False, True])
def test_matches_float64_reference(x64, soft):
    X, y = blobs(7, 5, 3, seed=1)
    Pi = np.eye(3)[y]
    if soft:
        Pi = np.random.default_rng(2).dirichlet(np.ones(3), size=len(y))
    got = rate_reduction(jnp.asarray(X), jnp.asarray(Pi), eps_sq=0.3)
    assert got.r.dtype == jnp.float64
    np.testing.assert_allclose(list(map(float, got)), ref_rates(X, Pi, 0.3), rtol=1e-10)


def test_float32_close_to_reference():
    X, y = blobs(30, 8, 4, seed=3)
    got = rate_reduction(X.astype(np.float32), np.eye(4)[y], eps_sq=0.5)
    np.testing.assert_allclose(
        list(map(float, got)), ref_rates(X, np.eye(4)[y], 0.5), rtol=1e-5
    )


def test_rate_reduction_is_non_negative_for_labels():
    rng = np.random.default_rng(0)
    for trial in range(10):
        m, d, k = rng.integers(2, 30), rng.integers(1, 6), rng.integers(2, 5)
        Z = rng.standard_normal((m, d)) * rng.uniform(0.1, 10)
        Pi = np.eye(k)[rng.integers(0, k, m)]
        assert float(rate_reduction(Z, Pi, eps_sq=0.1).delta_r) >= -1e-5, trial


def test_empty_class_contributes_zero():
    X, y = blobs(10, 4, 2)
    base = rate_reduction(X, np.eye(2)[y], eps_sq=0.2)
    padded = rate_reduction(X, np.eye(3)[y], eps_sq=0.2)
    np.testing.assert_allclose(
        list(map(float, padded)), list(map(float, base)), rtol=1e-6
    )


def loss(Z, Pi):
    return rate_reduction(Z, Pi, eps_sq=0.1).delta_r


@pytest.mark.parametrize("case", ["sizes", "duplicates", "zeros"])
def test_gradient_finite_in_degenerate_cases(case):
    d = 4
    if case == "sizes":
        # classes with m_j = 0, 1, d-1, d, d+1
        sizes = [0, 1, d - 1, d, d + 1]
        y = np.concatenate([np.full(s, j) for j, s in enumerate(sizes)])
        Z = np.random.default_rng(0).standard_normal((len(y), d))
    elif case == "duplicates":
        y = np.array([0, 0, 0, 1, 1, 1])
        Z = np.tile(np.array([[1.0, 2.0, 0.0, 0.0]]), (6, 1))
    else:
        y = np.array([0, 0, 1, 1, 1])
        Z = np.zeros((5, d))
        Z[2] = [1.0, 0.0, 0.0, 0.0]
    Pi = np.eye(5)[y]
    value = loss(jnp.asarray(Z, jnp.float32), jnp.asarray(Pi, jnp.float32))
    grad_Z, grad_Pi = jax.grad(loss, argnums=(0, 1))(
        jnp.asarray(Z, jnp.float32), jnp.asarray(Pi, jnp.float32)
    )
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad_Z)) and np.all(np.isfinite(grad_Pi))


def test_gradient_matches_finite_differences(x64):
    X, y = blobs(5, 3, 2, seed=4)
    Z, Pi = jnp.asarray(X), jnp.asarray(np.eye(2)[y])
    g = jax.grad(loss)(Z, Pi)
    direction = jnp.asarray(np.random.default_rng(5).standard_normal(Z.shape))
    h = 1e-6
    numeric = (loss(Z + h * direction, Pi) - loss(Z - h * direction, Pi)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(g * direction)), float(numeric), rtol=1e-6)


def test_jit_and_vmap():
    X, y = blobs(6, 3, 2)
    Pi = np.eye(2)[y]
    direct = rate_reduction(X, Pi, eps_sq=0.1)
    jitted = jax.jit(lambda Z: rate_reduction(Z, Pi, eps_sq=0.1))(
        jnp.asarray(X, jnp.float32)
    )
    np.testing.assert_allclose(float(jitted.delta_r), float(direct.delta_r), rtol=1e-6)
    batch = jnp.stack([jnp.asarray(X, jnp.float32), 2 * jnp.asarray(X, jnp.float32)])
    mapped = jax.vmap(lambda Z: rate_reduction(Z, Pi, eps_sq=0.1))(batch)
    assert mapped.delta_r.shape == (2,)
    np.testing.assert_allclose(
        float(mapped.delta_r[0]), float(direct.delta_r), rtol=1e-6
    )
    # eps_sq can itself be traced
    traced = jax.jit(lambda e: rate_reduction(X, Pi, eps_sq=e).delta_r)(0.1)
    np.testing.assert_allclose(float(traced), float(direct.delta_r), rtol=1e-6)


@pytest.mark.parametrize(
    "Z, Pi, eps_sq, error, word",
    [
        (np.ones((4,)), np.eye(2)[[0, 1, 0, 1]], 0.1, ValueError, "Z"),
        (np.ones((4, 2)), np.eye(2)[[0, 1, 0]], 0.1, ValueError, "Pi"),
        (np.full((4, 2), np.nan), np.eye(2)[[0, 1, 0, 1]], 0.1, ValueError, "NaN"),
        (np.ones((4, 2)), np.eye(2)[[0, 1, 0, 1]], 0.0, ValueError, "eps_sq"),
        (np.ones((4, 2)), np.eye(2)[[0, 1, 0, 1]], -1.0, ValueError, "eps_sq"),
        (np.ones((4, 2)), -np.eye(2)[[0, 1, 0, 1]], 0.1, ValueError, "Pi"),
        (np.ones((4, 2)), 2 * np.eye(2)[[0, 1, 0, 1]], 0.1, ValueError, "sum to 1"),
        (np.ones((4, 2)) * 1j, np.eye(2)[[0, 1, 0, 1]], 0.1, TypeError, "real"),
        ("abc", np.eye(2)[[0, 1, 0, 1]], 0.1, TypeError, "Z"),
    ],
)
def test_bad_inputs(Z, Pi, eps_sq, error, word):
    with pytest.raises(error, match=word):
        rate_reduction(Z, Pi, eps_sq=eps_sq)


def test_public_functions_inside_jit_with_captured_arrays():
    X, y = blobs(6, 3, 2)
    Z, Pi = jnp.asarray(X, jnp.float32), jnp.asarray(np.eye(2)[y], jnp.float32)
    inside = jax.jit(lambda Z: rate_reduction(Z, Pi, eps_sq=0.1).delta_r)(Z)
    np.testing.assert_allclose(
        float(inside), float(rate_reduction(Z, Pi, eps_sq=0.1).delta_r), rtol=1e-6
    )
