"""Shift-invariant networks end to end: construction, transform, io, data sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redunet_jax import (
    ReduNetClassifier,
    construct,
    lift,
    lifting_filters,
    load,
    load_dataset,
    predict,
    predict_proba,
    rates_per_layer,
    save,
    shift_invariant_rate_reduction,
    transform,
)
from redunet_jax._concurrent import compiled_sweeps


def signals(m_per_class=12, C=3, shape=(10,), k=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), m_per_class)
    templates = rng.standard_normal((k, C, *shape))
    X = templates[y] + 0.5 * rng.standard_normal((len(y), C, *shape))
    return X.astype(np.float32), y


@pytest.fixture(scope="module", params=[(10,), (5, 6)], ids=["1d", "2d"])
def built(request):
    X, y = signals(shape=request.param)
    net, Z = construct(X, y, num_classes=2, num_layers=4, invariant=True, eps_sq=0.5)
    return net, X, y, Z


def test_network_layout(built):
    net, X, y, Z = built
    F = 6 if X.ndim == 3 else 5 * 4
    assert net.invariant and net.signal_shape == X.shape[2:]
    assert net.layers.E_hat.shape == (4, F, 3, 3)
    assert net.layers.C_hat.shape == (4, 2, F, 3, 3)
    assert jnp.iscomplexobj(net.layers.E_hat)
    assert Z.shape == X.shape and Z.dtype == jnp.float32
    np.testing.assert_allclose(
        jnp.sum(Z**2, axis=tuple(range(1, Z.ndim))), 1.0, rtol=1e-5
    )


def test_transform_reproduces_construction(built):
    net, X, _, Z = built
    np.testing.assert_allclose(transform(net, X), Z, atol=1e-5)
    np.testing.assert_allclose(jax.jit(transform)(net, X), Z, atol=1e-5)


@pytest.mark.parametrize("shift", [1, 3, -4, 7])
def test_outputs_are_shift_equivariant_and_predictions_invariant(built, shift):
    net, X, _, Z = built
    axes = tuple(range(2, X.ndim))
    shifts = (shift,) * len(axes)
    rolled = np.roll(X, shifts, axis=axes)
    np.testing.assert_allclose(
        transform(net, rolled), np.roll(Z, shifts, axis=axes), atol=1e-5
    )
    np.testing.assert_array_equal(predict(net, rolled), predict(net, X))
    np.testing.assert_allclose(
        predict_proba(net, rolled), predict_proba(net, X), atol=1e-5
    )


def test_callback_rates_equal_signal_rates(built):
    net, X, y, Z = built
    seen = []
    construct(
        X,
        y,
        num_classes=2,
        num_layers=4,
        invariant=True,
        eps_sq=0.5,
        callback=lambda i, r: seen.append(r),
    )
    last = shift_invariant_rate_reduction(Z, np.eye(2)[y], eps_sq=0.5)
    np.testing.assert_allclose(float(seen[-1].delta_r), float(last.delta_r), rtol=1e-4)
    per_layer = rates_per_layer(net, X, y)
    np.testing.assert_allclose(
        per_layer["true"].delta_r, [float(r.delta_r) for r in seen], rtol=1e-4
    )


def test_save_and_load_round_trip(built, tmp_path):
    net, X, _, _ = built
    save(tmp_path / "net.npz", net)
    loaded = load(tmp_path / "net.npz")
    assert loaded.invariant and loaded.input_shape == net.input_shape
    np.testing.assert_array_equal(transform(loaded, X), transform(net, X))


def test_layer_step_compiles_once_for_many_layers():
    X, y = signals(m_per_class=7, C=2, shape=(9,), seed=3)  # a shape no other test uses
    before = compiled_sweeps()
    construct(X, y, num_classes=2, num_layers=50, invariant=True)
    assert compiled_sweeps() == before + 1


def test_lifted_pipeline_is_shift_invariant():
    X, y = signals(C=1, shape=(16,), seed=1)
    filters = lifting_filters(0, in_channels=1, out_channels=6, kernel_size=5)
    net, _ = construct(lift(X, filters), y, num_classes=2, num_layers=3, invariant=True)
    rolled = lift(np.roll(X, 5, axis=-1), filters)
    np.testing.assert_array_equal(predict(net, rolled), predict(net, lift(X, filters)))


def test_classifier_with_invariant_layers():
    X, y = signals(shape=(8,))
    clf = ReduNetClassifier(num_layers=3, invariant=True, readout="pihat").fit(X, y)
    assert clf.transform(X).shape == X.shape
    np.testing.assert_array_equal(clf.predict(np.roll(X, 3, axis=-1)), clf.predict(X))


def test_sinusoids_reach_high_accuracy_with_rising_rates():
    from redunet_jax._experiment import defaults_for, prepare

    raw = load_dataset("sinusoids")
    config = defaults_for("sinusoids")
    assert (
        raw.X_train.shape[1:] == (1, 150) and len(raw.y_train) + len(raw.y_test) == 800
    )
    X_train = prepare(raw.X_train, config, seed=0)
    X_test = prepare(raw.X_test, config, seed=0)
    history = []
    net, _ = construct(
        X_train,
        raw.y_train,
        num_classes=2,
        num_layers=config["layers"],
        eps_sq=config["eps_sq"],
        invariant=True,
        callback=lambda i, r: history.append(float(r.delta_r)),
    )
    assert np.all(np.diff(history) > 0)
    assert np.mean(np.asarray(predict(net, X_test)) == raw.y_test) >= 0.98


BAD = [
    (np.ones((4, 8)), ValueError, "X must have 3 or 4 dimensions"),
    (np.ones((4, 2, 1)), ValueError, "length >= 2"),
    (np.ones((4, 2, 8)) * 1j, TypeError, "real"),
    (np.full((4, 2, 8), np.nan), ValueError, "NaN"),
]


@pytest.mark.parametrize("X, error, message", BAD)
def test_bad_signals(X, error, message):
    with pytest.raises(error, match=message):
        construct(X, [0, 1, 0, 1], num_classes=2, num_layers=1, invariant=True)


def test_transform_rejects_mismatched_signal_shape(built):
    net, X, _, _ = built
    wrong = np.ones((2, X.shape[1], *(s + 1 for s in X.shape[2:])), np.float32)
    with pytest.raises(ValueError, match="X samples must have shape"):
        transform(net, wrong)
    with pytest.raises(ValueError, match="X must have"):
        transform(net, X[:, 0])
