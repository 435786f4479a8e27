import json
import os

import numpy as np
import pytest
from reference import blobs

from redunet_jax import construct, load, predict, save, transform
from redunet_jax.io import FORMAT_VERSION


@pytest.fixture(scope="module")
def net_and_data():
    X, y = blobs(10, 4, 3, seed=0)
    net, _ = construct(
        X, y, num_classes=3, num_layers=3, eps_sq=0.3, eta=0.4, lam=100.0
    )
    return net, X


def test_round_trip(tmp_path, net_and_data):
    net, X = net_and_data
    path = tmp_path / "net.npz"
    save(path, net)
    loaded = load(path)
    assert (loaded.eta, loaded.lam, loaded.eps_sq) == (0.4, 100.0, 0.3)
    assert loaded.num_classes == 3 and loaded.input_shape == (4,)
    np.testing.assert_array_equal(transform(loaded, X), transform(net, X))
    np.testing.assert_array_equal(predict(loaded, X), predict(net, X))
    assert os.listdir(tmp_path) == ["net.npz"]  # no temporary file left behind


def test_save_is_atomic_on_failure(tmp_path, net_and_data, monkeypatch):
    net, _ = net_and_data
    path = tmp_path / "net.npz"
    save(path, net)
    original = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        save(path, net)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["net.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no network file"):
        load(tmp_path / "absent.npz")


def test_truncated_file(tmp_path, net_and_data):
    path = tmp_path / "net.npz"
    save(path, net_and_data[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or foreign"):
        load(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="truncated or foreign"):
        load(path)


def test_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(ValueError, match="not a redunet_jax network"):
        load(path)


def _rewrite_config(src, dst, change):
    with np.load(src) as archive:
        arrays = {k: archive[k] for k in archive.files}
    config = json.loads(arrays["__config__"].tobytes())
    change(config, arrays)
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(dst, **arrays)


def test_newer_format_and_shape_mismatch(tmp_path, net_and_data):
    src = tmp_path / "net.npz"
    save(src, net_and_data[0])

    newer = tmp_path / "newer.npz"
    _rewrite_config(
        src, newer, lambda c, a: c.update(format_version=FORMAT_VERSION + 1)
    )
    with pytest.raises(ValueError, match="newer than this library"):
        load(newer)

    def shrink(config, arrays):
        arrays["E"] = arrays["E"][:, :2, :2]

    wrong = tmp_path / "wrong.npz"
    _rewrite_config(src, wrong, shrink)
    with pytest.raises(ValueError, match="array E has shape"):
        load(wrong)


def test_save_errors(tmp_path, net_and_data):
    with pytest.raises(OSError, match="does not exist"):
        save(tmp_path / "missing" / "net.npz", net_and_data[0])
    with pytest.raises(TypeError, match="ReduNet"):
        save(tmp_path / "net.npz", {"E": 1})


def test_saved_file_has_the_usual_permissions(tmp_path, net_and_data):
    umask = os.umask(0o022)
    try:
        save(tmp_path / "net.npz", net_and_data[0])
    finally:
        os.umask(umask)
    assert (tmp_path / "net.npz").stat().st_mode & 0o777 == 0o644


def test_config_with_bad_hyperparameters_is_rejected(tmp_path, net_and_data):
    src = tmp_path / "net.npz"
    save(src, net_and_data[0])
    for change, message in [
        (lambda c, a: c.update(eta=float("nan")), "non-finite"),
        (lambda c, a: c.update(eps_sq=-1.0), "out-of-range"),
        (lambda c, a: c.pop("eta"), "incomplete or malformed"),
        (lambda c, a: c.update(format_version="1"), "malformed format version"),
    ]:
        bad = tmp_path / "bad.npz"
        _rewrite_config(src, bad, change)
        with pytest.raises(ValueError, match=message):
            load(bad)
