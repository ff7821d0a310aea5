"""Offline MNIST loading: the restricted unpickler and the IDX reader."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from sublearn.errors import SublearnError
from sublearn.mnist.data import load_mnist, read_idx, restricted_load


class Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump(((np.zeros(3), Evil(str(marker))), None), fh)
    with pytest.raises(SublearnError, match=r"refused to unpickle global '(posix|os|nt)\.system'"):
        restricted_load(path)
    assert not marker.exists()  # the command never ran


def test_restricted_unpickler_accepts_numpy_arrays(tmp_path) -> None:
    path = tmp_path / "ok.pkl"
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        got = restricted_load(path)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, arrays, strict=True))


def test_corrupt_pickle_is_a_one_line_error(tmp_path) -> None:
    path = tmp_path / "bad.pkl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(SublearnError, match="corrupt or unreadable"):
        restricted_load(path)


def test_wheel_data_has_the_standard_split() -> None:
    train_x, train_y, test_x, test_y = load_mnist()
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_x.min() == -1.0 and train_x.max() < 1.0
    assert set(np.unique(train_y)) == set(range(10))


def test_idx_directory(mnist_subset) -> None:
    train_x, train_y, test_x, test_y = load_mnist(mnist_subset)
    ref = load_mnist()
    assert train_x.shape == (3000, 784) and test_y.shape == (1000,)
    assert np.array_equal(train_y, ref[1][:3000])
    assert np.allclose(train_x, ref[0][:3000], atol=1e-6)


def test_idx_errors(tmp_path) -> None:
    with pytest.raises(SublearnError, match="not a directory"):
        load_mnist(tmp_path / "missing")
    with pytest.raises(SublearnError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01")
    with pytest.raises(SublearnError, match="corrupt IDX"):
        read_idx(bad)


def test_idx_bad_labels_are_refused(tmp_path, idx_writer) -> None:
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        idx_writer(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        idx_writer(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.array([1, 2, 3, 12]))
    with pytest.raises(SublearnError, match="labels must be digits 0-9"):
        load_mnist(tmp_path)
