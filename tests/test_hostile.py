"""Hostile files and arguments: refused with a clear error, never executed.

Complements test_io.py (truncated, random, foreign, newer and mis-shaped
network files), test_data.py (malformed IDX headers) and test_cli.py.
"""

import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from redunet_jax import construct, load, load_dataset, read_idx, save
from redunet_jax.cli import main


class SideEffect:
    """Unpickling this object creates a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "code-was-executed"
    data = pickle.dumps(SideEffect(marker))
    pickle.loads(data).close()  # the payload works when unpickled...
    assert marker.exists()
    marker.unlink()
    return data, marker  # ...so a missing marker proves it was not


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    net, _ = construct(X, np.arange(60) % 3, num_classes=3, num_layers=2, eps_sq=0.2)
    return net


@pytest.fixture
def arrays(net, tmp_path):
    """The members of a valid network file."""
    path = tmp_path / "valid.npz"
    save(path, net)
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# Network files


def test_pickle_file_is_refused_unexecuted(tmp_path, payload):
    data, marker = payload
    path = tmp_path / "network.npz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not an npz archive"):
        load(path)
    assert not marker.exists()


def test_object_array_is_refused_unexecuted(tmp_path, payload, arrays):
    _, marker = payload
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    members["E.npy"] = _npy(np.array([SideEffect(marker)], dtype=object))
    path = tmp_path / "network.npz"
    _zip(path, members)
    with pytest.raises(ValueError, match="object arrays would unpickle code"):
        load(path)
    assert not marker.exists()


def test_pickle_member_is_refused_unexecuted(tmp_path, payload, arrays):
    data, marker = payload
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    members["__config__.npy"] = data  # a pickle where an array should be
    path = tmp_path / "network.npz"
    _zip(path, members)
    with pytest.raises(ValueError, match="magic string is not correct"):
        load(path)
    members["__config__"] = members.pop("__config__.npy")  # not even .npy
    _zip(path, members)
    with pytest.raises(ValueError, match="'__config__' is not one .npy array"):
        load(path)
    assert not marker.exists()


def _forged_header(shape, dtype="<f8") -> bytes:
    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + bytes(64)


def _peak_megabytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def test_forged_array_header_is_refused_before_allocation(tmp_path, arrays):
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    members["E.npy"] = _forged_header((10**12,))  # 8 TB announced, 64 B stored
    path = tmp_path / "network.npz"
    _zip(path, members)

    def attempt():
        with pytest.raises(ValueError, match=r"declares shape \(1000000000000,\)"):
            load(path)

    start = time.perf_counter()
    assert _peak_megabytes(attempt) < 16
    assert time.perf_counter() - start < 5


def test_absurd_member_size_is_refused(tmp_path, arrays):
    path = tmp_path / "network.npz"
    _zip(path, {f"{k}.npy": _npy(v) for k, v in arrays.items()})
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # first central directory entry
    struct.pack_into("<I", data, central + 24, 10**9)  # its uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="claims an absurd size"):
        load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a["E"].__setitem__((0, 0, 0), np.nan), "non-finite operators"),
        (lambda a: a.update(E=a["E"].astype(np.int32)), "unsupported dtype int32"),
        (lambda a: a.update(gamma=a["gamma"] + 0j), "unsupported dtype complex"),
        (lambda a: a.update(__config__=np.frombuffer(b"[1, 2]", np.uint8)), "format"),
        (lambda a: a.update(__config__=np.frombuffer(b"\xff\xfe", np.uint8)), "config"),
    ],
    ids=["nan", "int", "complex-gamma", "config-list", "config-bytes"],
)
def test_hostile_network_content(tmp_path, arrays, change, message):
    arrays = {k: v.copy() for k, v in arrays.items()}
    change(arrays)
    path = tmp_path / "network.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load(path)


# Checkpoint files


@pytest.fixture
def checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    y = np.arange(60) % 3
    folder = tmp_path / "checkpoint"
    construct(X, y, num_classes=3, num_layers=2, eps_sq=0.2, checkpoint_dir=folder)

    def resume():
        construct(X, y, num_classes=3, num_layers=3, eps_sq=0.2, checkpoint_dir=folder)

    return folder, resume


def test_checkpoint_object_array_is_refused_unexecuted(checkpoint, payload):
    (folder, resume), (_, marker) = checkpoint, payload
    state = folder / "state-000002.npz"
    with np.load(state) as archive:
        members = {f"{k}.npy": _npy(archive[k]) for k in archive.files}
    members["Z.npy"] = _npy(np.array([SideEffect(marker)], dtype=object))
    _zip(state, members)
    with pytest.raises(ValueError, match="object arrays would unpickle") as info:
        resume()
    assert str(state) in str(info.value)
    assert not marker.exists()


def test_checkpoint_pickled_files_are_refused_unexecuted(checkpoint, payload):
    (folder, resume), (data, marker) = checkpoint, payload
    block = folder / "layers-000000-000001.npz"
    block.write_bytes(data)
    with pytest.raises(ValueError, match="not an npz archive") as info:
        resume()
    assert str(block) in str(info.value)
    (folder / "manifest.json").write_bytes(data)
    with pytest.raises(ValueError, match="not a valid checkpoint manifest"):
        resume()
    assert not marker.exists()


def test_checkpoint_manifest_of_another_kind_is_refused(checkpoint):
    folder, resume = checkpoint
    (folder / "manifest.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="not a redunet_jax checkpoint manifest"):
        resume()


# IDX files


def _idx_header(code, dims) -> bytes:
    return bytes([0, 0, code, len(dims)]) + np.array(dims, ">u4").tobytes()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_announcing_a_gigabyte_allocates_little(tmp_path, suffix):
    path = tmp_path / f"images{suffix}"
    data = _idx_header(0x08, (1000, 1000, 1000)) + b"abc"
    path.write_bytes(gzip.compress(data) if suffix else data)

    def attempt():
        with pytest.raises(ValueError, match="announces 1000000000 data bytes"):
            read_idx(path)

    assert _peak_megabytes(attempt) < 64


def test_idx_announcing_10_to_the_12_items_fails_fast(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(_idx_header(0x08, (10**6, 10**6)) + b"abc")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="implausibly large"):
        read_idx(path)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("ndim", [0, 5])
def test_idx_with_unsupported_rank(tmp_path, ndim):
    path = tmp_path / "x"
    path.write_bytes(_idx_header(0x08, (2,) * ndim) + bytes(2**ndim))
    with pytest.raises(ValueError, match=f"{ndim} dimensions are not supported"):
        read_idx(path)


def test_idx_without_samples(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_header(0x08, (0, 4, 4)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_header(0x08, (0,)))
    with pytest.raises(ValueError, match="holds no samples"):
        load_dataset(f"idx:{tmp_path}")


# Command-line arguments


def _one_line_error(err: str, message: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--layers", "-3"], "--layers: must be >= 1, got -3"),
        (["fit", "--eta", "0"], "--eta: must be a finite number > 0, got 0"),
        (["fit", "--eta", "inf"], "must be a finite number > 0, got inf"),
        (["fit", "--dataset", "imagenet"], "unknown data set 'imagenet'"),
        (["fit", "--dataset", "idx:"], "unknown data set 'idx:'"),
        (["fit", "--layers", "1e3"], "expected an integer, got '1e3'"),
        (["fit", "--seed", "-1"], "--seed: must be >= 0"),
        (["fit", "--seed", str(2**32)], "must be < 2**32"),
        (["fit", "--checkpoint-every", "-2"], "--checkpoint-every: must be >= 1"),
        (["evaluate"], "the following arguments are required: run"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_line_error(capsys.readouterr().err, message)


def test_unwritable_output_folder_exits_2_with_one_line(tmp_path, capsys):
    argv = ["fit", "--dataset", "gaussian2d", "--layers", "1", "--quiet", "--out"]
    if os.path.isdir("/proc/self"):  # nothing can be created in /proc
        assert main([*argv, "/proc/redunet-run"]) == 2
        _one_line_error(capsys.readouterr().err, "cannot write to output folder")
    if os.geteuid() != 0:  # permissions do not stop root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main([*argv, str(locked / "run")]) == 2
        _one_line_error(capsys.readouterr().err, "cannot write to output folder")


def test_evaluate_refuses_a_pickled_network_unexecuted(tmp_path, payload):
    data, marker = payload
    run = tmp_path / "run"
    run.mkdir()
    config = {"dataset": "gaussian2d", "seed": 0, "test_size": 0.3}
    (run / "metrics.json").write_text(json.dumps({"config": config}))
    (run / "network.npz").write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-m", "redunet_jax.cli", "evaluate", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    _one_line_error(result.stderr, "not an npz archive")
    assert not marker.exists()
