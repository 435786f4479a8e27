import gzip

import numpy as np
import pytest

from redunet_jax import gaussian_mixture, load_dataset, read_idx


def write_idx(path, array, code=0x08):
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + np.asarray(array, dtype).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


def test_digits_split_and_standardization():
    data = load_dataset("digits", seed=0, test_size=0.3)
    assert data.X_train.shape == (1257, 64) and data.X_test.shape == (540, 64)
    assert data.X_train.dtype == np.float32 and data.num_classes == 10
    assert np.allclose(data.X_train.mean(axis=0), 0, atol=1e-5)
    assert set(np.unique(data.y_test)) == set(range(10))


def test_gaussians_are_seeded():
    a = gaussian_mixture(dim=3, seed=1)
    b = gaussian_mixture(dim=3, seed=1)
    c = gaussian_mixture(dim=3, seed=2)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(a.X_train, c.X_train)
    assert a.X_train.shape == (1500, 3) and a.num_classes == 3 and a.n_comp == 1
    with pytest.raises(ValueError, match="dim"):
        gaussian_mixture(dim=4)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 255, (7, 4, 3)).astype(np.uint8)
    write_idx(tmp_path / f"x{suffix}", images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"x{suffix}"), images)
    floats = np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32)
    write_idx(tmp_path / "f", floats, code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), floats)


def test_idx_rejects_malformed_files(tmp_path):
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes(b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(bad_magic)
    bad_type = tmp_path / "type"
    bad_type.write_bytes(b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="type code"):
        read_idx(bad_type)
    short = tmp_path / "short"
    short.write_bytes(
        b"\x00\x00\x08\x02" + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"abc"
    )
    with pytest.raises(ValueError, match="announces 12 data bytes"):
        read_idx(short)
    huge = tmp_path / "huge"
    huge.write_bytes(b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") * 3)
    with pytest.raises(ValueError, match="implausibly large"):
        read_idx(huge)
    header = tmp_path / "header"
    header.write_bytes(b"\x00\x00\x08\x02\x00\x00")
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(header)


def test_idx_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (40, 5, 5)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(40) % 4)
    data = load_dataset(f"idx:{tmp_path}", test_size=0.25)
    assert data.X_train.shape == (30, 25) and data.X_test.shape == (10, 25)
    assert data.num_classes == 4
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (8, 5, 5)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(8) % 4)
    data = load_dataset(f"idx:{tmp_path}")
    assert data.X_train.shape == (40, 25) and data.X_test.shape == (8, 25)


def test_idx_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not one"):
        load_dataset(f"idx:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="lacks"):
        load_dataset(f"idx:{tmp_path}")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 2, 2)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(ValueError, match="do not match"):
        load_dataset(f"idx:{tmp_path}")


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("digits", test_size=1.5)


def write_pair(folder, images, labels, prefix="train", code=0x08):
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, code=code)


def test_idx_folder_rejects_suspicious_content(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 3, 3))

    absurd = tmp_path / "absurd"
    absurd.mkdir()
    write_pair(absurd, images, np.where(np.arange(20) % 2, 200, 0))
    with pytest.raises(ValueError, match="labels go up to 200"):
        load_dataset(f"idx:{absurd}")

    floats = tmp_path / "floats"
    floats.mkdir()
    write_pair(floats, images, np.arange(20) % 2 + 0.5, code=0x0D)
    with pytest.raises(ValueError, match="integer labels"):
        load_dataset(f"idx:{floats}")

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    write_pair(lonely, images, np.arange(20) % 2)
    write_idx(lonely / "t10k-images-idx3-ubyte", images[:4])
    with pytest.raises(FileNotFoundError, match="no matching t10k file"):
        load_dataset(f"idx:{lonely}")

    sizes = tmp_path / "sizes"
    sizes.mkdir()
    write_pair(sizes, images, np.arange(20) % 2)
    write_pair(sizes, rng.integers(0, 255, (4, 2, 2)), np.arange(4) % 2, prefix="t10k")
    with pytest.raises(ValueError, match="test images have 4 pixels"):
        load_dataset(f"idx:{sizes}")


def test_idx_broken_gzip_is_a_value_error(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((50, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="unreadable IDX file"):
        read_idx(path)
    fake = tmp_path / "fake.gz"
    fake.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="fake.gz"):
        read_idx(fake)
