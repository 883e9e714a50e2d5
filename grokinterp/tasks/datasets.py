"""Dataset tasks: classify vectors (images) instead of ``a ∘ b`` (issue 22, Omnigrok's setting).

=================  ==================================================================  ==============
operation          examples                                                            needs
=================  ==================================================================  ==============
``digits``         scikit-learn's bundled 8×8 digits: 1,797 images, 64 pixels,          scikit-learn
                   10 classes; no download (the file ships with scikit-learn)
``mnist``          MNIST from IDX files the user has (``task.data`` / ``--data PATH``):  the files
                   60,000 training + 10,000 test images of 28×28 = 784 pixels
``fashion_mnist``  Fashion-MNIST from the same IDX layout                              the files
=================  ==================================================================  ==============

Nothing is downloaded, ever. ``--data PATH`` is a directory holding ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each raw or
``.gz``; also looked for under ``PATH/raw``, torchvision's layout). A missing or malformed file is a
:class:`~grokinterp.errors.ConfigError` naming it.

How such a task fits the :class:`~grokinterp.tasks.base.Task` protocol:

* an example is an **index** ``i`` into the task's examples (what ``pair_index`` / the split's "grid
  indices" hold for these tasks): ``digits``: the 1,797 images in scikit-learn's order; ``mnist``:
  the 60,000 training-file images, then the 10,000 test-file images (ids 60,000 …);
* the "tokens" a model reads are the example's **input vector**, float32 ``[d]`` (``n_ctx = d``:
  64 or 784); only a family that reads vectors (``mlp`` with ``d_input = d``) can train on them;
* ``n`` (the config's ``p``) is the number of classes, 10 (``d_vocab_out``); a preset's ``p`` is
  ignored for these tasks (the name fixes it, as a group's order does);
* **normalisation**: pixel intensities divided by their maximum (``digits``: 16, MNIST: 255), so
  inputs lie in ``[0, 1]`` — torchvision's ``ToTensor()``, which Omnigrok's MNIST code uses; no
  mean/std standardisation;
* **split**: ``task.train_size`` training examples (default: ``round(frac_train · pool)``) drawn by a
  PCG64 permutation seeded with ``task.split_seed`` from the training pool (``digits``: all 1,797 —
  the rest are the test set; ``mnist``: the training file — the test set is the whole test file).
  Omnigrok trains on the *first* 1,000 training images; ours are a seeded draw.
* ``structure`` is ``None`` (no algebra): Fourier, restricted/excluded loss and key frequencies are
  undefined for these tasks and the analyses say so.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .base import Dataset, Task

__all__ = ["DATASET_TASKS", "VectorTask", "VectorDataset", "read_idx", "write_idx", "dataset_task",
           "dataset_task_size", "is_dataset_task", "MNIST_FILES"]

#: Dataset tasks: ``{operation: one line for --help}``.
DATASET_TASKS: dict[str, str] = {
    "digits": "scikit-learn's bundled 8x8 digits (1,797 images, 64 pixels / 16; no download)",
    "mnist": "MNIST from IDX files in --data PATH (784 pixels / 255)",
    "fashion_mnist": "Fashion-MNIST from IDX files in --data PATH (784 pixels / 255)",
}
#: Operations whose examples come from the user's files (``task.data`` required).
FILE_TASKS = ("mnist", "fashion_mnist")
#: The four IDX files of MNIST / Fashion-MNIST: ``{role: base name}`` (raw or ``.gz``).
MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
N_CLASSES = 10

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def is_dataset_task(operation: object) -> bool:
    """Whether ``operation`` names a dataset task (:data:`DATASET_TASKS`)."""
    return isinstance(operation, str) and operation in DATASET_TASKS


def dataset_task_size(operation: str) -> int | None:
    """The number of classes a dataset task fixes (its ``p``), ``None`` for other names."""
    return N_CLASSES if is_dataset_task(operation) else None


# -- IDX files ----------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; raw or gzip-compressed) into a numpy array.

    Notes:
        Layout: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
        ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions ``k``, then
        ``k`` big-endian uint32 sizes and the data in row-major order. Gzip is recognised by its
        magic bytes, whatever the file's name.

    Raises:
        ConfigError: the file is missing or unreadable, not an IDX file, or its data are shorter or
            longer than its header says (the message names the file).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"task.data: cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as e:
            raise ConfigError(f"task.data: {path} is a damaged gzip file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise ConfigError(f"task.data: {path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"task.data: {path}: the IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != want:
        raise ConfigError(f"task.data: {path}: the IDX header says shape {list(shape)} ({want} bytes of data), "
                          f"the file holds {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip when ``compress``, or when the name ends in ``.gz``); for tests
    and for users who convert their data."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise ConfigError(f"write_idx: dtype {array.dtype} has no IDX type code")
    body = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body += np.ascontiguousarray(array, dtype=np.dtype(_IDX_DTYPES[code])).tobytes()
    if compress or (compress is None and path.name.endswith(".gz")):
        body = gzip.compress(body, mtime=0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(body)
    os.replace(tmp, path)


def _find(root: Path, base: str) -> Path:
    for d in (root, root / "raw"):
        for name in (base, base + ".gz"):
            if (d / name).is_file():
                return d / name
    raise ConfigError(f"task.data: {root} has no {base} (nor {base}.gz, also looked in {root / 'raw'}); "
                      f"MNIST / Fashion-MNIST need the four IDX files {', '.join(MNIST_FILES.values())}")


# -- the dataset and the task -------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorDataset(Dataset):
    """Every example of a dataset task: ``tokens`` holds the raw inputs (uint8 ``[N, d]``), ``pair_index``
    the example ids ``0..N-1``; :meth:`select` returns normalised float32 inputs.

    Attributes (besides :class:`~grokinterp.tasks.base.Dataset`'s):
        scale: the inputs are ``tokens / scale`` (16 for ``digits``, 255 for MNIST).
        n_pool: ids below this are the training pool; ids from it on are a held-out test file
            (``n_pool == N`` when the test set is the rest of the pool, ``digits``).
    """

    scale: float = 1.0
    n_pool: int = 0

    def select(self, pairs: np.ndarray, layout: str = "a_b_eq") -> tuple[np.ndarray, np.ndarray]:
        """``(inputs float32 [m, d], labels int64 [m])`` of the example ids ``pairs`` (``layout`` is not read:
        a vector has no token layout)."""
        idx = np.asarray(pairs, dtype=np.int64)
        bad = (idx < 0) | (idx >= len(self.labels))
        if bad.any():
            raise ConfigError(f"pairs: example ids {idx[bad][:5].tolist()} are outside the {len(self.labels)} "
                              f"examples of {self.operation!r}")
        x = self.tokens[idx].astype(np.float32) / np.float32(self.scale)
        return np.ascontiguousarray(x), self.labels[idx]


class VectorTask(Task):
    """A classification dataset as a task (module notes): examples are ids, inputs are vectors."""

    vector_input = True
    structure = None

    def __init__(self, name: str, inputs: np.ndarray, labels: np.ndarray, scale: float, n_pool: int,
                 source: str):
        self.name, self.n, self.source = name, N_CLASSES, source
        self.n_ctx = int(inputs.shape[1])
        ids = np.arange(len(labels), dtype=np.int64)
        self._vectors = VectorDataset(N_CLASSES, name, ids, inputs, labels.astype(np.int64), float(scale), int(n_pool))

    @property
    def p(self) -> int:
        return self.n

    @property
    def input_dim(self) -> int:
        """Width of an example's input vector."""
        return self.n_ctx

    @property
    def n_examples(self) -> int:
        return len(self._vectors.labels)

    @property
    def n_pool(self) -> int:
        """The training pool: example ids ``< n_pool`` (the rest, if any, is a held-out test file)."""
        return self._vectors.n_pool

    def labels_of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise ConfigError(f"task.operation: {self.name} classifies vectors; it has no operands (a, b)")

    def dataset(self) -> VectorDataset:
        return self._vectors

    def valid_pairs(self) -> np.ndarray:
        """Every example id ``0..N-1``."""
        return self._vectors.pair_index

    def label_grid(self) -> np.ndarray:
        """The label of every example id (``[N]``; there is no ``a × b`` grid)."""
        return self._vectors.labels

    def default_train_size(self, frac_train: float) -> int:
        return min(max(int(round(frac_train * self.n_pool)), 1), self.n_pool - 1)

    def split(self, frac_train: float, seed: int, method: str = "random",
              train_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(train_ids, test_ids)``, sorted int64: ``train_size`` ids (default ``round(frac_train · pool)``)
        from a PCG64 permutation of the training pool seeded with ``seed``; the test set is the rest of
        the pool, or the held-out test file when the dataset has one. ``method`` must be ``random``."""
        if method != "random":
            raise ConfigError(f"task.split_method: {self.name} draws its training images at random "
                              f"(split_method 'random'), got {method!r}")
        k = self.default_train_size(frac_train) if train_size is None else int(train_size)
        pool = self.n_pool
        if not 1 <= k <= pool - (1 if pool == self.n_examples else 0):
            raise ConfigError(f"task.train_size: must lie in [1, {pool - (pool == self.n_examples)}] for {self.name} "
                              f"({pool} training-pool examples), got {k}")
        perm = np.random.default_rng(seed).permutation(pool)
        trn = np.sort(perm[:k]).astype(np.int64)
        if pool == self.n_examples:
            tst = np.sort(perm[k:]).astype(np.int64)
        else:
            tst = np.arange(pool, self.n_examples, dtype=np.int64)
        return trn, tst

    def describe(self) -> str:
        return (f"{self.name}: {self.n_examples} images of {self.n_ctx} pixels, {self.n} classes "
                f"({self.source})")

    def __repr__(self) -> str:
        return f"VectorTask({self.name!r}, examples={self.n_examples}, d={self.n_ctx})"


_LOADED: dict[tuple, VectorTask] = {}


def _digits() -> VectorTask:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("task.operation: 'digits' needs scikit-learn (pip install 'grokinterp[embed]'; it is "
                          "also in [dev]); its 8x8 digits ship with it, nothing is downloaded") from None
    d = load_digits()
    x = np.asarray(d.data)
    if x.shape != (1797, 64) or x.min() < 0 or x.max() > 16:
        raise ConfigError(f"task.operation: scikit-learn's digits have an unexpected shape {x.shape}")
    return VectorTask("digits", x.astype(np.uint8), np.asarray(d.target), 16.0, len(x),
                      "scikit-learn load_digits, pixels / 16")


def _idx_task(name: str, data: str) -> VectorTask:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise ConfigError(f"task.data: {name} reads IDX files from a directory; {root} is not one")
    arrays = {role: read_idx(_find(root, base)) for role, base in MNIST_FILES.items()}
    for split in ("train", "test"):
        img, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        path = _find(root, MNIST_FILES[f"{split}_images"])
        if img.ndim != 3 or img.dtype != np.uint8:
            raise ConfigError(f"task.data: {path}: expected uint8 images [n, rows, cols], got {img.dtype} "
                              f"{list(img.shape)}")
        if lab.ndim != 1 or len(lab) != len(img):
            raise ConfigError(f"task.data: {_find(root, MNIST_FILES[f'{split}_labels'])}: expected {len(img)} labels "
                              f"(one per image), got shape {list(lab.shape)}")
        if len(lab) and (lab.min() < 0 or lab.max() >= N_CLASSES):
            raise ConfigError(f"task.data: {_find(root, MNIST_FILES[f'{split}_labels'])}: labels must lie in "
                              f"[0, {N_CLASSES}), got {int(lab.min())}..{int(lab.max())}")
    tr, te = arrays["train_images"], arrays["test_images"]
    if tr.shape[1:] != te.shape[1:]:
        raise ConfigError(f"task.data: training images are {list(tr.shape[1:])}, test images "
                          f"{list(te.shape[1:])}")
    if len(tr) < 2 or len(te) < 1:
        raise ConfigError(f"task.data: {root}: need at least 2 training images and 1 test image")
    x = np.concatenate([tr.reshape(len(tr), -1), te.reshape(len(te), -1)])
    y = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    return VectorTask(name, x, y, 255.0, len(tr), f"IDX files in {root}, pixels / 255")


def dataset_task(operation: str, data: str | None = None) -> VectorTask:
    """The dataset task ``operation`` (loaded once per process and file set).

    Raises:
        ConfigError: an unknown name, ``task.data`` missing for a file task (or given for ``digits``),
            a missing or malformed file (named).
    """
    if not is_dataset_task(operation):
        raise ConfigError(f"task.operation: {operation!r} is not a dataset task; known: {', '.join(DATASET_TASKS)}")
    if operation in FILE_TASKS:
        if not data:
            raise ConfigError(f"task.data: {operation} reads the IDX files you have (give --data DIR); nothing is "
                              f"downloaded")
        root = Path(data).expanduser()
        stamp = tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                             for d in (root, root / "raw") if d.is_dir() for p in d.iterdir() if p.is_file()))
        key: tuple = (operation, str(root.resolve()) if root.exists() else str(root), stamp)
    else:
        if data:
            raise ConfigError(f"task.data: {operation} ships with scikit-learn and reads no files; leave --data out")
        key = (operation,)
    task = _LOADED.get(key)
    if task is None:
        task = _digits() if operation == "digits" else _idx_task(operation, str(data))
        _LOADED[key] = task
    return task
