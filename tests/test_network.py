import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from reference import blobs

from redunet_jax import (
    construct,
    load_dataset,
    nearest_subspace,
    normalize,
    predict,
    rates_per_layer,
    transform,
)
from redunet_jax._network import _construction_step, _forward


def test_thirty_layers_match_float64_reference(x64):
    X, y = blobs(15, 6, 3, seed=0, spread=0.8)
    net, Z = construct(
        jnp.asarray(X), y, num_classes=3, num_layers=30, eta=0.5, eps_sq=0.5, lam=500.0
    )
    layers, Z_ref = ref.construct(X, y, 3, 30, 0.5, 0.5, 500.0)
    assert Z.dtype == jnp.float64
    np.testing.assert_allclose(Z, Z_ref, atol=1e-5)
    np.testing.assert_allclose(net.layers.E[-1], layers[-1][0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(net.layers.C[-1], layers[-1][1], rtol=1e-5, atol=1e-8)


def test_transform_of_training_data_reproduces_construction():
    X, y = blobs(20, 5, 3, seed=1)
    net, Z = construct(X, y, num_classes=3, num_layers=8)
    np.testing.assert_allclose(transform(net, X), Z, atol=1e-5)
    assert net.num_layers == 8
    assert net.layers.E.shape == (8, 5, 5)
    assert net.layers.C.shape == (8, 3, 5, 5)


def test_two_hundred_layers_compile_the_step_once():
    X, y = blobs(9, 7, 3, seed=2)
    _construction_step.clear_cache()  # other tests may have compiled this shape
    before = _construction_step._cache_size()
    calls = []
    # Class 0 of this tight data collapses onto one point after about 10
    # layers; only the compilation count matters here.
    net, _ = construct(
        X,
        y,
        num_classes=3,
        num_layers=200,
        on_degenerate="ignore",
        callback=lambda i, r: calls.append(i),
    )
    assert _construction_step._cache_size() == before + 1
    assert calls == list(range(200))
    transform(net, X)
    compiled = _forward._cache_size()
    transform(net, X + 1.0)
    assert _forward._cache_size() == compiled


def test_callback_receives_rates_that_rise():
    X, y = blobs(30, 4, 2, seed=3, spread=1.0)
    seen = []
    construct(X, y, num_classes=2, num_layers=10, callback=lambda i, r: seen.append(r))
    delta = np.array([float(r.delta_r) for r in seen])
    assert np.all(np.isfinite(delta))
    assert delta[-1] > delta[0]
    for r in seen:
        np.testing.assert_allclose(float(r.delta_r), float(r.r - r.rc), rtol=1e-5)


def test_transform_and_predict_are_jittable_and_vmappable():
    X, y = blobs(10, 4, 2, seed=4)
    net, Z = construct(X, y, num_classes=2, num_layers=3)
    np.testing.assert_allclose(jax.jit(transform)(net, X), Z, atol=1e-5)
    np.testing.assert_array_equal(jax.jit(predict)(net, X), predict(net, X))
    per_sample = jax.vmap(lambda x: transform(net, x[None])[0])(jnp.asarray(X))
    np.testing.assert_allclose(per_sample, Z, atol=1e-5)


def test_grad_through_transform_wrt_operators():
    X, y = blobs(10, 4, 2, seed=5)
    net, _ = construct(X, y, num_classes=2, num_layers=3)
    grads = jax.grad(lambda n: jnp.sum(transform(n, X)[:, 0]))(net)
    assert grads.layers.E.shape == net.layers.E.shape
    assert np.all(np.isfinite(grads.layers.E))


def test_use_labels_variant_differs_and_separates():
    X, y = blobs(20, 4, 2, seed=6, spread=1.5)
    _, Z_est = construct(X, y, num_classes=2, num_layers=5)
    _, Z_lab = construct(X, y, num_classes=2, num_layers=5, use_labels=True)
    assert not np.allclose(Z_est, Z_lab)


def test_rates_per_layer_matches_callback():
    X, y = blobs(12, 4, 3, seed=7)
    seen = []
    net, _ = construct(
        X, y, num_classes=3, num_layers=4, callback=lambda i, r: seen.append(r)
    )
    rates = rates_per_layer(net, X, y)
    np.testing.assert_allclose(
        rates["true"].delta_r, [float(r.delta_r) for r in seen], rtol=1e-5
    )
    assert rates["estimated"].delta_r.shape == (4,)


@pytest.mark.parametrize(
    "name, plateau", [("gaussian2d", 0.8756), ("gaussian3d", 1.8798)]
)
def test_gaussian_mixtures_reach_the_closed_form_plateau(name, plateau):
    data = load_dataset(name)
    history = []
    net, Z = construct(
        data.X_train,
        data.y_train,
        num_classes=data.num_classes,
        num_layers=1000,
        eta=0.5,
        eps_sq=0.1,
        lam=500.0,
        callback=lambda i, r: history.append(float(r.delta_r)),
    )
    history = np.array(history)
    assert history[-1] > history[0]
    assert np.all(np.diff(history) > -1e-4)  # rises, up to float32 rounding
    assert abs(history[-1] - plateau) / plateau < 0.01
    test_rates = rates_per_layer(net, data.X_test, data.y_test)["true"].delta_r
    assert abs(float(test_rates[-1]) - plateau) / plateau < 0.02
    assert np.mean(np.asarray(predict(net, data.X_test)) == data.y_test) == 1.0


def test_digits_nearest_subspace_beats_inputs():
    data = load_dataset("digits", seed=0, test_size=0.3)
    net, Z = construct(
        data.X_train, data.y_train, num_classes=10, num_layers=30, eps_sq=0.5
    )
    Z_test = transform(net, data.X_test)
    guess = nearest_subspace(Z, data.y_train, Z_test, num_classes=10, n_comp=10)
    accuracy = np.mean(guess == data.y_test)
    baseline = np.mean(
        nearest_subspace(
            normalize(data.X_train),
            data.y_train,
            normalize(data.X_test),
            num_classes=10,
        )
        == data.y_test
    )
    assert accuracy >= 0.97
    assert accuracy > baseline


BAD = [
    (dict(X=np.ones(5)), ValueError, "X must have 2 dimensions"),
    (dict(labels=np.zeros(4, int)), ValueError, "labels has 4 entries"),
    (
        dict(labels=np.array([0, 1, 2, 0, 1])),
        ValueError,
        r"labels must lie in \[0, num_classes=2\)",
    ),
    (dict(labels=np.array([0, -1, 1, 0, 1])), ValueError, "labels must lie"),
    (dict(labels=np.array([0.5, 1, 1, 0, 1])), TypeError, "labels must hold integer"),
    (dict(labels=np.array(["a"] * 5)), TypeError, "labels must hold integer"),
    (dict(X=np.full((5, 2), np.inf)), ValueError, "X contains"),
    (dict(eps_sq=0.0), ValueError, "eps_sq must be > 0"),
    (dict(eps_sq=-1.0), ValueError, "eps_sq must be > 0"),
    (dict(num_layers=0), ValueError, "num_layers must be >= 1"),
    (dict(num_layers=2.5), TypeError, "num_layers must be an integer"),
    (dict(num_classes=1), ValueError, "num_classes must be >= 2"),
    (dict(lam=-1.0), ValueError, "lam must be >= 0"),
    (dict(eta=float("nan")), ValueError, "eta must be finite"),
    (dict(eta=0.0), ValueError, "eta must be > 0"),
    (dict(lam=1e39), ValueError, "lam is too large for float32"),
    (dict(X=np.full((5, 2), 1e300)), ValueError, "too large for float32"),
    (dict(callback=3), TypeError, "callback must be callable"),
]


@pytest.mark.parametrize("change, error, message", BAD)
def test_construct_rejects_bad_input(change, error, message):
    args = dict(
        X=np.arange(10.0).reshape(5, 2),
        labels=np.array([0, 1, 1, 0, 1]),
        num_classes=2,
        num_layers=2,
        eps_sq=0.1,
        lam=500.0,
        eta=0.5,
    )
    args.update(change)
    with pytest.raises(error, match=message):
        construct(args.pop("X"), args.pop("labels"), **args)


def test_transform_rejects_wrong_shape():
    X, y = blobs(5, 3, 2)
    net, _ = construct(X, y, num_classes=2, num_layers=1)
    with pytest.raises(ValueError, match=r"X samples must have shape \(3,\)"):
        transform(net, np.ones((4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        predict(net, np.full((4, 3), np.nan))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    X, y = blobs(10, 4, 2, seed=8)
    net, Z = construct(jnp.asarray(X, dtype), y, num_classes=2, num_layers=2)
    assert Z.dtype == jnp.float32
    _, reference = construct(
        jnp.asarray(X, dtype).astype(jnp.float32), y, num_classes=2, num_layers=2
    )
    np.testing.assert_allclose(Z, reference, atol=1e-6)
    assert predict(net, jnp.asarray(X, dtype)).shape == (20,)


@pytest.mark.parametrize("scale", [1e-30, 1e19, 2e37])
def test_normalize_and_construct_do_not_depend_on_input_scale(scale):
    X, y = blobs(10, 4, 2, seed=9)
    X = X.astype(np.float32)
    np.testing.assert_allclose(
        np.linalg.norm(normalize(X * np.float32(scale)), axis=1), 1.0, rtol=1e-5
    )
    _, Z = construct(X, y, num_classes=2, num_layers=2)
    _, Z_scaled = construct(X * np.float32(scale), y, num_classes=2, num_layers=2)
    np.testing.assert_allclose(Z_scaled, Z, atol=1e-5)


@pytest.mark.parametrize("peak", [9e37, 3.4e38])
def test_invariant_construction_keeps_samples_near_the_float32_limit(peak):
    """1 / peak is below float32's smallest normal number: no sample may vanish."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 2, 8)).astype(np.float32)
    y = np.arange(12) % 2
    X_big = X.copy()
    X_big[0] *= np.float32(peak) / np.abs(X_big[0]).max()
    net, Z = construct(X, y, num_classes=2, num_layers=2, invariant=True)
    _, Z_big = construct(X_big, y, num_classes=2, num_layers=2, invariant=True)
    np.testing.assert_allclose(Z_big, Z, atol=1e-5)
    np.testing.assert_allclose(transform(net, X_big), transform(net, X), atol=1e-5)


def test_normalize_rejects_non_finite_values_by_name():
    for bad in (np.array([[np.nan, 1.0]]), jnp.array([[np.inf, 1.0]], jnp.bfloat16)):
        with pytest.raises(ValueError, match="^Z contains 1 NaN or infinite values$"):
            normalize(bad)


def test_normalize_gradient_at_zero_entries_matches_finite_differences():
    """The power-of-two scales carry no gradient; zeros get d out / d x = 1/|x|."""
    for row, peak in (([0.0, 3.0], 3.0), ([0.0, 255.0], 255.0), ([0.0, 1e30], 1e30)):
        x = jnp.asarray([row], jnp.float32)
        g = jax.grad(lambda z: normalize(z)[0, 0])(x)
        np.testing.assert_allclose(g[0, 0], 1.0 / peak, rtol=1e-5)
    x = np.array([[1.0, 2.0, 0.0, -1.0]], np.float32)
    g = jax.grad(lambda z: normalize(z)[0, 2])(jnp.asarray(x))
    np.testing.assert_allclose(g[0, 2], 1.0 / np.linalg.norm(x), rtol=1e-5)


def test_normalize_checks_host_values_before_narrowing_them():
    big_ints = normalize(np.array([[2**40, 2**40 + 3], [3_000_000_000, 0]]))
    np.testing.assert_allclose(big_ints, [[0.5**0.5, 0.5**0.5], [1.0, 0.0]], rtol=1e-6)
    if not jax.config.jax_enable_x64:
        with pytest.raises(ValueError, match="^Z has values too large for float32"):
            normalize(np.array([[1e300, 1.0]]))
    with pytest.raises(TypeError, match="^Z must be real-valued"):
        normalize([[1 + 2j, 3.0]])
    assert normalize(jnp.array([[3.0, 4.0]], jnp.bfloat16)).dtype == jnp.bfloat16
    assert normalize(np.array([[3.0, 4.0]], np.float16)).dtype == np.float16
    with pytest.raises(ValueError, match=r"^Z must have at least 1 dimension\(s\)"):
        normalize(np.float32(3.0))
    with pytest.raises(TypeError, match="^Z must be float16, bfloat16, float32 or"):
        normalize(np.array([[3.0, 4.0]], np.longdouble))
