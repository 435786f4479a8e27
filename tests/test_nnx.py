"""Fine-tuning with Flax NNX: gradients, exactness at rate 0, invariance, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from redunet_jax import (
    construct,
    load,
    predict,
    predict_proba,
    rate_reduction,
    save,
    shift_invariant_rate_reduction,
    transform,
)
from redunet_jax.nnx import (
    ReduNetModule,
    finetune,
    rate_reduction_loss,
    train_step,
)


def _blobs(m=36, d=4, k=3, seed=0):
    key_centers, key_noise = jax.random.split(jax.random.key(seed))
    centers = 2.0 * jax.random.normal(key_centers, (k, d))
    y = jnp.arange(m) % k
    X = centers[y] + 0.6 * jax.random.normal(key_noise, (m, d))
    return X, y


def _signals(m=24, C=2, T=8, k=2, seed=1):
    key_phase, key_noise = jax.random.split(jax.random.key(seed))
    y = jnp.arange(m) % k
    t = jnp.arange(T)
    phase = jax.random.uniform(key_phase, (m, 1, 1), maxval=2 * jnp.pi)
    channel = jnp.arange(C)[None, :, None]
    frequency = (1 + y)[:, None, None]
    X = jnp.cos(2 * jnp.pi * frequency * t / T + phase + channel)
    return X + 0.3 * jax.random.normal(key_noise, (m, C, T)), y


@pytest.fixture(scope="module")
def vector_case():
    X, y = _blobs()
    net, _ = construct(X, y, num_classes=3, num_layers=3, eps_sq=0.5)
    return net, X, y


@pytest.fixture(scope="module")
def invariant_case():
    X, y = _signals()
    net, _ = construct(X, y, num_classes=2, num_layers=3, eps_sq=0.5, invariant=True)
    return net, X, y


@jax.jit
def _loss_at(net, X, Pi, ce_weight):
    return rate_reduction_loss(ReduNetModule(net), X, Pi, ce_weight)[0]


@jax.jit
def _grads(net, X, Pi, ce_weight):
    grad_fn = nnx.grad(rate_reduction_loss, has_aux=True)
    return grad_fn(ReduNetModule(net), X, Pi, ce_weight)[0]


def test_module_matches_transform(vector_case, invariant_case):
    for net, X, _ in (vector_case, invariant_case):
        Z, pihat = ReduNetModule.from_network(net)(X)
        np.testing.assert_allclose(Z, transform(net, X), atol=1e-6)
        np.testing.assert_allclose(pihat, predict_proba(net, X), atol=1e-6)


def test_gradient_of_real_parameter_matches_finite_differences():
    with jax.enable_x64(True):
        X, y = _blobs(m=18, d=3, k=3)
        X = X.astype(jnp.float64)
        net, _ = construct(X, y, num_classes=3, num_layers=2, eps_sq=0.5, lam=5.0)
        Pi = jax.nn.one_hot(y, 3, dtype=jnp.float64)
        grad = _grads(net, X, Pi, 0.3)["E"][...]
        h = 1e-6
        for index in [(0, 0, 0), (0, 1, 2), (1, 2, 1)]:
            shift = jnp.zeros_like(net.layers.E).at[index].set(h)
            plus = net.layers._replace(E=net.layers.E + shift)
            minus = net.layers._replace(E=net.layers.E - shift)
            numeric = (
                _loss_at(_with_layers(net, plus), X, Pi, 0.3)
                - _loss_at(_with_layers(net, minus), X, Pi, 0.3)
            ) / (2 * h)
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-6, atol=1e-9)


def _with_layers(net, layers):
    return type(net)(
        layers=layers,
        eta=net.eta,
        lam=net.lam,
        eps_sq=net.eps_sq,
        num_classes=net.num_classes,
        input_shape=net.input_shape,
    )


def test_gradient_of_complex_parameter_matches_finite_differences():
    with jax.enable_x64(True):
        X, y = _signals(m=12, C=2, T=6)
        X = X.astype(jnp.float64)
        net, _ = construct(
            X, y, num_classes=2, num_layers=2, eps_sq=0.5, lam=5.0, invariant=True
        )
        Pi = jax.nn.one_hot(y, 2, dtype=jnp.float64)
        grad = _grads(net, X, Pi, 0.3)["E_hat"][...]
        # JAX's convention: grad = dL/dx - i dL/dy, so conj(grad) is the
        # steepest-ascent direction dL/dx + i dL/dy.
        ascent = jnp.conj(grad)
        E_hat = net.layers.E_hat
        h = 1e-6
        # Bins 1 and 2 are free; bin 0 must stay real (imaginary part inert).
        for index in [(0, 1, 0, 1), (1, 2, 1, 1), (0, 0, 1, 0)]:
            for direction, expected in ((1.0, ascent.real), (1j, ascent.imag)):
                shift = jnp.zeros_like(E_hat).at[index].set(direction * h)
                plus = _with_layers(net, net.layers._replace(E_hat=E_hat + shift))
                minus = _with_layers(net, net.layers._replace(E_hat=E_hat - shift))
                numeric = (_loss_at(plus, X, Pi, 0.3) - _loss_at(minus, X, Pi, 0.3)) / (
                    2 * h
                )
                np.testing.assert_allclose(
                    expected[index], numeric, rtol=1e-6, atol=1e-9
                )
        assert float(jnp.max(jnp.abs(ascent[:, 0].imag))) < 1e-12


def test_zero_learning_rate_reproduces_transform(vector_case, invariant_case):
    for (net, X, y), optimizer in ((vector_case, "sgd"), (invariant_case, "adam")):
        tuned, history = finetune(
            net, X, y, batch_size=10, learning_rate=0.0, optimizer=optimizer
        )
        assert len(history["loss"]) == X.shape[0] // 10  # partial batch dropped
        np.testing.assert_array_equal(transform(tuned, X), transform(net, X))


def test_finetune_increases_vector_rate_reduction(vector_case):
    net, X, y = vector_case
    Pi = jax.nn.one_hot(y, 3)
    steps = []
    tuned, history = finetune(
        net,
        X,
        y,
        epochs=8,
        batch_size=X.shape[0],
        learning_rate=1e-2,
        callback=lambda step, loss, dr: steps.append((step, loss, dr)),
    )
    assert [s[0] for s in steps] == list(range(8))
    assert history["loss"] == [s[1] for s in steps]
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tuned.layers))
    before = rate_reduction(transform(net, X), Pi, eps_sq=net.eps_sq).delta_r
    after = rate_reduction(transform(tuned, X), Pi, eps_sq=net.eps_sq).delta_r
    assert float(after) > float(before) + 1e-3
    assert history["delta_r"][-1] > history["delta_r"][0]
    np.testing.assert_allclose(history["delta_r"][0], before, rtol=1e-5)


def test_finetune_invariant_stays_equivariant_and_round_trips(invariant_case, tmp_path):
    net, X, y = invariant_case
    Pi = jax.nn.one_hot(y, 2)
    tuned, history = finetune(
        net, X, y, epochs=8, batch_size=X.shape[0], learning_rate=1e-2, ce_weight=0.1
    )
    assert tuned.invariant and tuned.layers.E_hat.shape == net.layers.E_hat.shape
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tuned.layers))
    assert float(jnp.max(jnp.abs(tuned.layers.E_hat - net.layers.E_hat))) > 1e-4
    # Bins 0 and T/2 keep real blocks: the operator still maps real signals.
    for bin_index in (0, -1):
        assert float(jnp.max(jnp.abs(tuned.layers.E_hat[:, bin_index].imag))) == 0.0
        assert float(jnp.max(jnp.abs(tuned.layers.C_hat[:, :, bin_index].imag))) == 0.0

    before = shift_invariant_rate_reduction(transform(net, X), Pi, eps_sq=0.5)
    after = shift_invariant_rate_reduction(transform(tuned, X), Pi, eps_sq=0.5)
    assert float(after.delta_r) > float(before.delta_r) + 1e-3
    assert history["delta_r"][-1] > history["delta_r"][0]

    Z = transform(tuned, X)
    for shift in (1, 3):
        rolled = transform(tuned, jnp.roll(X, shift, axis=-1))
        np.testing.assert_allclose(rolled, jnp.roll(Z, shift, axis=-1), atol=1e-5)

    path = tmp_path / "tuned.npz"
    save(path, tuned)
    loaded = load(path)
    np.testing.assert_array_equal(transform(loaded, X), Z)
    np.testing.assert_array_equal(predict(loaded, X), predict(tuned, X))
    np.testing.assert_allclose(ReduNetModule(loaded)(X)[0], Z, atol=1e-6)


def test_sgd_step_on_complex_parameters_descends(invariant_case):
    net, X, y = invariant_case
    Pi = jax.nn.one_hot(y, 2)
    model = ReduNetModule(net)
    grads = _grads(net, X, Pi, 0.0)
    # A step whose largest entry is 1e-3, so that the decrease of the loss is
    # well above float32 rounding (a fixed small rate gave changes of 1e-8).
    lr = 1e-3 / max(float(jnp.max(jnp.abs(grads[n][...]))) for n in ("E_hat", "C_hat"))
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)

    loss, _ = train_step(model, optimizer, X, Pi, jnp.float32(0.0))
    np.testing.assert_allclose(loss, _loss_at(net, X, Pi, 0.0), rtol=1e-5)
    new_loss = _loss_at(model.to_network(), X, Pi, 0.0)
    assert float(new_loss) < float(_loss_at(net, X, Pi, 0.0)) - 1e-6

    # The update is -lr * conj(grad): the descent direction in (x, y).
    step = model.E_hat[...] - net.layers.E_hat
    np.testing.assert_allclose(
        step, -lr * jnp.conj(grads["E_hat"][...]), atol=1e-3 * 1e-5, rtol=1e-5
    )

    # Moving only the imaginary parts: descent along -dL/dy lowers the loss,
    # the unconjugated gradient's imaginary part (+dL/dy) raises it.
    # A step whose largest entry is 1e-3, so that the change of the loss is
    # well above float32 rounding.
    largest = max(
        float(jnp.max(jnp.abs(grads[n][...].imag))) for n in ("E_hat", "C_hat")
    )
    t = 1e-3 / largest

    def move_imaginary(sign):
        E_hat, C_hat = (
            getattr(net.layers, name) - sign * t * 1j * -grads[name][...].imag
            for name in ("E_hat", "C_hat")
        )
        moved = _with_layers(net, net.layers._replace(E_hat=E_hat, C_hat=C_hat))
        return _loss_at(moved, X, Pi, 0.0)

    down, up = float(move_imaginary(1.0)), float(move_imaginary(-1.0))
    assert down < float(loss) < up, (down, float(loss), up)


def test_batch_missing_a_class_and_single_sample(vector_case, invariant_case):
    net, X, y = vector_case
    only_first = np.flatnonzero(np.asarray(y) == 0)
    Xb, Pib = X[only_first], jax.nn.one_hot(y[only_first], 3)
    loss, delta_r = rate_reduction_loss(ReduNetModule(net), Xb, Pib, 1.0)
    assert np.isfinite(float(loss))
    expected = rate_reduction(transform(net, Xb), Pib, eps_sq=net.eps_sq).delta_r
    np.testing.assert_allclose(delta_r, expected, rtol=1e-5, atol=1e-6)

    for net, X, y in (vector_case, invariant_case):
        tuned, history = finetune(
            net, X[:3], y[:3], batch_size=1, learning_rate=1e-3, ce_weight=1.0
        )
        assert len(history["loss"]) == 3
        assert np.isfinite(history["loss"]).all()
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tuned.layers))


def test_large_batch_is_clipped(vector_case):
    net, X, y = vector_case
    _, history = finetune(net, X, y, batch_size=10_000, learning_rate=0.0)
    assert len(history["loss"]) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"epochs": 1.5}, TypeError, "epochs"),
        ({"learning_rate": -1e-3}, ValueError, "learning_rate"),
        ({"ce_weight": -1.0}, ValueError, "ce_weight"),
        ({"callback": 3}, TypeError, "callback"),
    ],
)
def test_bad_arguments_raise(vector_case, kwargs, error, match):
    net, X, y = vector_case
    with pytest.raises(error, match=match):
        finetune(net, X, y, **kwargs)


def test_bad_inputs_raise(vector_case):
    net, X, y = vector_case
    with pytest.raises(ValueError, match="labels"):
        finetune(net, X, y + 3)
    with pytest.raises(ValueError, match="shape"):
        finetune(net, X[:, :2], y)
    with pytest.raises(TypeError, match="ReduNet"):
        finetune("net", X, y)
