"""Saving and loading networks: plain arrays in an ``.npz`` plus a JSON config.

Nothing is pickled, so loading a file never executes code from it. Files are
written to a temporary name in the destination folder and renamed, so a crash
never leaves a half-written network behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from redunet_jax._circulant import CirculantLayer
from redunet_jax._fourier import num_bins
from redunet_jax._network import ReduNet
from redunet_jax._vector import VectorLayer

_LAYER_TYPES = {"vector": VectorLayer, "circulant": CirculantLayer}

FORMAT = "redunet_jax.network"
FORMAT_VERSION = 1
_CONFIG_KEY = "__config__"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    Readers see either the old file or the complete new one, never a partial
    write; the temporary file is removed if anything fails.

    Args:
      path: destination file; its folder must exist.
      data: the bytes to write.

    Raises:
      IsADirectoryError: if ``path`` is a folder.
      OSError: if the folder does not exist or is not writable.

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
      >>> atomic_write_bytes(path, b"rate reduction")
      >>> with open(path, "rb") as handle:
      ...     handle.read()
      b'rate reduction'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates owner-only files; give the usual permissions instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Deflate cannot expand data more than about 1032 times; a member that claims
# more is corrupt or a decompression bomb.
_MAX_EXPANSION = 1100


def read_arrays(path: Path, *, what: str) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` archive without trusting its content.

    Every member must be a ``.npy`` array of a plain numeric dtype: object
    arrays (pickled Python objects) are refused before anything is unpickled,
    and each member's declared shape must match its stored size before any
    memory is allocated for it, so a forged header cannot request terabytes.
    Members stored by ``np.savez`` carry a CRC-32 that is checked on reading.

    Args:
      path: the archive.
      what: what the file should be, for error messages (``"network"``).

    Returns:
      The arrays by member name (without the ``.npy`` suffix).

    Raises:
      ValueError: naming ``path`` and the cause, for a file that is not a
        readable archive of plain arrays.
    """
    foreign = f"{path} is not a {what} (truncated or foreign file"
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise ValueError(f"{foreign}: not an npz archive)")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if name == info.filename or name in arrays:
                    raise ValueError(f"member {info.filename!r} is not one .npy array")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ValueError(
                        f"member {info.filename!r} uses unusual compression"
                    )
                if info.file_size > _MAX_EXPANSION * info.compress_size + 4096:
                    raise ValueError(f"member {info.filename!r} claims an absurd size")
                with archive.open(info) as member:
                    arrays[name] = _read_member(member, info)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable {what} (corrupted, truncated or foreign "
            f"file): {err}"
        ) from err
    return arrays


def _read_member(member, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked against its stored size."""
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(member)
    else:
        raise ValueError(f"member {info.filename!r} has npy version {version}")
    if dtype.hasobject or dtype.kind not in "biufc":
        raise ValueError(
            f"member {info.filename!r} holds {dtype} data (only plain numbers are "
            "loaded; object arrays would unpickle code)"
        )
    declared = math.prod(shape) * dtype.itemsize
    stored = info.file_size - member.tell()
    if declared != stored:
        raise ValueError(
            f"member {info.filename!r} declares shape {shape} ({declared} bytes) "
            f"but stores {stored} bytes"
        )
    data = member.read(stored)  # bounded by the stored size; CRC-checked
    array = np.frombuffer(data, dtype=dtype).reshape(
        shape, order="F" if fortran else "C"
    )
    return array.astype(dtype.newbyteorder("="), copy=False)


def save(path: str | os.PathLike, net: ReduNet) -> None:
    """Save a network to ``path`` (an ``.npz`` file), atomically.

    Args:
      path: destination file; its folder must exist.
      net: the network to save.

    Returns:
      None. The arrays go to ``.npy`` members and the hyperparameters to a
      JSON member; the file is written under a temporary name and renamed, so
      an interrupted save never leaves a partial file at ``path``.

    Raises:
      TypeError: if ``net`` is not a ``ReduNet``.
      OSError: if the folder does not exist or is not writable.

    Example:
      >>> import jax, tempfile, os
      >>> from redunet_jax import construct, load
      >>> X = jax.random.normal(jax.random.key(0), (20, 3))
      >>> net, _ = construct(X, (X[:, 0] > 0).astype(int), num_classes=2, num_layers=2)
      >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
      >>> save(path, net)
      >>> load(path).num_layers
      2
    """
    from redunet_jax import __version__

    if not isinstance(net, ReduNet):
        raise TypeError(f"net must be a ReduNet, got {type(net).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise OSError(f"cannot save to {path}: folder {path.parent} does not exist")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "layer_type": "circulant" if net.invariant else "vector",
        "eta": net.eta,
        "lam": net.lam,
        "eps_sq": net.eps_sq,
        "num_classes": net.num_classes,
        "input_shape": list(net.input_shape),
        "num_layers": net.num_layers,
        "arrays": {name: list(np.shape(a)) for name, a in net.layers._asdict().items()},
    }
    arrays = {name: np.asarray(a) for name, a in net.layers._asdict().items()}
    arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # pyright: ignore[reportArgumentType]
    atomic_write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike) -> ReduNet:
    """Load a network written by :func:`save`.

    Args:
      path: an ``.npz`` file written by ``save``.

    Returns:
      The ``ReduNet``, with arrays on the default device.

    Raises:
      TypeError: if ``path`` is not a ``str`` or ``os.PathLike``.
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is truncated, not a redunet_jax network, from a
        newer format version, or its arrays disagree with its config.

    Example:
      >>> import jax, tempfile, os
      >>> from redunet_jax import construct, transform
      >>> X = jax.random.normal(jax.random.key(0), (20, 3))
      >>> net, _ = construct(X, (X[:, 0] > 0).astype(int), num_classes=2, num_layers=2)
      >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
      >>> save(path, net)
      >>> loaded = load(path)
      >>> loaded.input_shape, loaded.num_classes, loaded.invariant
      ((3,), 2, False)
      >>> bool(jax.numpy.array_equal(transform(loaded, X), transform(net, X)))
      True
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no network file at {path}")
    arrays = read_arrays(path, what="redunet_jax network")
    if _CONFIG_KEY not in arrays:
        raise ValueError(f"{path} is not a redunet_jax network (no config)")
    try:
        config = json.loads(arrays.pop(_CONFIG_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has a corrupted config: {err}") from err
    return _from_parts(path, config, arrays)


def _from_parts(path: Path, config: dict, arrays: dict) -> ReduNet:
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a redunet_jax network (format mismatch)")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path} has a malformed format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} uses network format version {version}, newer than this "
            f"library supports ({FORMAT_VERSION}); upgrade redunet_jax "
            f"(file written by version {config.get('library_version')})"
        )
    layer_type = _LAYER_TYPES.get(str(config.get("layer_type")))
    if layer_type is None:
        raise ValueError(
            f"{path} holds layer type {config.get('layer_type')!r}, which this "
            "version cannot load"
        )
    fields = layer_type._fields
    missing = [name for name in fields if name not in arrays]
    if missing:
        raise ValueError(f"{path} lacks arrays {missing}")
    hyper = _hyperparameters(path, config)
    for name in fields:
        kind = arrays[name].dtype.kind
        if kind not in ("f", "c") or (name == "gamma" and kind != "f"):
            raise ValueError(
                f"{path}: array {name} has unsupported dtype {arrays[name].dtype}"
            )
    _check_consistent(path, hyper, arrays, vector=layer_type is VectorLayer)
    layers = layer_type(**{name: jnp.asarray(arrays[name]) for name in fields})
    if not all(bool(jnp.all(jnp.isfinite(a))) for a in layers):
        raise ValueError(f"{path} holds non-finite operators")
    return ReduNet(layers=layers, **hyper)


def _hyperparameters(path: Path, config: dict) -> dict:
    """The scalar settings of a network, checked for type and range."""
    try:
        values = {
            "eta": float(config["eta"]),
            "lam": float(config["lam"]),
            "eps_sq": float(config["eps_sq"]),
            "num_classes": int(config["num_classes"]),
            "input_shape": tuple(int(s) for s in config["input_shape"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path} has an incomplete or malformed config ({err})"
        ) from err
    if not all(np.isfinite([values["eta"], values["lam"], values["eps_sq"]])):
        raise ValueError(f"{path} holds non-finite hyperparameters")
    if values["eps_sq"] <= 0 or values["eta"] <= 0 or values["lam"] < 0:
        raise ValueError(f"{path} holds out-of-range hyperparameters: {values}")
    if values["num_classes"] < 2 or not values["input_shape"]:
        raise ValueError(f"{path} holds an invalid number of classes or input shape")
    return values


def _check_consistent(path: Path, hyper: dict, arrays: dict, *, vector: bool) -> None:
    """Arrays must agree with each other and with the input shape and classes."""
    shape, k = hyper["input_shape"], hyper["num_classes"]
    if vector:
        expected = {"E": (shape[0], shape[0]), "C": (k, shape[0], shape[0])}
    else:
        if len(shape) not in (2, 3) or min(shape[1:]) < 2:
            raise ValueError(f"{path}: invalid signal shape {shape}")
        C, F = shape[0], num_bins(shape[1:])
        expected = {"E_hat": (F, C, C), "C_hat": (k, F, C, C)}
    expected["gamma"] = (k,)
    layers = arrays["gamma"].shape[0] if arrays["gamma"].ndim else 0
    for name, tail in expected.items():
        if arrays[name].shape != (layers, *tail) or layers < 1:
            raise ValueError(
                f"{path}: array {name} has shape {arrays[name].shape}, expected "
                f"{(layers, *tail)} for input shape {shape} and {k} classes"
            )
