"""A small real-MNIST subset written as IDX files (fast tests use it through data_dir)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture()
def idx_writer():
    """`write_idx(path, uint8 array)` for tests that build their own IDX files."""
    return write_idx


@pytest.fixture(scope="session")
def mnist_subset(tmp_path_factory) -> Path:
    from sublearn.mnist.data import load_mnist

    train_x, train_y, test_x, test_y = load_mnist()
    d = tmp_path_factory.mktemp("mnist_idx")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.round((x + 1) / 2 * 256).clip(0, 255).reshape(-1, 28, 28)

    write_idx(d / "train-images-idx3-ubyte.gz", to_uint8(train_x[:3000]))
    write_idx(d / "train-labels-idx1-ubyte.gz", train_y[:3000])
    write_idx(d / "t10k-images-idx3-ubyte.gz", to_uint8(test_x[:1000]))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", test_y[:1000])
    return d
