"""Checkpoints of a network under construction, so that a long run can resume.

A checkpoint folder holds three kinds of files:

* ``layers-AAAAAA-BBBBBB.npz``: layers ``AAAAAA`` to ``BBBBBB - 1``, stacked,
  written once when they are first checkpointed and never rewritten, so the
  cost of checkpointing grows with the new layers only;
* ``state-BBBBBB.npz``: the training features ``Z`` after ``BBBBBB`` layers,
  exactly as construction holds them (rfft coefficients, complex, for
  shift-invariant networks), and the rates reported for the layers before
  the last one (the last one's rates are computed by the next step);
* ``manifest.json``: the settings, a sha256 fingerprint of the inputs, the
  library version, the files and a sha256 checksum of every array in them.

Every file is written to a temporary name, flushed to disk and renamed; the
manifest is written last and is the commit point, and files it no longer
lists are deleted only after it is in place. An interruption at any moment
therefore leaves the previous checkpoint intact. Files are read without
unpickling anything, and every array is checked against the manifest's
shape, dtype and checksum before use. One process at a time may use a folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from redunet_jax._checks import check_int
from redunet_jax._circulant import CirculantLayer
from redunet_jax._rates import Rates
from redunet_jax._vector import VectorLayer
from redunet_jax.io import atomic_write_bytes, read_arrays

FORMAT = "redunet_jax.checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_BLOCK = re.compile(r"layers-(\d{6})-(\d{6})\.npz")
_STATE = re.compile(r"state-(\d{6})\.npz")
# Temporary files that an interrupted write of ours leaves behind.
_TEMPORARY = re.compile(
    r"\.(layers-\d{6}-\d{6}\.npz|state-\d{6}\.npz|manifest\.json)\..+\.tmp"
)
_RATE_FIELDS = ("delta_r", "r", "rc")
# A manifest lists about 400 bytes per block: far below this for any real run.
_MAX_MANIFEST_BYTES = 1 << 28


class Restored(NamedTuple):
    """What a checkpoint gives back: per-layer operators, features and rates."""

    layers: list
    Z: jax.Array
    rates: list[Rates]


def digest(array) -> str:
    """sha256 of an array's bytes in C order (shape and dtype are kept apart)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _describe(array) -> dict:
    array = np.asarray(array)
    return {
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "sha256": digest(array),
    }


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(version))[:3])


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # pyright: ignore[reportArgumentType]
    return buffer.getvalue()


def _fsync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _peek(folder: Path, key: str) -> int | None:
    """A positive integer of a folder's manifest, or None if unreadable."""
    try:
        value = json.loads((Path(folder) / MANIFEST).read_bytes().decode())[key]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return value if type(value) is int and value >= 1 else None


def stored_layers(folder: Path) -> int | None:
    """Number of layers checkpointed in ``folder`` (None if none or unreadable).

    Nothing is verified: use it for messages only.
    """
    return _peek(folder, "layers")


def stored_every(folder: Path) -> int | None:
    """The checkpoint interval a folder was written with, for resuming alike."""
    return _peek(folder, "every")


def open_checkpoints(directory, every, X, labels, *, settings: dict) -> Checkpointer:
    """Check ``construct``'s checkpoint arguments and open the folder.

    Args:
      directory: ``checkpoint_dir``; required when ``every`` is given.
      every: ``checkpoint_every`` (>= 1), or ``None`` for every layer.
      X: the checked training inputs.
      labels: the checked training labels.
      settings: the hyperparameters and flags of the construction.
    """
    if directory is None:
        raise ValueError("checkpoint_every needs a checkpoint_dir to write to")
    every = 1 if every is None else check_int(every, "checkpoint_every", minimum=1)
    layer_type = CirculantLayer if settings.get("invariant") else VectorLayer
    return Checkpointer(
        directory,
        every=every,
        settings=settings,
        X=X,
        labels=labels,
        layer_type=layer_type,
    )


class Checkpointer:
    """Writes and restores the checkpoints of one construction.

    Args:
      directory: the checkpoint folder (created if missing).
      every: write a checkpoint after every ``every`` completed layers.
      settings: every setting that shapes the layers (hyperparameters and
        flags); a checkpoint resumes only under equal settings, and the dtype
        of the features (the compute dtype) joins them.
      X: the checked training inputs.
      labels: the checked training labels.
      layer_type: ``VectorLayer`` or ``CirculantLayer``.
    """

    def __init__(self, directory, *, every: int, settings: dict, X, labels, layer_type):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                "checkpoint_dir must be a str or os.PathLike, got "
                f"{type(directory).__name__}"
            )
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"checkpoint_dir {self.directory} is not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.every = every
        # A JSON round trip turns tuples into lists, as in a stored manifest.
        self.settings = json.loads(json.dumps(settings))
        self.inputs = {"X": _describe(X), "labels": _describe(labels)}
        self.layer_type = layer_type
        self.blocks: list[dict] = []
        self.saved = 0

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.directory / MANIFEST

    def due(self, count: int) -> bool:
        """Whether a checkpoint is due after ``count`` completed layers."""
        return count % self.every == 0

    def restore(self, Z, spec, *, num_layers: int) -> Restored:
        """Layers, features and rates of the checkpoint, or nothing if none.

        Args:
          Z: the initial features, returned unchanged when there is no
            checkpoint yet.
          spec: shapes and dtypes ``(layer, Z, rates)`` of one construction
            step, as given by ``jax.eval_shape``.
          num_layers: the number of layers requested.

        Raises:
          ValueError: naming the file and the cause, for a checkpoint that
            is corrupted, from a newer or different library version, for other
            inputs or settings, or holding more than ``num_layers`` layers.
        """
        layer_spec, Z_spec, rates_spec = spec
        self.settings["dtype"] = np.dtype(Z_spec.dtype).name
        manifest = self._read_manifest()
        if manifest is None:
            return Restored([], Z, [])
        count = self._check_manifest(manifest, num_layers)

        stacked: dict[str, list[np.ndarray]] = {f: [] for f in self.layer_type._fields}
        for block in manifest["blocks"]:
            arrays = self._read_checked(block, self.layer_type._fields)
            rows = block["stop"] - block["start"]
            for field in self.layer_type._fields:
                self._expect(
                    block, field, arrays[field], getattr(layer_spec, field), rows
                )
                stacked[field].append(arrays[field])
        columns = {f: np.concatenate(parts) for f, parts in stacked.items()}
        layers = [
            self.layer_type(**{f: jnp.asarray(columns[f][i]) for f in columns})
            for i in range(count)
        ]

        state = manifest["state"]
        arrays = self._read_checked(state, ("Z", *_RATE_FIELDS))
        self._expect(state, "Z", arrays["Z"], Z_spec, None)
        for field in _RATE_FIELDS:
            self._expect(state, field, arrays[field], rates_spec.delta_r, count - 1)
        rates = [
            Rates(*(jnp.asarray(arrays[field][i]) for field in _RATE_FIELDS))
            for i in range(count - 1)
        ]

        self.blocks = list(manifest["blocks"])
        self.saved = count
        return Restored(layers, jnp.asarray(arrays["Z"]), rates)

    def save(self, layers: Sequence, Z, rates: list[Rates]) -> None:
        """Checkpoint ``layers`` (all completed so far) and the features ``Z``.

        ``rates`` holds the rates reported so far; those of the layers before
        the last one are stored.
        """
        from redunet_jax import __version__

        count = len(layers)
        if count <= self.saved:
            return
        block_name = f"layers-{self.saved:06d}-{count:06d}.npz"
        new = layers[self.saved :]
        block_arrays = {
            f: np.stack([np.asarray(getattr(layer, f)) for layer in new])
            for f in self.layer_type._fields
        }
        state_name = f"state-{count:06d}.npz"
        Z = np.asarray(Z)
        self.settings.setdefault("dtype", Z.dtype.name)
        state_arrays = {"Z": Z}
        for field in _RATE_FIELDS:
            values = [np.asarray(getattr(r, field)) for r in rates[: count - 1]]
            dtype = values[0].dtype if values else np.finfo(Z.dtype).dtype
            state_arrays[field] = np.asarray(values, dtype=dtype)

        block = {
            "file": block_name,
            "start": self.saved,
            "stop": count,
            "arrays": {n: _describe(a) for n, a in block_arrays.items()},
        }
        state = {
            "file": state_name,
            "arrays": {n: _describe(a) for n, a in state_arrays.items()},
        }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "jax_version": jax.__version__,
            "backend": jax.default_backend(),
            "layer_type": self.layer_type.__name__,
            "settings": self.settings,
            "inputs": self.inputs,
            "layers": count,
            "every": self.every,
            "blocks": [*self.blocks, block],
            "state": state,
        }
        atomic_write_bytes(self.directory / block_name, _npz_bytes(block_arrays))
        atomic_write_bytes(self.directory / state_name, _npz_bytes(state_arrays))
        _fsync_folder(self.directory)
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=1).encode())
        _fsync_folder(self.directory)

        self.blocks = manifest["blocks"]
        self.saved = count
        self._remove_unlisted(manifest)

    def _remove_unlisted(self, manifest: dict) -> None:
        """Delete earlier states, unlisted blocks and leftover temporary files."""
        listed = {b["file"] for b in manifest["blocks"]} | {manifest["state"]["file"]}
        for path in self.directory.iterdir():
            name = path.name
            ours = _BLOCK.fullmatch(name) or _STATE.fullmatch(name)
            if (ours and name not in listed) or _TEMPORARY.fullmatch(name):
                path.unlink(missing_ok=True)

    def _read_manifest(self) -> dict | None:
        path = self.manifest_path
        if not path.exists():
            return None
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ValueError(f"{path} is too large to be a checkpoint manifest")
        try:
            manifest = json.loads(path.read_bytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path} is not a valid checkpoint manifest (truncated or corrupted: "
                f"{err})"
            ) from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a redunet_jax checkpoint manifest")
        return manifest

    def _check_manifest(self, manifest: dict, num_layers: int) -> int:
        """Versions, inputs, settings and file list; returns the layer count."""
        from redunet_jax import __version__

        path = self.manifest_path
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"{path} has a malformed format version {version!r}")
        written_by = str(manifest.get("library_version"))
        if version > FORMAT_VERSION or _version_tuple(written_by) > _version_tuple(
            __version__
        ):
            raise ValueError(
                f"{path} was written by redunet_jax {written_by} (checkpoint format "
                f"{version}), newer than this library ({__version__}); upgrade "
                "redunet_jax or start a new checkpoint folder"
            )
        if written_by != __version__:
            raise ValueError(
                f"{path} was written by redunet_jax {written_by}, this is "
                f"{__version__}: layers built by different versions are not mixed; "
                "start a new checkpoint folder"
            )
        for name, described in self.inputs.items():
            stored = manifest.get("inputs", {}).get(name)
            if stored != described:
                raise ValueError(
                    f"{path} belongs to different inputs: {name} differs (checkpoint "
                    f"{_summary(stored)}, now {_summary(described)}); use another "
                    "checkpoint folder"
                )
        stored_settings = manifest.get("settings")
        if stored_settings != self.settings:
            changed = _differences(stored_settings, self.settings)
            raise ValueError(
                f"{path} was written with different settings ({changed}); pass the "
                "same settings or use another checkpoint folder"
            )
        if manifest.get("layer_type") != self.layer_type.__name__:
            raise ValueError(f"{path} holds {manifest.get('layer_type')!r} layers")
        self._check_versions_of_jax(manifest)
        return self._check_files(manifest, num_layers)

    def _check_versions_of_jax(self, manifest: dict) -> None:
        here = (jax.__version__, jax.default_backend())
        there = (manifest.get("jax_version"), manifest.get("backend"))
        if here != there:
            warnings.warn(
                f"{self.manifest_path} was written with jax {there[0]} on {there[1]}; "
                f"resuming with jax {here[0]} on {here[1]} may change the last bits "
                "of the result compared with an uninterrupted run",
                stacklevel=4,
            )

    def _check_files(self, manifest: dict, num_layers: int) -> int:
        path = self.manifest_path
        count = manifest.get("layers")
        blocks, state = manifest.get("blocks"), manifest.get("state")
        if not isinstance(count, int) or count < 1 or not isinstance(blocks, list):
            raise ValueError(f"{path} is malformed (layer count or blocks)")
        start = 0
        for block in blocks:
            if (
                not isinstance(block, dict)
                or not _BLOCK.fullmatch(str(block.get("file")))
                or block.get("start") != start
                or not isinstance(block.get("stop"), int)
                or block["stop"] <= start
            ):
                raise ValueError(f"{path} is malformed (block list at layer {start})")
            start = block["stop"]
        if start != count:
            raise ValueError(f"{path} is malformed: its blocks hold {start} layers")
        if not isinstance(state, dict) or state.get("file") != f"state-{count:06d}.npz":
            raise ValueError(f"{path} is malformed (state file)")
        if count > num_layers:
            raise ValueError(
                f"{path} holds {count} layers, more than num_layers={num_layers}; "
                f"pass num_layers >= {count} to extend it, or use another checkpoint "
                "folder"
            )
        return count

    def _read_checked(self, entry: dict, names: tuple[str, ...]) -> dict[str, Any]:
        """The arrays of one listed file, each matching its manifest checksum."""
        path = self.directory / entry["file"]
        if not path.is_file():
            raise ValueError(f"{path} is missing; the checkpoint is incomplete")
        arrays = read_arrays(path, what="redunet_jax checkpoint file")
        described = entry.get("arrays")
        if sorted(arrays) != sorted(names) or not isinstance(described, dict):
            raise ValueError(
                f"{path} holds arrays {sorted(arrays)}, expected {sorted(names)}"
            )
        for name in names:
            listed, found = described.get(name), _describe(arrays[name])
            if not isinstance(listed, dict) or listed.get("sha256") != found["sha256"]:
                raise ValueError(
                    f"{path}: checksum mismatch for array {name} (the file was "
                    "corrupted or modified after it was written)"
                )
            if listed != found:
                raise ValueError(
                    f"{path}: array {name} has shape {found['shape']} and dtype "
                    f"{found['dtype']}, the manifest lists {listed.get('shape')} and "
                    f"{listed.get('dtype')}"
                )
        return arrays

    def _expect(self, entry: dict, name: str, array, spec, rows: int | None) -> None:
        """An array must have the shape and dtype construction would produce."""
        shape = tuple(spec.shape) if rows is None else (rows, *spec.shape)
        if array.shape != shape or array.dtype != spec.dtype:
            raise ValueError(
                f"{self.directory / entry['file']}: array {name} has shape "
                f"{array.shape} and dtype {array.dtype}, expected {shape} and "
                f"{np.dtype(spec.dtype)}"
            )


def _summary(described) -> str:
    if not isinstance(described, dict):
        return "missing"
    return (
        f"shape {tuple(described.get('shape', ()))} {described.get('dtype')}, "
        f"sha256 {str(described.get('sha256'))[:12]}"
    )


def _differences(stored, current: dict) -> str:
    if not isinstance(stored, dict):
        return "no settings recorded"
    keys = sorted(set(stored) | set(current))
    return ", ".join(
        f"{k}={stored.get(k)!r} in the checkpoint, {current.get(k)!r} now"
        for k in keys
        if stored.get(k) != current.get(k)
    )
