"""The packed real fast path against the plain complex (m, C, F) implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redunet_jax import construct, transform
from redunet_jax._circulant import (
    CirculantLayer,
    _build_circulant_with_rates,
    _move_circulant,
)
from redunet_jax._concurrent import PackedConstruction
from redunet_jax._fourier import _bin_weights, _irfft, _rfft, weighted_sq_norm
from redunet_jax._guards import layer_health
from redunet_jax._network import encoded_forward, normalize
from redunet_jax._packed import (
    choose_block,
    pack,
    packed_covariances,
    packed_forward,
    plan_blocks,
    plan_samples,
    unpack,
)
from redunet_jax._spectral_rates import fourier_covariances


def coefficients(m, C, signal_shape, seed=0):
    X = np.random.default_rng(seed).standard_normal((m, C, *signal_shape))
    Z_hat = _rfft(jnp.asarray(X, jnp.float32))
    return Z_hat / jnp.sqrt(jnp.sum(jnp.abs(Z_hat) ** 2, axis=(1, 2)))[:, None, None]


def uneven_labels(m, k, seed=0):
    """Labels with an empty class (k - 1), a singleton class and uneven sizes."""
    y = np.random.default_rng(seed).integers(0, k - 2, m)
    y[-1] = k - 2
    y[: m // 2] = 0
    return y


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 10**6])
def test_plan_places_every_sample_once_in_class_pure_blocks(chunk_size):
    y = uneven_labels(97, 5)
    plan = plan_blocks(y, 5, chunk_size)
    b = plan.block
    assert chunk_size is None or b == min(chunk_size, np.bincount(y).max())
    slots = plan.order.reshape(-1, b)
    real = plan.order[plan.order < 97]
    np.testing.assert_array_equal(np.sort(real), np.arange(97))
    np.testing.assert_array_equal(plan.order[plan.inverse], np.arange(97))
    for block, j in zip(slots, plan.block_class, strict=True):
        members = block[block < 97]
        assert members.size > 0 and np.all(y[members] == j)
    # Padding never exceeds one block per non-empty class.
    assert plan.order.size - 97 < b * len(np.unique(y))


def test_automatic_block_pads_least():
    assert choose_block(np.array([100] * 10)) == 25
    assert choose_block(np.array([12, 5])) == 12
    assert choose_block(np.array([64, 64])) == 32
    assert plan_samples(1000).block == 25 and plan_samples(10).block == 10


@pytest.mark.parametrize("route", ["groups", "all_blocks", "one_block_at_a_time"])
def test_pack_round_trips_and_covariances_match_reference(route, monkeypatch):
    Z_hat = coefficients(45, 3, (10,))
    y = uneven_labels(45, 4, seed=1)
    if route == "groups":  # equal class sizes, so equal block counts
        y = np.arange(45) % 3
    plan = plan_blocks(y, 4, 4)
    assert (plan.groups is not None) == (route == "groups")
    if route == "one_block_at_a_time":
        monkeypatch.setattr("redunet_jax._packed.GRAM_BYTES", 0)
    Yb = pack(Z_hat, jnp.asarray(plan.order), plan.block)
    assert Yb.shape == (len(plan.block_class), 6, 4, 6)
    np.testing.assert_array_equal(unpack(Yb, jnp.asarray(plan.inverse)), Z_hat)

    fast = packed_covariances(Yb, jnp.asarray(plan.block_class), 4, groups=plan.groups)
    reference = fourier_covariances(Z_hat, jax.nn.one_hot(y, 4))
    np.testing.assert_allclose(fast, reference, atol=2e-6)
    assert float(jnp.abs(fast[-1]).max()) == 0.0  # empty class


@pytest.mark.parametrize("signal_shape", [(10,), (4, 5)])
@pytest.mark.parametrize("use_labels", [False, True])
def test_packed_step_matches_build_then_move(signal_shape, use_labels):
    Z_hat = coefficients(45, 3, signal_shape, seed=2)
    y = uneven_labels(45, 4, seed=3)
    Pi = jax.nn.one_hot(y, 4)
    weights = jnp.asarray(_bin_weights(signal_shape), jnp.float32)
    T = int(np.prod(signal_shape))
    step = PackedConstruction(
        y, 4, signal_shape=signal_shape, use_labels=use_labels, chunk_size=8, parts=1
    )
    hyper = [jnp.asarray(v, jnp.float32) for v in (0.1, 0.5, 50.0)]
    layer, carry, rates, _ = step(step.to_carry(Z_hat), Pi, *hyper)
    Z_next = step.from_carry(carry)
    ref_layer, ref_rates = _build_circulant_with_rates(Z_hat, Pi, 0.1, weights, T)
    ref_next, _ = _move_circulant(
        ref_layer, Z_hat, 0.5, 50.0, weights, Pi if use_labels else None
    )
    for got, want in zip(layer, ref_layer, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Z_next, ref_next, atol=1e-6)
    np.testing.assert_allclose(jnp.stack(rates), jnp.stack(ref_rates), rtol=1e-5)


def test_packed_forward_matches_reference_for_non_hermitian_blocks():
    """Fine-tuned blocks need not be Hermitian; the packed map must not assume it."""
    key = jax.random.key(4)
    L, k, F, C = 3, 3, 6, 2
    parts = jax.random.normal(key, (2, L, k + 1, F, C, C)) * 0.3
    blocks = jax.lax.complex(parts[0], parts[1])
    layers = CirculantLayer(
        E_hat=blocks[:, 0], C_hat=blocks[:, 1:], gamma=jnp.full((L, k), 1.0 / k)
    )
    Z_hat = coefficients(37, C, (10,), seed=5)
    weights = jnp.asarray(_bin_weights((10,)), jnp.float32)

    fast, fast_pihat = packed_forward(layers, Z_hat, weights, 0.5, 5.0, chunk_size=8)

    def body(Z, layer):
        Z_next, pihat = _move_circulant(layer, Z, 0.5, 5.0, weights)
        return Z_next, pihat

    slow, pihats = jax.lax.scan(body, Z_hat, layers)
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    np.testing.assert_allclose(fast_pihat, pihats[-1], atol=1e-6)


def test_construct_and_transform_agree_with_the_plain_path():
    X = np.random.default_rng(6).standard_normal((60, 2, 12)).astype(np.float32)
    y = uneven_labels(60, 4, seed=7)
    net, Z = construct(X, y, num_classes=4, num_layers=3, invariant=True)
    other, Z_other = construct(
        X, y, num_classes=4, num_layers=3, invariant=True, chunk_size=5
    )
    np.testing.assert_allclose(Z, Z_other, atol=1e-6)
    np.testing.assert_allclose(net.layers.C_hat, other.layers.C_hat, atol=1e-5)

    Z_hat, _ = encoded_forward(
        net.layers,
        jnp.asarray(X),
        signal_shape=(12,),
        eta=net.eta,
        lam=net.lam,
        num_classes=4,
    )
    plain = jnp.fft.irfft(Z_hat, n=12, axis=-1, norm="ortho")
    np.testing.assert_allclose(transform(net, X), plain, atol=1e-6)
    np.testing.assert_allclose(transform(net, X), Z, atol=1e-5)


@pytest.mark.parametrize(
    ("signal_shape", "chunk_size", "parts"),
    [((10,), None, 1), ((10,), 3, 2), ((3, 4), 7, 2), ((3, 4), 3, 3)],
)
def test_guard_statistics_of_the_step_equal_the_plain_ones(
    signal_shape, chunk_size, parts
):
    from redunet_jax._concurrent import PackedConstruction

    Z_hat = np.array(coefficients(47, 3, signal_shape, seed=8))
    y = uneven_labels(47, 5, seed=9)
    Z_hat[y == 1] = Z_hat[np.flatnonzero(y == 1)[0]]  # a collapsed class
    Z_hat[y == 2] = 0.0  # a zero class
    Z_hat = jnp.asarray(Z_hat)
    Pi = jax.nn.one_hot(y, 5)
    weights = jnp.asarray(_bin_weights(signal_shape), jnp.float32)
    step = PackedConstruction(
        y,
        5,
        signal_shape=signal_shape,
        use_labels=False,
        chunk_size=chunk_size,
        parts=parts,
    )
    hyper = [jnp.asarray(v, jnp.float32) for v in (0.1, 0.5, 500.0)]
    layer, _, _, fast = step(step.to_carry(Z_hat), Pi, *hyper)

    sq_norm = lambda Z: weighted_sq_norm(Z, weights)  # noqa: E731
    plain = layer_health(Z_hat, Pi, sq_norm, (layer.E_hat, layer.C_hat))
    np.testing.assert_allclose(fast, plain, rtol=1e-6)
    # Exact zeros for the collapsed and the zero class, as on the plain path.
    assert fast[2, 1] == 0.0 and fast[3, 2] == 0.0 and fast[3, 1] == 0.0
    assert fast[5, 0] == 0.0  # the empty class


@pytest.mark.parametrize("use_labels", [False, True])
def test_construction_matches_the_plain_build_and_move(use_labels):
    X = np.random.default_rng(10).standard_normal((50, 2, 4, 3)).astype(np.float32)
    y = uneven_labels(50, 4, seed=11)
    net, Z = construct(
        X, y, num_classes=4, num_layers=3, invariant=True, use_labels=use_labels
    )
    Z_hat, Pi = _rfft(normalize(jnp.asarray(X))), jax.nn.one_hot(y, 4)
    weights = jnp.asarray(_bin_weights((4, 3)), jnp.float32)
    for index in range(3):
        layer, _ = _build_circulant_with_rates(Z_hat, Pi, 0.1, weights, 12)
        Z_hat, _ = _move_circulant(
            layer, Z_hat, 0.5, 500.0, weights, Pi if use_labels else None
        )
        np.testing.assert_allclose(net.layers.E_hat[index], layer.E_hat, atol=2e-5)
        np.testing.assert_allclose(net.layers.C_hat[index], layer.C_hat, atol=2e-5)
    np.testing.assert_allclose(Z, _irfft(Z_hat, (4, 3)), atol=2e-5)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_parts_moved_concurrently_match_the_plain_step(parts):
    from redunet_jax._concurrent import PackedConstruction

    X = np.random.default_rng(12).standard_normal((70, 2, 10)).astype(np.float32)
    y = uneven_labels(70, 4, seed=13)
    Z_hat, Pi = _rfft(normalize(jnp.asarray(X))), jax.nn.one_hot(y, 4)
    weights = jnp.asarray(_bin_weights((10,)), jnp.float32)
    hyper = [jnp.asarray(v, jnp.float32) for v in (0.1, 0.5, 500.0)]
    step = PackedConstruction(
        y, 4, signal_shape=(10,), use_labels=False, chunk_size=4, parts=parts
    )
    assert step.parts == parts and len(step.part_classes) == parts
    carry = step.to_carry(Z_hat)
    for _ in range(3):
        layer, carry, rates, health = step(carry, Pi, *hyper)
        ref_layer, ref_rates = _build_circulant_with_rates(Z_hat, Pi, 0.1, weights, 10)
        Z_hat, _ = _move_circulant(ref_layer, Z_hat, 0.5, 500.0, weights)
        np.testing.assert_allclose(layer.C_hat, ref_layer.C_hat, atol=2e-5)
        np.testing.assert_allclose(
            jnp.stack(rates), jnp.stack(ref_rates), rtol=1e-5, atol=1e-6
        )
        assert health.shape == (5, 4) and np.all(np.asarray(health)[:, 3] == 1.0)
    np.testing.assert_allclose(step.from_carry(carry), Z_hat, atol=2e-5)


def test_parts_run_in_the_callers_precision():
    """Threads do not inherit JAX's per-thread configuration (enable_x64)."""
    from redunet_jax._concurrent import PackedConstruction

    X = np.random.default_rng(14).standard_normal((40, 2, 6))
    y = np.arange(40) % 2
    with jax.enable_x64(True):
        Z_hat, Pi = _rfft(normalize(jnp.asarray(X))), jax.nn.one_hot(y, 2)
        assert Z_hat.dtype == jnp.complex128
        step = PackedConstruction(
            y, 2, signal_shape=(6,), use_labels=False, chunk_size=5, parts=2
        )
        hyper = [jnp.asarray(v, jnp.float64) for v in (0.1, 0.5, 500.0)]
        layer, carry, _, _ = step(step.to_carry(Z_hat), Pi, *hyper)
        weights = jnp.asarray(_bin_weights((6,)), jnp.float64)
        ref_layer, _ = _build_circulant_with_rates(Z_hat, Pi, 0.1, weights, 6)
        ref, _ = _move_circulant(ref_layer, Z_hat, 0.5, 500.0, weights)
        moved = step.from_carry(carry)
    assert moved.dtype == jnp.complex128
    np.testing.assert_allclose(moved, ref, atol=1e-12)


def test_number_of_parts_follows_cores_blocks_and_memory(monkeypatch):
    from redunet_jax._concurrent import concurrent_parts

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert concurrent_parts(40, 1000, 10, None) == 8  # at most 8
    assert concurrent_parts(3, 1000, 10, None) == 3  # at most the blocks
    assert concurrent_parts(40, 1000, 10, 16) == 6  # 1000 // (10 * 16)
    assert concurrent_parts(40, 1000, 10, 75) == 1  # Grams beyond 2x the features
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert concurrent_parts(40, 1000, 10, None) == 1


def test_parts_run_with_jit_disabled():
    from redunet_jax._concurrent import PackedConstruction

    X = np.random.default_rng(15).standard_normal((12, 1, 4)).astype(np.float32)
    y = np.arange(12) % 2
    Z_hat, Pi = _rfft(normalize(jnp.asarray(X))), jax.nn.one_hot(y, 2)
    step = PackedConstruction(
        y, 2, signal_shape=(4,), use_labels=False, chunk_size=3, parts=2
    )
    hyper = [jnp.asarray(v, jnp.float32) for v in (0.1, 0.5, 500.0)]
    expected = step.from_carry(step(step.to_carry(Z_hat), Pi, *hyper)[1])
    with jax.disable_jit():
        moved = step.from_carry(step(step.to_carry(Z_hat), Pi, *hyper)[1])
    np.testing.assert_allclose(moved, expected, atol=1e-6)


def test_construct_rejects_bad_chunk_size():
    X = np.ones((4, 1, 4), np.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        construct(X, [0, 0, 1, 1], num_classes=2, num_layers=1, chunk_size=0)


@pytest.mark.parametrize(
    ("m", "d", "woodbury"), [(60, 64, True), (150, 6, False)], ids=["woodbury", "gram"]
)
@pytest.mark.parametrize("use_labels", [False, True])
def test_vector_construction_paths_match_the_plain_step(m, d, woodbury, use_labels):
    """Blocked class covariances and the m_j×m_j (Woodbury) class systems."""
    from redunet_jax._network import _construction_step, normalize
    from redunet_jax._vector import WOODBURY_RATIO

    X = np.random.default_rng(8).standard_normal((m, d)).astype(np.float32)
    y = uneven_labels(m, 5, seed=9)  # class 4 empty, class 3 a singleton
    assert (np.bincount(y).max() <= WOODBURY_RATIO * d) == woodbury
    net, Z = construct(
        X, y, num_classes=5, num_layers=3, eps_sq=0.5, use_labels=use_labels
    )

    Z_ref, Pi = normalize(jnp.asarray(X)), jax.nn.one_hot(y, 5)
    hyper = [jnp.asarray(v, jnp.float32) for v in (0.5, 0.5, 500.0)]
    for index in range(3):
        layer, Z_ref, _, _ = _construction_step(
            Z_ref, Pi, *hyper, use_labels=use_labels, signal_shape=None
        )
        scale = float(jnp.abs(layer.C).max())
        np.testing.assert_allclose(net.layers.C[index], layer.C, atol=2e-5 * scale)
        np.testing.assert_allclose(net.layers.E[index], layer.E, atol=2e-5)
    np.testing.assert_allclose(Z, Z_ref, atol=2e-5)
