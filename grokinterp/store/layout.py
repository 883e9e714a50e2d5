"""The run-directory layout: file names, atomic writes, JSON and safetensors headers.

Shared by the writer, the loader, the integrity checks and the legacy import (the format itself is
documented in ``checkpoints/README.md``).

Every file of a run is written to a temporary name beside its target, fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash leaves the old file or the new one,
never half of one. Tensors go through safetensors; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..config import is_int
from ..errors import RunError

# Names of the files in a run directory (documented in checkpoints/README.md).
RUN_JSON = "run.json"  # immutable: configs, versions, seeds, device
PROGRESS_JSON = "progress.json"  # updated at each flush: epoch reached, finished or not
SPLIT_FILE = "split.safetensors"  # train_pairs / test_pairs (a * p + b)
METRICS_CSV = "metrics.csv"  # one row per epoch
STATE_FILE = "state.safetensors"  # parameters, optimizer and RNG state at the last flush
SHARD_DIR = "shards"
MANIFEST_JSON = "manifest.json"  # size and SHA-256 of every file, rewritten after each flush
RUN_KIND = "grokinterp-run"
# Files other tools derive from a run and keep beside it (``grokinterp report``); they are not
# part of the run, so the manifest neither lists them nor counts them as unlisted.
DERIVED_FILES = frozenset({"report.html"})

# safetensors dtype strings of the numpy dtypes we read back.
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def shard_name(first_epoch: int, last_epoch: int) -> str:
    return f"ckpt_{first_epoch:08d}_{last_epoch:08d}.safetensors"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def is_safe_relpath(rel: Any) -> bool:
    """A manifest key must name a file inside the run: relative, POSIX, no ``..``, no empty parts."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path, what: str = "file") -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{path}: {what} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def looks_like_run(path: Path) -> bool:
    """Whether ``path`` holds a readable ``run.json`` of kind ``grokinterp-run`` (safe to replace)."""
    try:
        info = read_json(Path(path) / RUN_JSON, "run metadata")
    except RunError:
        return False
    return isinstance(info, dict) and info.get("kind") == RUN_KIND


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse and check a safetensors header: ``({name: {dtype, shape, data_offsets}}, data_start)``.

    Checks that the file holds the whole header and every tensor's bytes, and that each tensor's
    byte size matches its dtype and shape. Raises :class:`RunError` naming the file otherwise.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise RunError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise RunError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file {size})")
            raw = f.read(n)
    except FileNotFoundError:
        raise RunError(f"{path}: file is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read: {e.strerror}") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError (a ValueError)
        raise RunError(f"{path}: corrupt safetensors header ({type(e).__name__}: {str(e)[:200]})") from None
    start = 8 + n
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise RunError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape, offsets = list(info["shape"]), list(info["data_offsets"])
            if len(offsets) != 2 or not all(is_int(x) for x in shape + offsets):
                raise ValueError
            begin, end = offsets
        except (KeyError, TypeError, ValueError):
            raise RunError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if any(s < 0 for s in shape) or begin < 0 or end < begin or end - begin != dtype.itemsize * math.prod(shape):
            raise RunError(f"{path}: tensor {name!r}: byte range does not match dtype {info['dtype']} and shape {shape}")
        if start + end > size:
            raise RunError(f"{path}: truncated: tensor {name!r} needs bytes up to {start + end}, file has {size}")
    return header, start


def mmap_tensors(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Memory-map tensors of a safetensors file as numpy arrays (copy-on-write, nothing read yet)."""
    header, start = read_safetensors_header(path)
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="c")
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: cannot map the file: {e}") from None
    out = {}
    for name in names if names is not None else [k for k in header if k != "__metadata__"]:
        if name not in header:
            raise RunError(f"{path}: tensor {name!r} is missing")
        info = header[name]
        begin, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        out[name] = mm[start + begin : start + end].view(dtype).reshape(info["shape"])
    return out
