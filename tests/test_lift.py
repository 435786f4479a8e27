import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redunet_jax._lift import lift, lifting_filters, polar_resample


def conv_reference(X, filters):
    """Circular convolution by explicit shifts, float64 NumPy, then ReLU."""
    X = np.asarray(X, np.float64)
    filters = np.asarray(filters, np.float64)
    axes = tuple(range(2, X.ndim))
    out = np.zeros((X.shape[0], filters.shape[0], *X.shape[2:]))
    for offset in np.ndindex(*filters.shape[2:]):
        shifted = np.roll(X, offset, axis=axes)
        weights = filters[(slice(None), slice(None), *offset)]
        out += np.einsum("oc,nc...->no...", weights, shifted)
    return np.maximum(out, 0.0)


def bilinear_reference(image, row, col):
    """Value of a 2D image at a real (row, col), zero outside, by explicit sums."""
    H, W = image.shape
    value = 0.0
    for i in range(H):
        for j in range(W):
            value += (
                image[i, j] * max(0.0, 1 - abs(row - i)) * max(0.0, 1 - abs(col - j))
            )
    return value


CONV_CASES = [
    ((3, 1, 7), (2, 1, 3)),
    ((2, 3, 8), (4, 3, 5)),
    ((2, 2, 6), (3, 2, 6)),
    ((2, 1, 5, 6), (3, 1, 2, 3)),
    ((2, 3, 6, 7), (2, 3, 3, 3)),
    ((1, 2, 4, 4), (5, 2, 4, 1)),
]


@pytest.mark.parametrize(("x_shape", "f_shape"), CONV_CASES)
def test_lift_matches_shift_reference_float32(x_shape, f_shape):
    rng = np.random.default_rng(0)
    X = rng.standard_normal(x_shape).astype(np.float32)
    filters = rng.standard_normal(f_shape).astype(np.float32)
    Y = lift(X, filters)
    assert Y.dtype == jnp.float32
    assert Y.shape == (x_shape[0], f_shape[0], *x_shape[2:])
    np.testing.assert_allclose(Y, conv_reference(X, filters), atol=1e-5)


@pytest.mark.parametrize(("x_shape", "f_shape"), CONV_CASES)
def test_lift_matches_shift_reference_float64(x64, x_shape, f_shape):
    rng = np.random.default_rng(1)
    X = rng.standard_normal(x_shape)
    filters = rng.standard_normal(f_shape)
    Y = lift(X, filters)
    assert Y.dtype == jnp.float64
    np.testing.assert_allclose(Y, conv_reference(X, filters), atol=1e-10)


@pytest.mark.parametrize("shift", [-3, 1, 4, 9])
def test_lift_shift_equivariant_1d(shift):
    X = jax.random.normal(jax.random.key(2), (3, 2, 9))
    filters = lifting_filters(3, in_channels=2, out_channels=5, kernel_size=4)
    Y = lift(X, filters)
    Y_shifted = lift(jnp.roll(X, shift, axis=-1), filters)
    np.testing.assert_allclose(Y_shifted, jnp.roll(Y, shift, axis=-1), atol=1e-5)


@pytest.mark.parametrize("shift", [(0, 2), (-8, 4), (3, -1), (8, 8)])
def test_lift_shift_equivariant_2d(shift):
    X = jax.random.normal(jax.random.key(4), (2, 3, 6, 8))
    filters = lifting_filters(5, in_channels=3, out_channels=4, kernel_size=(3, 2))
    Y = lift(X, filters)
    Y_shifted = lift(jnp.roll(X, shift, axis=(-2, -1)), filters)
    np.testing.assert_allclose(Y_shifted, jnp.roll(Y, shift, axis=(-2, -1)), atol=1e-5)


def test_lift_under_jit_compiles_once():
    filters = lifting_filters(0, in_channels=2, out_channels=3, kernel_size=3)
    X = jax.random.normal(jax.random.key(0), (2, 2, 8))
    lift_jit = jax.jit(lift)
    np.testing.assert_allclose(lift_jit(X, filters), lift(X, filters), atol=1e-6)
    lift_jit(X + 1.0, filters)
    assert lift_jit._cache_size() == 1


def test_lift_promotes_integer_input():
    X = np.arange(16).reshape(2, 1, 8)
    filters = lifting_filters(0, in_channels=1, out_channels=2, kernel_size=3)
    Y = lift(X, filters)
    assert Y.dtype == jnp.float32
    np.testing.assert_allclose(Y, conv_reference(X, filters), atol=1e-4)


def test_filters_seeded_and_shaped():
    kwargs = dict(in_channels=3, out_channels=4, kernel_size=5)
    a = lifting_filters(7, **kwargs)
    assert a.shape == (4, 3, 5)
    np.testing.assert_array_equal(a, lifting_filters(7, **kwargs))
    assert not np.allclose(a, lifting_filters(8, **kwargs))

    b = lifting_filters(7, in_channels=2, out_channels=6, kernel_size=(3, 4))
    assert b.shape == (6, 2, 3, 4)
    c = lifting_filters(1, in_channels=1, out_channels=2, kernel_size=(3,))
    assert c.shape == (2, 1, 3)


def test_filters_variance():
    filters = lifting_filters(0, in_channels=4, out_channels=500, kernel_size=(3, 5))
    # Variance 1 / (C_in * kh * kw) over 30000 entries: within a few percent.
    ratio = float(jnp.var(filters)) * 4 * 3 * 5
    assert 0.95 < ratio < 1.05
    assert abs(float(jnp.mean(filters))) < 0.01


def test_lifted_channels_have_order_one_variance():
    X = jax.random.normal(jax.random.key(1), (64, 8, 32))
    filters = lifting_filters(2, in_channels=8, out_channels=16, kernel_size=7)
    # Before the ReLU the output is N(0, sum of squared weights); after it the
    # second moment is half of that.
    second_moment = float(jnp.mean(lift(X, filters) ** 2))
    expected = 0.5 * float(jnp.mean(jnp.sum(filters**2, axis=(1, 2))))
    assert 0.8 < second_moment / expected < 1.2
    assert 0.2 < second_moment < 0.8


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(in_channels=0, out_channels=2, kernel_size=3), ValueError, "in_channels"),
        (
            dict(in_channels=1, out_channels=0, kernel_size=3),
            ValueError,
            "out_channels",
        ),
        (
            dict(in_channels=1.5, out_channels=2, kernel_size=3),
            TypeError,
            "in_channels",
        ),
        (dict(in_channels=1, out_channels=2, kernel_size=0), ValueError, "kernel_size"),
        (
            dict(in_channels=1, out_channels=2, kernel_size=(2, 0)),
            ValueError,
            "kernel_",
        ),
        (
            dict(in_channels=1, out_channels=2, kernel_size=(2, 2, 2)),
            TypeError,
            "kernel",
        ),
        (
            dict(in_channels=1, out_channels=2, kernel_size="3"),
            TypeError,
            "kernel_size",
        ),
    ],
)
def test_filters_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        lifting_filters(0, **kwargs)


@pytest.mark.parametrize(
    ("seed", "error"), [(-1, ValueError), (2**32, ValueError), (1.0, TypeError)]
)
def test_filters_bad_seed(seed, error):
    with pytest.raises(error, match="seed"):
        lifting_filters(seed, in_channels=1, out_channels=1, kernel_size=1)


F1 = np.ones((2, 3, 3), np.float32)
F2 = np.ones((2, 3, 2, 2), np.float32)


@pytest.mark.parametrize(
    ("X", "filters", "error", "match"),
    [
        (np.ones((4, 8)), F1[:, :1], ValueError, r"X\[:, None\]"),
        (np.ones((4, 5, 5)), F2[:, :1], ValueError, r"\(4, 5, 5\); .*X\[:, None\]"),
        (np.ones((4, 3, 5, 5)), F1, ValueError, r"X must have shape \(m, C_in, T\)"),
        (np.ones((4, 3, 8)), F2, ValueError, r"X must have shape \(m, C_in, H, W\)"),
        (np.ones((4, 2, 8)), F1, ValueError, r"\(4, 2, 8\).*in_channels=3"),
        (np.ones((4, 3, 2)), F1, ValueError, r"kernel larger.*\(4, 3, 2\)"),
        (np.ones((4, 3, 5, 1)), F2, ValueError, r"kernel larger.*\(4, 3, 5, 1\)"),
        (np.ones((4, 3, 8), complex), F1, TypeError, "X must be real"),
        (np.full((4, 3, 8), np.nan), F1, ValueError, "X contains"),
        (np.full((4, 3, 8), np.inf), F1, ValueError, "X contains"),
        (np.ones((4, 3, 8)), np.ones((2, 3)), ValueError, r"filters.*\(2, 3\)"),
        (np.ones((4, 3, 8)), np.ones((1, 1, 3, 2, 2)), ValueError, "filters"),
        (np.ones((4, 3, 8)), F1 * np.nan, ValueError, "filters contains"),
        (np.ones((4, 3, 8)), F1 + 0j, TypeError, "filters must be real"),
        ("signal", F1, TypeError, "X"),
    ],
)
def test_lift_bad_input(X, filters, error, match):
    with pytest.raises(error, match=match):
        lift(X, filters)


def test_lift_bad_input_jax_array_names_channel_axis():
    with pytest.raises(ValueError, match=r"X\[:, None\]"):
        lift(jnp.ones((2, 8)), F1[:, :1])


def polar_point(H, W, i, a, *, radii, angles, max_radius):
    r = (i + 0.5) * max_radius / radii
    theta = 2 * np.pi * a / angles
    return (H - 1) / 2 - r * np.sin(theta), (W - 1) / 2 + r * np.cos(theta)


@pytest.mark.parametrize(
    ("shape", "max_radius"), [((5, 5), None), ((6, 7), 2.3), ((4, 6), 4.0)]
)
def test_polar_matches_bilinear_reference(shape, max_radius):
    H, W = shape
    image = np.random.default_rng(3).standard_normal((1, H, W))
    radii, angles = 3, 12
    polar = np.asarray(
        polar_resample(image, radii=radii, angles=angles, max_radius=max_radius)
    )
    assert polar.shape == (1, radii, angles)
    R = (min(H, W) - 1) / 2 if max_radius is None else max_radius
    for i, a in [(0, 0), (1, 5), (2, 3), (2, 7), (0, 11)]:
        row, col = polar_point(H, W, i, a, radii=radii, angles=angles, max_radius=R)
        expected = bilinear_reference(image[0], row, col)
        np.testing.assert_allclose(polar[0, i, a], expected, atol=1e-5)


def test_polar_points_outside_read_zero():
    image = np.ones((1, 4, 4))
    polar = polar_resample(image, radii=2, angles=4, max_radius=20.0)
    # Radii 5 and 15 lie beyond the image in every direction.
    np.testing.assert_array_equal(polar, 0.0)


@pytest.mark.parametrize(("size", "angles"), [(6, 8), (7, 12), (8, 16)])
@pytest.mark.parametrize("max_radius", [None, 4.5])
def test_polar_rot90_is_roll(size, angles, max_radius):
    images = np.random.default_rng(size).standard_normal((2, 3, size, size))
    kwargs = dict(radii=4, angles=angles, max_radius=max_radius)
    polar = polar_resample(images, **kwargs)
    assert polar.shape == (2, 12, angles)
    for k in (1, 2, 3, -1):
        rotated = polar_resample(np.rot90(images, k, axes=(2, 3)), **kwargs)
        expected = jnp.roll(polar, k * angles // 4, axis=-1)
        np.testing.assert_allclose(rotated, expected, atol=1e-5)


def test_polar_rot180_is_roll_for_rectangles():
    images = np.random.default_rng(0).standard_normal((2, 5, 8))
    polar = polar_resample(images, radii=3, angles=10)
    rotated = polar_resample(images[:, ::-1, ::-1], radii=3, angles=10)
    np.testing.assert_allclose(rotated, jnp.roll(polar, 5, axis=-1), atol=1e-5)


def test_polar_constant_image_inside_radius():
    images = np.full((2, 1, 9, 7), 2.5, np.float32)
    polar = polar_resample(images, radii=5, angles=9)
    np.testing.assert_allclose(polar, 2.5, atol=1e-6)


def test_polar_channel_ordering():
    rng = np.random.default_rng(5)
    images = rng.standard_normal((2, 3, 6, 6))
    polar = polar_resample(images, radii=4, angles=8)
    assert polar.shape == (2, 12, 8)
    for c in range(3):
        single = polar_resample(images[:, c], radii=4, angles=8)
        np.testing.assert_allclose(polar[:, 4 * c : 4 * (c + 1)], single, atol=1e-6)


def test_polar_under_jit_and_dtypes(x64):
    images = np.random.default_rng(6).standard_normal((2, 6, 6))
    resample = jax.jit(
        polar_resample, static_argnames=("radii", "angles", "max_radius")
    )
    eager = polar_resample(images, radii=3, angles=8)
    assert eager.dtype == jnp.float64
    np.testing.assert_allclose(resample(images, radii=3, angles=8), eager, atol=1e-12)
    single = polar_resample(images.astype(np.float16), radii=3, angles=8)
    assert single.dtype == jnp.float32


def test_polar_then_lift_turns_rotations_into_shifts():
    images = np.random.default_rng(7).standard_normal((2, 8, 8))
    filters = lifting_filters(0, in_channels=4, out_channels=6, kernel_size=3)
    Y = lift(polar_resample(images, radii=4, angles=16), filters)
    rotated = polar_resample(np.rot90(images, axes=(1, 2)), radii=4, angles=16)
    np.testing.assert_allclose(
        lift(rotated, filters), jnp.roll(Y, 4, axis=-1), atol=1e-5
    )


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "match"),
    [
        (np.ones((6, 6)), dict(radii=2, angles=4), ValueError, r"images.*\(6, 6\)"),
        (np.ones((1, 1, 1, 6, 6)), dict(radii=2, angles=4), ValueError, "images"),
        (
            np.ones((2, 1, 6)),
            dict(radii=2, angles=4),
            ValueError,
            r"images.*\(2, 1, 6\)",
        ),
        (np.ones((2, 6, 6)), dict(radii=0, angles=4), ValueError, "radii"),
        (np.ones((2, 6, 6)), dict(radii=2, angles=1), ValueError, "angles"),
        (np.ones((2, 6, 6)), dict(radii=2.0, angles=4), TypeError, "radii"),
        (
            np.ones((2, 6, 6)),
            dict(radii=2, angles=4, max_radius=0.0),
            ValueError,
            "max_radius",
        ),
        (
            np.ones((2, 6, 6)),
            dict(radii=2, angles=4, max_radius=np.inf),
            ValueError,
            "max_radius",
        ),
        (
            np.ones((2, 6, 6)),
            dict(radii=2, angles=4, max_radius="1"),
            TypeError,
            "max_radius",
        ),
        (
            np.ones((2, 6, 6), complex),
            dict(radii=2, angles=4),
            TypeError,
            "images must be real",
        ),
        (
            np.full((2, 6, 6), np.nan),
            dict(radii=2, angles=4),
            ValueError,
            "images contains",
        ),
    ],
)
def test_polar_bad_input(images, kwargs, error, match):
    with pytest.raises(error, match=match):
        polar_resample(images, **kwargs)
