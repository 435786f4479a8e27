"""Built-in data sets and loaders. Nothing here touches the network.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 samples, 10
  classes), standardized with statistics of the training split.
* ``gaussian2d`` / ``gaussian3d``: seeded Gaussian mixtures on the unit circle
  and sphere (2 and 3 classes, 500 samples per class and split).
* ``sinusoids``: two classes of noisy periodic waves of length 150 (sine and
  square waves of equal power, random phase), 400 per class, shape (m, 1, 150).
* ``digits-translation``: the 8×8 digits as one-channel images (m, 1, 8, 8),
  scaled to [0, 1] (no per-pixel statistics, which would break translation
  symmetry).
* ``digits-rotation``: the digits upsampled to 32×32 and resampled on a polar
  grid (``radii`` × ``angles``), so that rotations are circular shifts along
  the angle axis; radii become channels, shape (m, radii, angles).
* ``mnist1d``: the procedurally generated MNIST-1D signals (4000 + 1000 of
  length 40, shape (m, 1, 40)) from the ``mnist1d`` package, generated
  locally.
* ``idx:PATH``: MNIST-format IDX files that the user already has (a folder
  holding ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, and
  optionally the ``t10k-*`` test files; ``.gz`` copies are read as well).

Every sample is later scaled to unit norm by ``construct`` and ``transform``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

DATASETS = (
    "digits",
    "gaussian2d",
    "gaussian3d",
    "sinusoids",
    "digits-translation",
    "digits-rotation",
    "mnist1d",
    "idx:PATH",
)

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_MAX_BYTES = 4 << 30


class Dataset(NamedTuple):
    """A train/test split ready for ``construct``.

    Attributes:
      X_train, y_train, X_test, y_test: float32 inputs (m, ...) and int labels.
      num_classes: number of classes k.
      name: data set name.
      n_comp: subspace dimension of the nearest-subspace classifier.

    Example:
      >>> data = gaussian_mixture(dim=2, samples_per_class=3, seed=0)
      >>> data.X_train.shape, data.y_train.tolist(), data.num_classes
      ((6, 2), [0, 0, 0, 1, 1, 1], 2)
      >>> X_train, y_train, X_test, y_test, *_ = data  # a plain named tuple
      >>> X_test.dtype, data.name, data.n_comp
      (dtype('float32'), 'gaussian2d', 1)
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    n_comp: int


def load_dataset(
    name: str = "digits",
    *,
    seed: int = 0,
    test_size: float = 0.3,
    radii: int = 8,
    angles: int = 32,
) -> Dataset:
    """Load a built-in data set by name.

    Args:
      name: one of ``digits``, ``gaussian2d``, ``gaussian3d``, ``sinusoids``,
        ``digits-translation``, ``digits-rotation``, ``mnist1d`` or ``idx:PATH``.
      seed: seed of the split (``random_state``) and of generated data.
      test_size: fraction of samples held out (0 < test_size < 1); ignored by
        the Gaussian mixtures, which draw a separate test set, by ``mnist1d``
        (fixed 4000/1000 split) and by IDX folders that hold test files.
      radii: polar radii (channels) of ``digits-rotation``.
      angles: polar angles (signal length) of ``digits-rotation``.

    Returns:
      A ``Dataset``.

    Raises:
      TypeError: if ``name`` is not a string.
      ValueError: for an unknown name, a bad ``test_size`` or ``seed``, or a
        malformed IDX file.
      FileNotFoundError: if an IDX folder lacks the expected files.

    Example:
      >>> data = load_dataset("digits", seed=0, test_size=0.3)
      >>> data.X_train.shape, data.X_test.shape, data.num_classes
      ((1257, 64), (540, 64), 10)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if not (isinstance(test_size, (int, float)) and 0.0 < test_size < 1.0):
        raise ValueError(
            f"test_size must lie strictly between 0 and 1, got {test_size!r}"
        )
    if name == "digits":
        return _digits(seed, test_size)
    if name in ("gaussian2d", "gaussian3d"):
        return gaussian_mixture(dim=int(name[-2]), samples_per_class=500, seed=seed)
    if name == "sinusoids":
        return sinusoids(seed=seed, test_size=test_size)
    if name == "digits-translation":
        return _digits_images(seed, test_size)
    if name == "digits-rotation":
        return _digits_polar(seed, test_size, radii=radii, angles=angles)
    if name == "mnist1d":
        return _mnist1d(seed)
    if name.startswith("idx:"):
        return _idx_folder(Path(name[4:]), seed, test_size)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def _split(X, y, seed, test_size):
    from sklearn.model_selection import train_test_split

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    try:
        parts = train_test_split(
            X, y, test_size=test_size, random_state=seed, stratify=y
        )
    except ValueError as err:
        raise ValueError(
            f"cannot split {len(y)} samples with test_size={test_size} "
            f"(every class needs a sample on each side): {err}"
        ) from err
    return [np.asarray(part) for part in parts]


def _standardize(X_train, X_test):
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (X_train - mean) / std, (X_test - mean) / std


def _digits(seed, test_size) -> Dataset:
    from sklearn.datasets import load_digits

    X, y = (np.asarray(part) for part in load_digits(return_X_y=True))
    X_train, X_test, y_train, y_test = _split(X, y, seed, test_size)
    X_train, X_test = _standardize(X_train, X_test)
    return _as_dataset(X_train, y_train, X_test, y_test, 10, "digits", 10)


def gaussian_mixture(
    *, dim: int, samples_per_class: int = 500, seed: int = 0
) -> Dataset:
    """Classes of points near distinct unit vectors, on the circle or sphere.

    Class ``j`` has mean direction ``mu_j`` (2D: angles 0 and 60 degrees;
    3D: three unit vectors 60 degrees apart) and isotropic noise of standard
    deviation 0.1; train and test sets are drawn independently.

    Args:
      dim: 2 (two classes) or 3 (three classes).
      samples_per_class: samples per class in each split.
      seed: generator seed.

    Returns:
      A ``Dataset`` with ``n_comp = 1``.

    Raises:
      ValueError: if ``dim`` is not 2 or 3.

    Example:
      >>> data = gaussian_mixture(dim=3, samples_per_class=4, seed=0)
      >>> data.X_train.shape, data.X_test.shape, data.num_classes
      ((12, 3), (12, 3), 3)
      >>> import numpy as np
      >>> means = [data.X_train[data.y_train == j].mean(axis=0) for j in range(3)]
      >>> [round(float(np.linalg.norm(mu)), 1) for mu in means]  # near unit vectors
      [1.0, 1.0, 1.0]
    """
    if dim == 2:
        angles = np.deg2rad([0.0, 60.0])
        means = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif dim == 3:
        means = np.array(
            [[1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0], [0.5, 0.0, np.sqrt(3) / 2]]
        )
    else:
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    rng = np.random.default_rng(seed)
    k = len(means)

    def draw():
        y = np.repeat(np.arange(k), samples_per_class)
        X = means[y] + 0.1 * rng.standard_normal((len(y), dim))
        return X.astype(np.float32), y.astype(np.int32)

    X_train, y_train = draw()
    X_test, y_test = draw()
    return Dataset(X_train, y_train, X_test, y_test, k, f"gaussian{dim}d", 1)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), optionally gzip-compressed.

    The header is validated against the file size before any array is
    allocated: a wrong magic number, an unknown type code, absurd dimensions
    or a size mismatch raise ``ValueError``.

    Args:
      path: the file; a name ending in ``.gz`` is read through gzip.

    Returns:
      The array, with the shape stored in the header, in native byte order.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is not a readable IDX file (bad magic number,
        unknown type code, implausible dimensions, truncated or oversized
        data, corrupted gzip stream).

    Example:
      >>> import os, tempfile
      >>> import numpy as np
      >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx2-ubyte")
      >>> header = bytes([0, 0, 0x08, 2]) + np.array([2, 3], ">u4").tobytes()
      >>> with open(path, "wb") as handle:  # unsigned bytes, shape (2, 3)
      ...     _ = handle.write(header + bytes(range(6)))
      >>> read_idx(path)
      array([[0, 1, 2],
             [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    try:
        dims, dtype, body, nbytes = _read_idx_parts(path)
    except (EOFError, OSError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable IDX file ({err})") from err
    if len(body) != nbytes:
        raise ValueError(
            f"{path}: IDX header announces {nbytes} data bytes for shape {dims}, "
            f"the file holds {len(body)}"
        )
    return (
        np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))
    )


def _read_idx_parts(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        header = handle.read(4)
        if len(header) < 4 or header[0] != 0 or header[1] != 0:
            raise ValueError(f"{path} is not an IDX file (bad magic number)")
        code, ndim = header[2], header[3]
        if code not in _IDX_TYPES:
            raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
        if not 1 <= ndim <= 4:
            raise ValueError(
                f"{path}: IDX files with {ndim} dimensions are not supported"
            )
        raw_dims = handle.read(4 * ndim)
        if len(raw_dims) < 4 * ndim:
            raise ValueError(f"{path}: truncated IDX header")
        dims = tuple(int(v) for v in np.frombuffer(raw_dims, dtype=">u4"))
        dtype = _IDX_TYPES[code]
        nbytes = int(np.prod(dims, dtype=np.float64)) * dtype.itemsize
        if nbytes > _IDX_MAX_BYTES:
            raise ValueError(f"{path}: IDX dimensions {dims} are implausibly large")
        body = _read_at_most(handle, nbytes + 1)
    return dims, dtype, body, nbytes


def _read_at_most(handle, size: int) -> bytes:
    """Read up to ``size`` bytes in chunks.

    ``read(size)`` would allocate ``size`` bytes up front, so a header that
    announces gigabytes would cost that much memory before the size check;
    chunks make the memory follow the data actually present.
    """
    chunks = []
    while size > 0:
        chunk = handle.read(min(size, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    for candidate in folder.glob(stem.replace("-idx", ".idx") + "*"):
        return candidate
    return None


def _read_pair(folder: Path, prefix: str):
    images = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        present = images or labels
        raise FileNotFoundError(f"{folder}: {present} has no matching {prefix} file")
    X = read_idx(images)
    y = read_idx(labels)
    if y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{folder}: {prefix} images {X.shape} and labels {y.shape} do not match"
        )
    if len(y) == 0:
        raise ValueError(f"{images} holds no samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{labels} must hold integer labels, got {y.dtype}")
    X = X.reshape(len(X), -1).astype(np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{images} holds NaN or infinite values")
    return X, y.astype(np.int64)


def _check_idx_labels(folder: Path, y: np.ndarray) -> int:
    """Number of classes k of IDX labels, which must be 0..k-1, k >= 2."""
    classes = int(y.max()) + 1
    if y.min() < 0 or classes < 2:
        raise ValueError(f"{folder}: labels must be integers 0..k-1 with k >= 2")
    if classes > len(y):
        raise ValueError(
            f"{folder}: labels go up to {classes - 1} but there are only {len(y)} "
            "training samples; labels must be class indices 0..k-1"
        )
    return classes


def _idx_folder(folder: Path, seed: int, test_size: float) -> Dataset:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"idx:PATH must name a folder of IDX files; {folder} is not one"
        )
    train = _read_pair(folder, "train")
    if train is None:
        raise FileNotFoundError(
            f"{folder} lacks train-images-idx3-ubyte and train-labels-idx1-ubyte"
        )
    classes = _check_idx_labels(folder, train[1])
    test = _read_pair(folder, "t10k")
    if test is None:
        X_train, X_test, y_train, y_test = _split(*train, seed, test_size)
    else:
        (X_train, y_train), (X_test, y_test) = train, test
        if X_test.shape[1] != X_train.shape[1]:
            raise ValueError(
                f"{folder}: test images have {X_test.shape[1]} pixels, training "
                f"images {X_train.shape[1]}"
            )
        if y_test.min() < 0 or y_test.max() >= classes:
            raise ValueError(f"{folder}: test labels outside the training classes")
    X_train, X_test = _standardize(X_train, X_test)
    return _as_dataset(X_train, y_train, X_test, y_test, classes, f"idx:{folder}", 10)


def sinusoids(
    *,
    samples_per_class: int = 400,
    length: int = 150,
    cycles: int = 5,
    noise: float = 0.5,
    seed: int = 0,
    test_size: float = 0.3,
) -> Dataset:
    """Two classes of noisy periodic signals: sine waves and square waves.

    Both classes have ``cycles`` periods over ``length`` samples, unit power,
    a uniformly random phase (a random, not necessarily integer, shift) and
    white Gaussian noise of standard deviation ``noise``. Shapes (m, 1, T).

    Args:
      samples_per_class: samples per class before the split.
      length: signal length T.
      cycles: periods per signal.
      noise: noise standard deviation.
      seed: generator and split seed.
      test_size: held-out fraction.

    Returns:
      A ``Dataset`` with ``n_comp = 1``.

    Raises:
      ValueError: if ``seed`` is not an integer in [0, 2**32), or the samples
        cannot be split with ``test_size`` (every class needs a sample on
        each side).

    Example:
      >>> data = sinusoids(samples_per_class=10, length=32, seed=0)
      >>> data.X_train.shape, data.X_test.shape, data.num_classes
      ((14, 1, 32), (6, 1, 32), 2)
    """
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(2), samples_per_class)
    phase = rng.uniform(0, 2 * np.pi, size=len(y))
    t = np.arange(length) / length
    wave = np.sin(2 * np.pi * cycles * t[None] + phase[:, None])
    X = np.where(y[:, None] == 0, np.sqrt(2.0) * wave, np.sign(wave))
    X = X + noise * rng.standard_normal(X.shape)
    X_train, X_test, y_train, y_test = _split(X[:, None, :], y, seed, test_size)
    return _as_dataset(X_train, y_train, X_test, y_test, 2, "sinusoids", 1)


def _as_dataset(X_train, y_train, X_test, y_test, k, name, n_comp) -> Dataset:
    return Dataset(
        np.asarray(X_train, np.float32),
        np.asarray(y_train, np.int32),
        np.asarray(X_test, np.float32),
        np.asarray(y_test, np.int32),
        k,
        name,
        n_comp,
    )


def _digit_images():
    from sklearn.datasets import load_digits

    images, y = load_digits(return_X_y=True)
    return np.asarray(images).reshape(-1, 8, 8) / 16.0, np.asarray(y)


def _digits_images(seed, test_size) -> Dataset:
    images, y = _digit_images()
    X_train, X_test, y_train, y_test = _split(images[:, None], y, seed, test_size)
    return _as_dataset(X_train, y_train, X_test, y_test, 10, "digits-translation", 10)


def _digits_polar(seed, test_size, *, radii: int, angles: int) -> Dataset:
    import jax

    from redunet_jax._lift import polar_resample

    images, y = _digit_images()
    large = jax.image.resize(images.astype(np.float32), (len(images), 32, 32), "cubic")
    polar = np.asarray(polar_resample(large, radii=radii, angles=angles))
    X_train, X_test, y_train, y_test = _split(polar, y, seed, test_size)
    return _as_dataset(X_train, y_train, X_test, y_test, 10, "digits-rotation", 10)


def _mnist1d(seed) -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ValueError(
            "the mnist1d data set needs the mnist1d package: pip install mnist1d"
        ) from err
    args = get_dataset_args()
    # seed 0 gives the standard MNIST-1D (generator seed 42)
    setattr(args, "seed", 42 + seed)  # noqa: B010
    data = make_dataset(args)  # generated locally; never downloads
    return _as_dataset(
        data["x"][:, None],
        data["y"],
        data["x_test"][:, None],
        data["y_test"],
        10,
        "mnist1d",
        10,
    )
