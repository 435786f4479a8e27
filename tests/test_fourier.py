import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redunet_jax._fourier import (
    bin_weights,
    fourier_norm,
    from_fourier,
    num_bins,
    to_fourier,
)

SIGNAL_SHAPES = [(7,), (8,), (4, 4), (4, 5)]


@pytest.mark.parametrize(
    ("signal_shape", "expected"),
    [
        ((7,), [1, 2, 2, 2]),
        ((8,), [1, 2, 2, 2, 1]),
        ((2,), [1, 1]),
        ((3,), [1, 2]),
        ((2, 4), [1, 2, 1, 1, 2, 1]),
        ((2, 5), [1, 2, 2, 1, 2, 2]),
    ],
)
def test_bin_weights_closed_form(signal_shape, expected):
    weights = bin_weights(signal_shape)
    np.testing.assert_array_equal(np.asarray(weights), np.asarray(expected, float))
    assert float(weights.sum()) == np.prod(signal_shape)
    assert num_bins(signal_shape) == len(expected)


def test_bin_weights_accept_int():
    np.testing.assert_array_equal(bin_weights(7), bin_weights((7,)))


@pytest.mark.parametrize("signal_shape", SIGNAL_SHAPES)
def test_round_trip_and_norm(signal_shape):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        Z_np = rng.standard_normal((3, 2, *signal_shape))
        Z = jnp.asarray(Z_np)
        Z_hat = to_fourier(Z)
        F = num_bins(signal_shape)

        assert Z_hat.shape == (3, 2, F)
        assert Z_hat.dtype == jnp.complex128
        axes = tuple(range(2, Z.ndim))
        expected_hat = np.fft.rfftn(Z_np, axes=axes, norm="ortho").reshape(3, 2, F)
        np.testing.assert_allclose(np.asarray(Z_hat), expected_hat, atol=1e-12)

        back = from_fourier(Z_hat, signal_shape)
        np.testing.assert_allclose(np.asarray(back), Z_np, atol=1e-12)

        norms = fourier_norm(Z_hat, bin_weights(signal_shape))
        expected = np.linalg.norm(Z_np.reshape(3, -1), axis=1)
        np.testing.assert_allclose(np.asarray(norms), expected, rtol=1e-12)


def test_float32_dtype_and_norm_floor():
    Z = jnp.zeros((2, 1, 6), jnp.float32).at[0, 0, 1].set(3.0)
    Z_hat = to_fourier(Z)
    assert Z_hat.dtype == jnp.complex64
    norms = fourier_norm(Z_hat, bin_weights((6,)), floor=1e-8)
    np.testing.assert_allclose(np.asarray(norms), [3.0, 1e-8], rtol=1e-6)


def test_half_precision_is_promoted():
    Z = jnp.ones((2, 1, 6), jnp.bfloat16)
    assert to_fourier(Z).dtype == jnp.complex64


def test_input_errors():
    with pytest.raises(ValueError, match="Z must have signal axes"):
        to_fourier(jnp.ones((2, 3, 1)))
    with pytest.raises(ValueError, match="Z must have 3 or 4 dimensions"):
        to_fourier(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="signal_shape"):
        bin_weights((1,))
    with pytest.raises(ValueError, match="signal_shape"):
        bin_weights((2, 2, 2))
    Z_hat = to_fourier(jnp.ones((2, 3, 8)))
    with pytest.raises(
        ValueError, match=r"signal_shape \(10,\) needs 6 frequency bins"
    ):
        from_fourier(Z_hat, (10,))
    with pytest.raises(TypeError, match="Z_hat must hold complex"):
        from_fourier(jnp.ones((2, 3, 5)), (8,))
    with pytest.raises(ValueError, match=r"weights must have shape \(5,\)"):
        fourier_norm(Z_hat, bin_weights((7,)))
