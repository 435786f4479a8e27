"""Numerics that never go NaN: dtype matrix against float64, guards, debug_nans.

Low-precision inputs are compared with the same input values evaluated in
float64, with the per-dtype tolerances documented in the README ("Numerical
precision") and in ``benchmarks/numerics_matrix.py``.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import blobs

from redunet_jax import (
    apply_circulant_layer,
    apply_vector_layer,
    bin_weights,
    build_circulant_layer,
    build_vector_layer,
    construct,
    normalize,
    predict_proba,
    rate_reduction,
    rates_per_layer,
    shift_invariant_rate_reduction,
    to_fourier,
    transform,
)
from redunet_jax.nnx import ReduNetModule, rate_reduction_loss

DTYPES = ("bfloat16", "float16", "float32")
TOLERANCES = {
    "rates": {"bfloat16": 5e-5, "float16": 5e-5, "float32": 5e-5},
    "normalize": {"bfloat16": 4e-3, "float16": 5e-4, "float32": 1e-6},
    "construct": {"bfloat16": 1e-4, "float16": 1e-4, "float32": 1e-4},
    "grad_rates": {"bfloat16": 4e-3, "float16": 5e-4, "float32": 1e-4},
    "grad_finetune": {"bfloat16": 1e-3, "float16": 1e-3, "float32": 1e-3},
}
K, M, EPS_SQ = 3, 24, 0.1
D = 4  # vector features
C, T = 3, 6  # signals; C plays the part of d for the class sizes
CASES = ("m_j=0", "m_j=1", "m_j=d-1", "m_j=d", "m_j=d+1", "duplicates", "zeros")
KINDS = ("vector", "invariant")


def make_case(kind, case, seed=0):
    """Float64 inputs of M samples and labels; every case has the same shape."""
    rng = np.random.default_rng(seed)
    d = D if kind == "vector" else C
    sizes = [M // K] * K
    if case.startswith("m_j="):
        last = {"0": 0, "1": 1, "d-1": d - 1, "d": d, "d+1": d + 1}[case[4:]]
        rest = M - last
        sizes = [rest - rest // 2, rest // 2, last]
    distinct = M // 2 if case == "duplicates" else M
    sizes = [s * distinct // M for s in sizes]
    y = np.concatenate([np.full(s, j) for j, s in enumerate(sizes)])
    shape = (D,) if kind == "vector" else (C, T)
    centres = rng.standard_normal((K, *shape))
    if kind == "vector":
        X = centres[y] + 0.3 * rng.standard_normal((len(y), *shape))
    else:
        shifts = rng.integers(0, T, len(y))
        X = np.stack(
            [np.roll(centres[c], s, -1) for c, s in zip(y, shifts, strict=True)]
        )
        X = X + 0.3 * rng.standard_normal(X.shape)
    if case == "duplicates":
        X, y = np.concatenate([X, X]), np.concatenate([y, y])
    if case == "zeros":
        X[[0, 9, 17]] = 0.0  # one all-zero sample in each class
    assert X.shape[0] == M
    return X, y


def scaled_error(x, ref):
    x = np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)
    ref = np.asarray(ref, x.dtype)
    return float(np.max(np.abs(x - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def assert_close(x, ref, quantity, dtype):
    assert np.all(np.isfinite(np.asarray(x, np.complex128))), quantity
    error = scaled_error(x, ref)
    assert error <= TOLERANCES[quantity][dtype], (quantity, dtype, error)


def inputs(kind, case, dtype):
    """Low-precision inputs, the same values in float64, labels, memberships."""
    X64, y = make_case(kind, case)
    X = jnp.asarray(X64, dtype)
    same = jnp.asarray(np.asarray(X, np.float64))
    return X, same, y


def rates_fn(kind):
    return shift_invariant_rate_reduction if kind == "invariant" else rate_reduction


def one_hot(y, dtype):
    return jax.nn.one_hot(jnp.asarray(y), K, dtype=dtype)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_rates_and_their_gradients_agree_with_float64(x64, kind, dtype, case):
    X, same, y = inputs(kind, case, dtype)
    rates = rates_fn(kind)
    low = rates(X, one_hot(y, jnp.float32), eps_sq=EPS_SQ)
    ref = rates(same, one_hot(y, jnp.float64), eps_sq=EPS_SQ)
    assert low.r.dtype == jnp.float32 and ref.r.dtype == jnp.float64
    assert_close(jnp.stack(list(low)), jnp.stack(list(ref)), "rates", dtype)
    if case != "m_j=0":  # an empty class: delta_r >= 0 still, tested below
        assert float(low.delta_r) >= -1e-5

    def delta_r(Z, Pi):
        return rates(Z, Pi, eps_sq=EPS_SQ).delta_r

    grad = jax.grad(delta_r)(X, one_hot(y, jnp.float32))
    grad_ref = jax.grad(delta_r)(same, one_hot(y, jnp.float64))
    assert grad.dtype == X.dtype
    assert_close(grad, grad_ref, "grad_rates", dtype)


def _loss(params, graphdef, rest, X, Pi):
    return rate_reduction_loss(nnx.merge(graphdef, params, rest), X, Pi, 0.5)[0]


_grad_of_loss = jax.jit(
    lambda graphdef, params, rest, X, Pi: jax.grad(_loss)(
        params, graphdef, rest, X, Pi
    ),
    static_argnums=0,
)


def finetune_gradient(net, X, Pi):
    """Gradient of the fine-tuning loss (with cross-entropy) wrt the operators."""
    graphdef, params, rest = nnx.split(ReduNetModule(net), nnx.Param, ...)
    return jax.tree.leaves(_grad_of_loss(graphdef, params, rest, X, Pi))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_construction_and_finetuning_agree_with_float64(x64, kind, dtype, case):
    X, same, y = inputs(kind, case, dtype)
    invariant = kind == "invariant"
    settings = dict(num_classes=K, num_layers=2, eps_sq=EPS_SQ, invariant=invariant)
    net, Z = construct(X, y, **settings)
    net64, Z64 = construct(same, y, **settings)
    assert net.dtype == Z.dtype == jnp.float32
    assert net64.dtype == Z64.dtype == jnp.float64
    assert_close(Z, Z64, "construct", dtype)
    layers, layers64 = jax.tree.leaves(net.layers), jax.tree.leaves(net64.layers)
    for got, want in zip(layers, layers64, strict=True):
        assert_close(got, want, "construct", dtype)

    assert_close(transform(net, X), Z64, "construct", dtype)
    pihat = predict_proba(net, X)
    assert np.all(np.isfinite(pihat))
    np.testing.assert_allclose(np.sum(pihat, axis=1), 1.0, atol=1e-5)
    per_layer = rates_per_layer(net, X, y)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(per_layer))
    if case == "zeros":  # all-zero samples stay exactly zero
        assert np.all(np.asarray(Z)[[0, 9, 17]] == 0)

    grads = finetune_gradient(net, X, one_hot(y, jnp.float32))
    grads64 = finetune_gradient(net64, same, one_hot(y, jnp.float64))
    for got, want in zip(grads, grads64, strict=True):
        assert_close(got, want, "grad_finetune", dtype)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_norms(x64, dtype, scale):
    X64, y = make_case("vector", "m_j=d")
    X64 = X64 * scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float16 overflow on cast
        X = jnp.asarray(X64, dtype)
    Pi = one_hot(y, jnp.float32)
    if not np.all(np.isfinite(np.asarray(X, np.float64))):
        # 1e30 is beyond float16 (largest value 65504): rejected by name.
        with pytest.raises(ValueError, match="X contains .* NaN or infinite"):
            construct(X, y, num_classes=K, num_layers=1)
        return
    same = jnp.asarray(np.asarray(X, np.float64))
    assert_close(normalize(X), normalize(same), "normalize", dtype)
    if scale > 1:
        # The Gram matrix of such features holds values near 1e60.
        with pytest.raises(ValueError, match="too large"):
            rate_reduction(X, Pi, eps_sq=EPS_SQ)
    else:
        low = rate_reduction(X, Pi, eps_sq=EPS_SQ)
        assert np.all(np.isfinite(jnp.stack(list(low))))
    if dtype == "float16" and scale < 1:
        # 1e-30 underflows to zero in float16: every sample is zero.
        with pytest.raises(ValueError, match="all 24 samples are zero"):
            construct(X, y, num_classes=K, num_layers=1)
        return
    _, Z = construct(X, y, num_classes=K, num_layers=2)
    _, Z64 = construct(same, y, num_classes=K, num_layers=2)
    assert_close(Z, Z64, "construct", dtype)


# Collapse and factorization guards.


def test_collapse_during_construction_names_the_layer_and_class():
    X, y = blobs(9, 7, 3, seed=2)  # class 0 is tight: it collapses
    message = (
        r"layer \d+: all 9 samples of class 0 are identical \(features collapsed\)"
    )
    with pytest.raises(ValueError, match=message) as info:
        construct(X, y, num_classes=3, num_layers=30)
    layer = int(re.search(r"layer (\d+)", str(info.value)).group(1))
    assert 5 <= layer < 30
    assert "on_degenerate='warn'" in str(info.value)

    with pytest.warns(RuntimeWarning, match=message) as record:
        net, Z = construct(X, y, num_classes=3, num_layers=30, on_degenerate="warn")
    collapse = [w for w in record if "collapsed" in str(w.message)]
    assert len(collapse) == 1  # once per class, not once per layer
    assert net.num_layers == 30 and np.all(np.isfinite(Z))
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        construct(X, y, num_classes=3, num_layers=30, on_degenerate="ignore")


@pytest.mark.parametrize("invariant", [False, True])
def test_collapsed_inputs(invariant):
    X, y = make_case("invariant" if invariant else "vector", "m_j=d+1")
    identical = X.copy()
    identical[y == 1] = 2.5 * X[y == 1][0]  # positive multiples: identical once scaled
    n = int(np.sum(y == 1))
    with pytest.raises(
        ValueError, match=f"input X: all {n} samples of class 1 are identical"
    ):
        construct(identical, y, num_classes=K, num_layers=1, invariant=invariant)

    zeros = X.copy()
    zeros[y == 2] = 0.0
    with pytest.raises(ValueError, match="all .* samples of class 2 are zero"):
        construct(zeros, y, num_classes=K, num_layers=1, invariant=invariant)

    with pytest.raises(ValueError, match=f"input X: all {M} samples are identical"):
        construct(np.ones_like(X), y, num_classes=K, num_layers=1, invariant=invariant)

    # Circular shifts of one signal are distinct samples: no collapse.
    if invariant:
        shifted = X.copy()
        shifted[y == 1] = [np.roll(X[y == 1][0], s, -1) for s in range(n)]
        construct(shifted, y, num_classes=K, num_layers=1, invariant=True)


def test_single_zero_sample_and_single_member_are_not_collapse():
    X, y = make_case("vector", "m_j=1")
    X[0] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net, Z = construct(X, y, num_classes=K, num_layers=2)
    assert np.all(np.asarray(Z)[0] == 0) and np.all(np.isfinite(Z))


@pytest.mark.parametrize("invariant", [False, True])
def test_failed_factorization_raises_even_when_warning(invariant):
    rng = np.random.default_rng(0)
    shape = (6, 4) if invariant else (8,)
    X = rng.standard_normal((20, *shape))
    y = np.r_[np.zeros(18, int), 1, 1]  # class 1: 2 samples, rank 2 < 6 or 8
    message = (
        r"layer 0: the Cholesky factorization of I \+ alpha_j Sigma_j of class 1 .*"
        r"failed .*compute_dtype=float64"
    )
    for mode in ("raise", "warn"):
        with pytest.raises(ValueError, match=message):
            construct(
                X,
                y,
                num_classes=2,
                num_layers=1,
                eps_sq=1e-8,
                invariant=invariant,
                on_degenerate=mode,
            )


def test_float64_factors_what_float32_cannot(x64):
    X = np.random.default_rng(0).standard_normal((20, 8))
    y = np.r_[np.zeros(18, int), 1, 1]
    net, Z = construct(
        X, y, num_classes=2, num_layers=1, eps_sq=1e-8, compute_dtype=jnp.float64
    )
    assert net.dtype == jnp.float64 and np.all(np.isfinite(Z))


def test_on_degenerate_is_checked():
    X, y = make_case("vector", "m_j=d")
    with pytest.raises(ValueError, match="on_degenerate must be one of"):
        construct(X, y, num_classes=K, num_layers=1, on_degenerate="skip")


# The compute dtype.


def test_compute_dtype_errors():
    X, y = make_case("vector", "m_j=d")
    Pi = one_hot(y, jnp.float32)
    with pytest.raises(ValueError, match="jax_enable_x64"):
        construct(X, y, num_classes=K, num_layers=1, compute_dtype=jnp.float64)
    with pytest.raises(ValueError, match="jax_enable_x64"):
        rate_reduction(X, Pi, eps_sq=EPS_SQ, compute_dtype="float64")
    for narrow in (jnp.bfloat16, jnp.float16, np.int32):
        with pytest.raises(ValueError, match="compute_dtype must be float32 or"):
            rate_reduction(X, Pi, eps_sq=EPS_SQ, compute_dtype=narrow)
    with pytest.raises(TypeError, match="compute_dtype"):
        construct(X, y, num_classes=K, num_layers=1, compute_dtype="wide")


def test_compute_dtype_defaults_and_choices(x64):
    X, y = make_case("invariant", "m_j=d")
    Pi = one_hot(y, jnp.float64)
    assert shift_invariant_rate_reduction(X, Pi, eps_sq=EPS_SQ).r.dtype == jnp.float64
    for narrow in ("bfloat16", "float16", "float32"):
        rates = shift_invariant_rate_reduction(X.astype(narrow), Pi, eps_sq=EPS_SQ)
        assert rates.r.dtype == jnp.float32
    wide = shift_invariant_rate_reduction(
        X.astype(np.float32), Pi, eps_sq=EPS_SQ, compute_dtype=jnp.float64
    )
    assert wide.r.dtype == jnp.float64
    with pytest.raises(ValueError, match="too large for compute_dtype=float32"):
        shift_invariant_rate_reduction(
            X * 1e200, Pi, eps_sq=EPS_SQ, compute_dtype=jnp.float32
        )

    X, y = make_case("vector", "m_j=d")
    net, Z = construct(X, y, num_classes=K, num_layers=2, compute_dtype=jnp.float32)
    net64, Z64 = construct(X, y, num_classes=K, num_layers=2)
    assert net.dtype == Z.dtype == jnp.float32 and net64.dtype == jnp.float64
    assert_close(Z, Z64, "construct", "float32")
    # A network computes in its own dtype, whatever the dtype of its input.
    assert transform(net, X).dtype == jnp.float32
    assert transform(net64, X.astype(np.float32)).dtype == jnp.float64


@pytest.mark.parametrize("kind", ["vector", "invariant"])
def test_transform_normalizes_narrow_inputs_in_the_network_dtype(x64, kind):
    X, y = make_case(kind, "m_j=d")
    X32 = X.astype(np.float32)
    net, Z = construct(
        X32,
        y,
        num_classes=K,
        num_layers=2,
        invariant=kind == "invariant",
        compute_dtype=jnp.float64,
    )
    # The same widening as construct: no float32 rounding of the normalization.
    np.testing.assert_allclose(transform(net, X32), Z, rtol=0, atol=1e-12)


# jax_debug_nans over the public functions on degenerate data.


@pytest.fixture
def debug_nans():
    with jax.debug_nans(True):
        yield


@pytest.mark.parametrize("kind", KINDS)
def test_no_nan_anywhere_under_debug_nans(debug_nans, kind):
    X, y = make_case(kind, "m_j=0")  # an empty class
    X[[0, 5]] = 0.0  # two all-zero samples
    X[7] = X[6]  # a duplicate
    X = jnp.asarray(X, jnp.float32)
    Pi = one_hot(y, jnp.float32)
    invariant = kind == "invariant"

    rates = rates_fn(kind)(X, Pi, eps_sq=EPS_SQ)
    grad = jax.grad(lambda Z: rates_fn(kind)(Z, Pi, eps_sq=EPS_SQ).delta_r)(X)
    if invariant:
        Z_hat, weights = to_fourier(normalize(X)), bin_weights((T,))
        layer = build_circulant_layer(Z_hat, Pi, eps_sq=EPS_SQ, num_positions=T)
        moved, pihat = apply_circulant_layer(layer, Z_hat, weights=weights)
    else:
        layer = build_vector_layer(normalize(X), Pi, eps_sq=EPS_SQ)
        moved, pihat = apply_vector_layer(layer, normalize(X))
    net, Z = construct(X, y, num_classes=K, num_layers=2, invariant=invariant)
    outputs = [
        rates,
        grad,
        layer,
        moved,
        pihat,
        Z,
        transform(net, X),
        predict_proba(net, X),
        rates_per_layer(net, X, y),
        finetune_gradient(net, X, Pi),
    ]
    assert all(
        np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(outputs)
    )
    assert jax.config.jax_debug_nans
