"""Property tests of the public functions over shapes, dtypes and memberships.

Shapes come from a small fixed set, so that the number of compiled programs
stays low (each new shape compiles every jitted function once); the data of
each example come from a drawn seed. Examples are derandomized, so the run is
the same on every machine.
"""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from redunet_jax import (
    apply_circulant_layer,
    apply_vector_layer,
    bin_weights,
    build_circulant_layer,
    build_vector_layer,
    construct,
    from_fourier,
    normalize,
    predict,
    predict_proba,
    rate_reduction,
    shift_invariant_rate_reduction,
    to_fourier,
    transform,
)

VECTOR_SHAPES = ((12, 3, 2), (16, 5, 3))  # (m, d, k)
SIGNAL_SHAPES = ((8, 2, 6, 2), (12, 3, 8, 3))  # (m, C, T, k)
DTYPES = ("bfloat16", "float16", "float32")
MEMBERSHIPS = ("one-hot", "soft", "empty class")
PROPERTY = settings(max_examples=10, deadline=None, database=None, derandomize=True)


def memberships(rng, m, k, kind):
    """(m, k) memberships: one-hot labels, soft rows, or one-hot missing a class."""
    if kind == "soft":
        return rng.dirichlet(np.ones(k), size=m)
    labels = rng.integers(0, k - 1 if kind == "empty class" else k, m)
    return np.eye(k)[labels]


@st.composite
def cases(draw, shapes):
    """Features (float64 values in a drawn dtype), memberships and eps_sq."""
    shape = draw(st.sampled_from(shapes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from((1e-3, 1.0, 1e3)))
    kind = draw(st.sampled_from(MEMBERSHIPS))
    eps_sq = draw(st.sampled_from((0.01, 0.1, 1.0)))
    m, k = shape[0], shape[-1]
    Z = scale * rng.standard_normal(shape[:-1])
    if draw(st.booleans()):
        Z[rng.integers(m)] = 0.0  # an all-zero sample
    Z = jnp.asarray(Z, dtype)
    return Z, jnp.asarray(memberships(rng, m, k, kind), jnp.float32), kind, eps_sq


def check_rates(rates, kind):
    values = np.array([float(v) for v in rates])
    assert np.all(np.isfinite(values)), values
    assert rates.r.dtype == jnp.float32
    tol = 1e-4 * max(1.0, abs(values[1]))
    assert values[1] >= -tol and values[2] >= -tol
    if kind != "soft":
        assert values[0] >= -tol  # delta_r >= 0 for one-hot memberships


@PROPERTY
@given(cases(VECTOR_SHAPES))
def test_vector_rates(case):
    Z, Pi, kind, eps_sq = case
    rates = rate_reduction(Z, Pi, eps_sq=eps_sq)
    check_rates(rates, kind)

    # Neither the order of the samples nor that of the classes matters.
    rng = np.random.default_rng(0)
    rows, cols = rng.permutation(Z.shape[0]), rng.permutation(Pi.shape[1])
    permuted = rate_reduction(Z[rows], Pi[rows][:, cols], eps_sq=eps_sq)
    np.testing.assert_allclose(
        [float(v) for v in permuted], [float(v) for v in rates], rtol=1e-4, atol=1e-5
    )


@PROPERTY
@given(cases(SIGNAL_SHAPES))
def test_shift_invariant_rates(case):
    Z, Pi, kind, eps_sq = case
    rates = shift_invariant_rate_reduction(Z, Pi, eps_sq=eps_sq)
    check_rates(rates, kind)

    # Every circular shift is counted, so shifting each sample by its own
    # amount leaves the rates unchanged.
    T = Z.shape[-1]
    shifts = np.random.default_rng(1).integers(0, T, Z.shape[0])
    moved = jnp.stack(
        [jnp.roll(z, int(s), axis=-1) for z, s in zip(Z, shifts, strict=True)]
    )
    again = shift_invariant_rate_reduction(moved, Pi, eps_sq=eps_sq)
    np.testing.assert_allclose(
        [float(v) for v in again], [float(v) for v in rates], rtol=1e-4, atol=1e-5
    )


def check_layer_output(Z_in, Z_next, pihat, gamma):
    Z_next, pihat = np.asarray(Z_next), np.asarray(pihat)
    assert np.all(np.isfinite(Z_next)) and np.all(np.isfinite(pihat))
    norms = np.linalg.norm(Z_next.reshape(len(Z_next), -1), axis=1)
    zero = np.all(np.asarray(Z_in).reshape(len(Z_next), -1) == 0, axis=1)
    np.testing.assert_allclose(norms[~zero], 1.0, atol=1e-5)
    assert np.all(norms[zero] == 0)  # all-zero samples stay zero
    np.testing.assert_allclose(pihat.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(pihat[:, np.asarray(gamma) == 0] == 0)  # empty classes


@PROPERTY
@given(cases(VECTOR_SHAPES))
def test_vector_layer_keeps_samples_on_the_sphere(case):
    Z, Pi, _, eps_sq = case
    Z = normalize(Z).astype(jnp.float32)
    layer = build_vector_layer(Z, Pi, eps_sq=eps_sq)
    Z_next, pihat = apply_vector_layer(layer, Z, eta=0.5, lam=50.0)
    check_layer_output(Z, Z_next, pihat, layer.gamma)
    np.testing.assert_allclose(layer.gamma, np.asarray(Pi).mean(axis=0), atol=1e-6)


@PROPERTY
@given(cases(SIGNAL_SHAPES), st.integers(1, 7))
def test_circulant_layer_commutes_with_shifts(case, shift):
    Z, Pi, _, eps_sq = case
    T = Z.shape[-1]
    Z = normalize(Z).astype(jnp.float32)
    weights = bin_weights((T,))
    layer = build_circulant_layer(to_fourier(Z), Pi, eps_sq=eps_sq, num_positions=T)
    Z_next, pihat = apply_circulant_layer(layer, to_fourier(Z), weights=weights)
    out = from_fourier(Z_next, (T,))
    check_layer_output(Z, out, pihat, layer.gamma)

    shifted = jnp.roll(Z, shift, axis=-1)
    S_next, S_pihat = apply_circulant_layer(layer, to_fourier(shifted), weights=weights)
    out_shifted = from_fourier(S_next, (T,))
    np.testing.assert_allclose(out_shifted, jnp.roll(out, shift, axis=-1), atol=1e-5)
    np.testing.assert_allclose(S_pihat, pihat, atol=1e-5)


@st.composite
def labelled(draw, shapes):
    """Inputs and balanced labels in a drawn order (fixed class sizes per shape).

    ``num_classes`` is one more than the classes present half of the time, so
    an empty class is exercised as well.
    """
    shape = draw(st.sampled_from(shapes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    m, k = shape[0], shape[-1]
    y = rng.permutation(np.arange(m) % k)
    X = 2.0 * np.eye(k, int(np.prod(shape[1:-1])))[y].reshape(m, *shape[1:-1])
    X = X + rng.standard_normal(X.shape)
    extra = draw(st.booleans())
    return jnp.asarray(X, dtype), y, k + int(extra)


@settings(max_examples=6, deadline=None, database=None, derandomize=True)
@given(labelled(VECTOR_SHAPES + SIGNAL_SHAPES))
def test_construct_and_transform_agree(case):
    X, y, num_classes = case
    invariant = X.ndim == 3
    net, Z = construct(
        X, y, num_classes=num_classes, num_layers=2, eps_sq=0.5, invariant=invariant
    )
    assert Z.dtype == net.dtype == jnp.float32 and Z.shape == X.shape
    flat = np.asarray(Z).reshape(len(Z), -1)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(transform(net, X), Z, atol=1e-4)

    pihat = np.asarray(predict_proba(net, X))
    assert np.all(np.isfinite(pihat))
    np.testing.assert_allclose(pihat.sum(axis=1), 1.0, atol=1e-5)
    if num_classes > int(y.max()) + 1:
        assert np.all(pihat[:, -1] == 0)  # the empty class attracts nothing
    labels = np.asarray(predict(net, X))
    assert labels.min() >= 0 and labels.max() < num_classes


@PROPERTY
@given(
    st.sampled_from(VECTOR_SHAPES + SIGNAL_SHAPES),
    st.integers(0, 2**32 - 1),
    st.sampled_from((1e-30, 1e-10, 1.0, 1e10, 1e30)),
)
def test_normalize_is_scale_free(shape, seed, scale):
    X = np.random.default_rng(seed).standard_normal(shape[:-1]).astype(np.float32)
    X[0] = 0.0
    unit = np.asarray(normalize(X))
    scaled = np.asarray(normalize(X * np.float32(scale)))
    assert np.all(np.isfinite(scaled))
    np.testing.assert_allclose(scaled, unit, atol=1e-6)
    norms = np.linalg.norm(unit.reshape(len(unit), -1), axis=1)
    np.testing.assert_allclose(norms[1:], 1.0, atol=1e-6)
    assert norms[0] == 0
