"""Spectral rates and circulant layers against dense block-circulant references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redunet_jax._circulant import (
    CirculantLayer,
    _build_circulant,
    _move_circulant,
    apply_circulant_layer,
    build_circulant_layer,
)
from redunet_jax._fourier import bin_weights, from_fourier, to_fourier
from redunet_jax._spectral_rates import (
    _spectral_rates,
    shift_invariant_rate_reduction,
)

# (C, *signal_shape)
SHAPES = [
    (1, 7),
    (1, 8),
    (3, 7),
    (3, 8),
    (1, 4, 4),
    (1, 4, 5),
    (3, 4, 4),
    (3, 4, 5),
]
LABELS = np.array([0, 1, 0, 0, 1])
EPS_SQ = 0.5
ETA = 0.5
LAM = 500.0


def one_hot(labels, k):
    return np.eye(k)[labels]


def soft_memberships(m, k, seed):
    logits = np.random.default_rng(seed).standard_normal((m, k))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def samples(shape, m, seed):
    return np.random.default_rng(seed).standard_normal((m, *shape))


def assert_rel(actual, expected, tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    error = np.linalg.norm(actual - expected)
    assert error <= tol * np.linalg.norm(expected), (error, np.linalg.norm(expected))


# Dense references (float64 NumPy), straight from the signal-domain formulas.


def circ(Z):
    """(m, C*T, T): column s of circ(z_i) is z_i circularly shifted by s."""
    m = Z.shape[0]
    axes = tuple(range(2, Z.ndim))
    shifts = itertools.product(*(range(Z.shape[a]) for a in axes))
    columns = [np.roll(Z, s, axis=axes).reshape(m, -1) for s in shifts]
    return np.stack(columns, axis=-1)


def dense_covariances(Z, Pi):
    """sum_i circ circ^T over all samples, then weighted by each class."""
    shifted = circ(Z)
    full = np.einsum("iat,ibt->ab", shifted, shifted)
    per_class = np.einsum("ij,iat,ibt->jab", Pi, shifted, shifted)
    return full, per_class


def dense_rates(Z, Pi, eps_sq):
    m, C = Z.shape[:2]
    T = math.prod(Z.shape[2:])
    n = C * T
    full, per_class = dense_covariances(Z, Pi)
    m_j = Pi.sum(axis=0)

    alpha = C / (m * eps_sq)
    r = np.linalg.slogdet(np.eye(n) + alpha / T * full)[1] / (2 * T)
    rc = 0.0
    for j in range(Pi.shape[1]):
        if m_j[j] > 0:
            alpha_j = C / (m_j[j] * eps_sq)
            logdet = np.linalg.slogdet(np.eye(n) + alpha_j / T * per_class[j])[1]
            rc += m_j[j] / m * logdet / (2 * T)
    return r, rc


def dense_operators(Z, Pi, eps_sq):
    m, C = Z.shape[:2]
    T = math.prod(Z.shape[2:])
    n = C * T
    full, per_class = dense_covariances(Z, Pi)
    m_j = Pi.sum(axis=0)

    alpha = C / (m * eps_sq)
    E = alpha * np.linalg.inv(np.eye(n) + alpha / T * full)
    Cs = np.zeros((Pi.shape[1], n, n))
    for j in range(Pi.shape[1]):
        if m_j[j] > 0:
            alpha_j = C / (m_j[j] * eps_sq)
            Cs[j] = alpha_j * np.linalg.inv(np.eye(n) + alpha_j / T * per_class[j])
    return E, Cs, m_j / m


def dense_layer(E, Cs, gamma, X, eta, lam):
    x = X.reshape(X.shape[0], -1)
    Ex = x @ E.T
    Cx = np.einsum("jab,mb->mja", Cs, x)
    norms = np.maximum(np.linalg.norm(Cx, axis=-1), 1e-8)
    logits = np.where(gamma > 0, -lam * norms, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    pihat = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    x_new = x + eta * (Ex - np.einsum("mj,mja->ma", gamma * pihat, Cx))
    x_new /= np.maximum(np.linalg.norm(x_new, axis=1, keepdims=True), 1e-8)
    return x_new.reshape(X.shape), pihat


# Full complex FFT path: all T bins, general inverses, unweighted sums.


def full_fft(Z):
    axes = tuple(range(2, Z.ndim))
    return jnp.fft.fftn(Z, axes=axes, norm="ortho").reshape(*Z.shape[:2], -1)


@jax.jit
def full_fft_layer_and_rates(Z, Pi, X, eps_sq, eta, lam):
    m, C = Z.shape[:2]
    T = math.prod(Z.shape[2:])
    Z_full, X_full = full_fft(Z), full_fft(X)
    m_j = Pi.sum(axis=0)
    eye = jnp.eye(C)

    Sigma = jnp.einsum("iap,ibp->pab", Z_full, Z_full.conj())
    Sigma_j = jnp.einsum("ij,iap,ibp->jpab", Pi, Z_full, Z_full.conj())
    alpha = C / (m * eps_sq)
    alpha_j = C / (m_j * eps_sq)
    E_full = alpha * jnp.linalg.inv(eye + alpha * Sigma)
    C_full = alpha_j[:, None, None, None] * jnp.linalg.inv(
        eye + alpha_j[:, None, None, None] * Sigma_j
    )

    r = jnp.sum(jnp.linalg.slogdet(eye + alpha * Sigma)[1]) / (2 * T)
    logdets = jnp.linalg.slogdet(eye + alpha_j[:, None, None, None] * Sigma_j)[1]
    rc = jnp.sum(m_j / m * logdets.sum(axis=1)) / (2 * T)

    EX = jnp.einsum("pab,mbp->map", E_full, X_full)
    CX = jnp.einsum("jpab,mbp->mjap", C_full, X_full)
    norms = jnp.maximum(jnp.sqrt(jnp.sum(jnp.abs(CX) ** 2, axis=(2, 3))), 1e-8)
    pihat = jax.nn.softmax(-lam * norms, axis=1)
    X_new = X_full + eta * (EX - jnp.einsum("mj,mjap->map", m_j / m * pihat, CX))
    X_new /= jnp.sqrt(jnp.sum(jnp.abs(X_new) ** 2, axis=(1, 2)))[:, None, None]
    axes = tuple(range(2, X.ndim))
    X_out = jnp.fft.ifftn(X_new.reshape(X.shape), axes=axes, norm="ortho")
    return X_out, pihat, r, rc


@pytest.mark.parametrize("shape", SHAPES)
def test_rates_match_dense(shape):
    with jax.enable_x64(True):
        Z = samples(shape, 5, seed=1)
        for Pi in (one_hot(LABELS, 2), soft_memberships(5, 3, seed=2)):
            rates = shift_invariant_rate_reduction(
                jnp.asarray(Z), jnp.asarray(Pi), eps_sq=EPS_SQ
            )
            r, rc = dense_rates(Z, Pi, EPS_SQ)

            assert rates.r.dtype == jnp.float64
            assert_rel(rates.r, r, 1e-9)
            assert_rel(rates.rc, rc, 1e-9)
            assert_rel(rates.delta_r, r - rc, 1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_matches_dense_block_circulant(shape):
    signal_shape = shape[1:]
    T = math.prod(signal_shape)
    with jax.enable_x64(True):
        Z, X = samples(shape, 5, seed=3), samples(shape, 4, seed=4)
        Pi = one_hot(LABELS, 2)
        weights = bin_weights(signal_shape)
        layer = build_circulant_layer(
            to_fourier(jnp.asarray(Z)), jnp.asarray(Pi), eps_sq=EPS_SQ, num_positions=T
        )
        E, Cs, gamma = dense_operators(Z, Pi, EPS_SQ)
        X_hat = to_fourier(jnp.asarray(X))
        x = X.reshape(4, -1)

        EX = from_fourier(jnp.einsum("pab,mbp->map", layer.E_hat, X_hat), signal_shape)
        assert_rel(EX.reshape(4, -1), x @ E.T, 1e-9)
        for j in range(2):
            CX_hat = jnp.einsum("pab,mbp->map", layer.C_hat[j], X_hat)
            CX = from_fourier(CX_hat, signal_shape)
            assert_rel(CX.reshape(4, -1), x @ Cs[j].T, 1e-9)
        np.testing.assert_allclose(np.asarray(layer.gamma), gamma, rtol=1e-15)

        X_hat_next, pihat = apply_circulant_layer(
            layer, X_hat, eta=ETA, lam=LAM, weights=weights
        )
        expected, expected_pihat = dense_layer(E, Cs, gamma, X, ETA, LAM)
        assert_rel(from_fourier(X_hat_next, signal_shape), expected, 1e-9)
        assert_rel(pihat, expected_pihat, 1e-9)


@pytest.mark.parametrize("shape", [(3, 7), (3, 8), (1, 4, 4), (3, 4, 5)])
def test_rfft_path_matches_full_fft(shape):
    signal_shape = shape[1:]
    T = math.prod(signal_shape)
    with jax.enable_x64(True):
        Z, X = jnp.asarray(samples(shape, 5, seed=5)), jnp.asarray(samples(shape, 3, 6))
        Pi = jnp.asarray(one_hot(LABELS, 2))
        weights = bin_weights(signal_shape)
        Z_hat = to_fourier(Z)
        layer = build_circulant_layer(Z_hat, Pi, eps_sq=EPS_SQ, num_positions=T)
        X_hat_next, pihat = apply_circulant_layer(
            layer, to_fourier(X), eta=ETA, lam=LAM, weights=weights
        )
        rates = _spectral_rates(Z_hat, Pi, EPS_SQ, weights, T)

        X_full, pihat_full, r, rc = full_fft_layer_and_rates(Z, Pi, X, EPS_SQ, ETA, LAM)
        assert float(jnp.max(jnp.abs(X_full.imag))) < 1e-12
        assert_rel(from_fourier(X_hat_next, signal_shape), X_full.real, 1e-9)
        assert_rel(pihat, pihat_full, 1e-9)
        assert_rel(rates.r, r, 1e-9)
        assert_rel(rates.rc, rc, 1e-9)


@pytest.mark.parametrize(("shape", "shift"), [((3, 8), (3,)), ((2, 4, 5), (1, -2))])
def test_exact_shift_equivariance_float32(shape, shift):
    signal_shape = shape[1:]
    axes = tuple(range(2, 2 + len(signal_shape)))
    Z = jnp.asarray(samples(shape, 6, seed=7), jnp.float32)
    X = jnp.asarray(samples(shape, 4, seed=8), jnp.float32)
    Pi = jnp.asarray(one_hot(np.array([0, 1, 1, 0, 1, 0]), 2), jnp.float32)
    weights = bin_weights(signal_shape)
    layer = build_circulant_layer(
        to_fourier(Z), Pi, eps_sq=EPS_SQ, num_positions=math.prod(signal_shape)
    )

    def layer_map(X):
        X_hat_next, pihat = apply_circulant_layer(
            layer, to_fourier(X), eta=ETA, lam=LAM, weights=weights
        )
        return from_fourier(X_hat_next, signal_shape), pihat

    out, pihat = layer_map(X)
    out_shifted, pihat_shifted = layer_map(jnp.roll(X, shift, axis=axes))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out_shifted, jnp.roll(out, shift, axis=axes), atol=1e-5)
    np.testing.assert_allclose(pihat_shifted, pihat, atol=1e-5)

    # Each sample shifted by its own amount leaves every covariance unchanged.
    Z_shifted = jnp.stack(
        [
            jnp.roll(z, (i,) * len(axes), axis=tuple(a - 1 for a in axes))
            for i, z in enumerate(Z)
        ]
    )
    rates = shift_invariant_rate_reduction(Z, Pi, eps_sq=EPS_SQ)
    rates_shifted = shift_invariant_rate_reduction(Z_shifted, Pi, eps_sq=EPS_SQ)
    np.testing.assert_allclose(rates_shifted, rates, rtol=1e-5)


def test_empty_class_and_zero_sample_stay_finite():
    signal_shape = (6,)
    Z = jnp.asarray(samples((2, 6), 5, seed=9), jnp.float32)
    Pi2 = jnp.asarray(one_hot(LABELS, 2), jnp.float32)
    Pi3 = jnp.concatenate([Pi2[:, :1], jnp.zeros((5, 1)), Pi2[:, 1:]], axis=1)
    weights = bin_weights(signal_shape)

    rates3 = shift_invariant_rate_reduction(Z, Pi3, eps_sq=EPS_SQ)
    rates2 = shift_invariant_rate_reduction(Z, Pi2, eps_sq=EPS_SQ)
    assert all(bool(jnp.isfinite(v)) for v in rates3)
    np.testing.assert_allclose(rates3, rates2, rtol=1e-6)

    grad = jax.grad(lambda Z: shift_invariant_rate_reduction(Z, Pi3, eps_sq=0.1)[0])(Z)
    assert bool(jnp.all(jnp.isfinite(grad)))

    layer3 = build_circulant_layer(to_fourier(Z), Pi3, eps_sq=EPS_SQ, num_positions=6)
    layer2 = build_circulant_layer(to_fourier(Z), Pi2, eps_sq=EPS_SQ, num_positions=6)
    assert float(jnp.max(jnp.abs(layer3.C_hat[1]))) == 0.0
    assert float(layer3.gamma[1]) == 0.0

    X = Z.at[0].set(0.0)
    out3, pihat3 = apply_circulant_layer(layer3, to_fourier(X), weights=weights)
    out2, pihat2 = apply_circulant_layer(layer2, to_fourier(X), weights=weights)
    assert bool(jnp.all(jnp.isfinite(out3))) and bool(jnp.all(jnp.isfinite(pihat3)))
    assert float(jnp.max(pihat3[:, 1])) == 0.0
    assert float(jnp.max(jnp.abs(out3[0]))) == 0.0
    np.testing.assert_allclose(out3, out2, atol=1e-6)
    np.testing.assert_allclose(pihat3[:, [0, 2]], pihat2, atol=1e-6)

    @jax.jit
    @jax.grad
    def total_grad(Z):
        layer = _build_circulant(to_fourier(Z), Pi3, EPS_SQ, 6)
        Z_hat_next, _ = _move_circulant(layer, to_fourier(Z), ETA, LAM, weights)
        return jnp.sum(from_fourier(Z_hat_next, signal_shape) ** 2)

    grad = total_grad(X)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_jitted_step_compiles_once():
    signal_shape = (4, 4)
    weights = bin_weights(signal_shape)

    @jax.jit
    def step(Z_hat, Pi, eps_sq, eta, lam):
        layer = _build_circulant(Z_hat, Pi, eps_sq, 16)
        Z_hat_next, pihat = _move_circulant(layer, Z_hat, eta, lam, weights)
        return layer, Z_hat_next, _spectral_rates(Z_hat_next, Pi, eps_sq, weights, 16)

    Pi = jnp.asarray(one_hot(LABELS, 2), jnp.float32)
    for seed in (10, 11):
        Z_hat = to_fourier(jnp.asarray(samples((2, 4, 4), 5, seed), jnp.float32))
        layer, Z_hat_next, rates = step(Z_hat, Pi, EPS_SQ, ETA, LAM)
        assert isinstance(layer, CirculantLayer)
        assert bool(jnp.isfinite(rates.delta_r))
    assert step._cache_size() == 1


def test_input_errors():
    Z_hat = to_fourier(jnp.ones((4, 2, 8)))
    Pi = jnp.asarray(one_hot(np.array([0, 1, 0, 1]), 2), jnp.float32)
    with pytest.raises(ValueError, match="num_positions=12 does not fit"):
        build_circulant_layer(Z_hat, Pi, eps_sq=0.1, num_positions=12)
    with pytest.raises(ValueError, match="eps_sq must be > 0"):
        build_circulant_layer(Z_hat, Pi, eps_sq=0.0, num_positions=8)
    with pytest.raises(TypeError, match="Z_hat must hold complex"):
        build_circulant_layer(jnp.ones((4, 2, 5)), Pi, num_positions=8)
    with pytest.raises(ValueError, match="Pi has 3 rows"):
        build_circulant_layer(Z_hat, Pi[:3], num_positions=8)

    layer = build_circulant_layer(Z_hat, Pi, num_positions=8)
    with pytest.raises(ValueError, match="Z_hat must have 2 channels"):
        apply_circulant_layer(layer, Z_hat[:, :1], weights=bin_weights(8))
    with pytest.raises(ValueError, match=r"weights must have shape \(5,\)"):
        apply_circulant_layer(layer, Z_hat, weights=bin_weights(7))
    with pytest.raises(ValueError, match="Z must have signal axes"):
        shift_invariant_rate_reduction(jnp.ones((4, 2, 1)), Pi, eps_sq=0.1)
