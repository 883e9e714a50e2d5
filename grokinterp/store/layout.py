"""The run-directory layout: file names, atomic writes, JSON and safetensors headers.

Shared by the writer, the loader, the integrity checks and the legacy import (the format itself is
documented in ``checkpoints/README.md``).

Every file of a run is written to a temporary name beside its target, fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash leaves the old file or the new one,
never half of one. Tensors go through safetensors; nothing is ever unpickled.

Every read goes through :func:`open_regular`: only a regular file inside the run directory is
ever opened (a FIFO, device, socket or directory where a file should be, or a symbolic link
leading out of the run, is a :class:`RunError` naming the path, never a hang), and JSON files are
size-capped before they are read (:data:`grokinterp.config.LIMITS`).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..config import LIMITS, is_int
from ..errors import RunError

# Names of the files in a run directory (documented in checkpoints/README.md).
RUN_JSON = "run.json"  # immutable: configs, versions, seeds, device
PROGRESS_JSON = "progress.json"  # updated at each flush: epoch reached, finished or not
SPLIT_FILE = "split.safetensors"  # train_pairs / test_pairs (a * p + b)
METRICS_CSV = "metrics.csv"  # one row per epoch
STATE_FILE = "state.safetensors"  # parameters, optimizer and RNG state at the last flush
SHARD_DIR = "shards"
MANIFEST_JSON = "manifest.json"  # size and SHA-256 of every file, rewritten after each flush
LOCK_FILE = ".grokinterp.lock"  # the run lock (store/lock.py); a dot-file: never listed or verified
RUN_KIND = "grokinterp-run"
# Files other tools derive from a run and keep beside it (``grokinterp report``); they are not
# part of the run, so the manifest neither lists them nor counts them as unlisted. ``llc.csv``: the
# local learning coefficient table ``grokinterp llc`` caches (the report draws it when present).
DERIVED_FILES = frozenset({"report.html", "llc.csv"})
LLC_TABLE = "llc.csv"

# safetensors dtype strings of the numpy dtypes we read back.
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def shard_name(first_epoch: int, last_epoch: int) -> str:
    return f"ckpt_{first_epoch:08d}_{last_epoch:08d}.safetensors"


def shard_span(name: str) -> tuple[int, int] | None:
    """``(first, last)`` epoch of a shard file name ``ckpt_<first>_<last>.safetensors`` (``None``: not one)."""
    parts = name.split("_")
    if len(parts) != 3 or parts[0] != "ckpt" or not parts[2].endswith(".safetensors"):
        return None
    first, last = parts[1], parts[2][: -len(".safetensors")]
    if not (first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
        return None
    if shard_name(int(first), int(last)) != name:
        return None
    return int(first), int(last)


def fsync_dir(path: Path) -> None:
    """fsync a directory (makes a rename or unlink in it durable); errors are ignored."""
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
    fsync_dir(path.parent)


def is_safe_relpath(rel: Any) -> bool:
    """A manifest key must name a file inside the run: relative, POSIX, no ``..``, no empty parts."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


# -- reading: regular files inside the run only, never a hang ---------------------------------------
def describe_mode(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a FIFO (named pipe)", "a directory", ...)."""
    for test, words in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return words
    return "not a regular file"


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether the (resolved) ``path`` lies inside the (resolved) directory ``root``."""
    path, root = os.fspath(path), os.fspath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def open_regular(path: str | os.PathLike, root: str | os.PathLike | None = None, what: str = "file") -> int:
    """Open a file for reading only if it is a regular file (inside ``root`` when given); returns a descriptor.

    The file type is checked before opening (a FIFO or a device is never opened) and again on the
    open descriptor (``O_NONBLOCK``, so a FIFO swapped in between cannot block either). A symbolic
    link is followed only if it ends inside ``root``.

    Raises:
        RunError: the file is missing, unreadable, not a regular file, or leads outside ``root``,
            naming ``path`` and ``what`` it should be.
    """
    path = Path(path)
    try:
        real = os.path.realpath(path)
        if root is not None and not is_within(real, os.path.realpath(root)):
            raise RunError(f"{path}: {what} is a symbolic link leading outside the run directory (to {real}); "
                           f"only files inside the run are read")
        st = os.stat(real)
    except FileNotFoundError:
        raise RunError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RunError(f"{path}: {what} is {describe_mode(st.st_mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise RunError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunError(f"{path}: {what} is {describe_mode(st.st_mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(path: str | os.PathLike, root: str | os.PathLike | None = None, what: str = "file",
              max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`), refused beyond ``max_bytes`` before reading."""
    fd = open_regular(path, root, what)
    try:
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise RunError(f"{path}: {what} is {size} bytes, more than the {max_bytes} it may have; refusing to read it")
        limit = size if max_bytes is None else max_bytes
        chunks, n = [], 0
        while True:  # read to the end, but never more than the cap (the file may grow meanwhile)
            block = os.read(fd, min(1 << 24, limit + 1 - n))
            if not block:
                break
            chunks.append(block)
            n += len(block)
            if max_bytes is not None and n > max_bytes:
                raise RunError(f"{path}: {what} grew beyond the {max_bytes} bytes it may have while being read")
        return b"".join(chunks)
    except OSError as e:
        raise RunError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def map_file(path: str | os.PathLike, root: str | os.PathLike | None = None, what: str = "file") -> mmap.mmap | None:
    """Map a regular file copy-on-write (see :func:`open_regular`); ``None`` for an empty file."""
    fd = open_regular(path, root, what)
    try:
        if os.fstat(fd).st_size == 0:
            return None
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: cannot map {what}: {e}") from None
    finally:
        os.close(fd)


def parse_json(raw: bytes, path: Path, what: str = "file") -> Any:
    """Parse JSON bytes read from ``path``; a :class:`RunError` naming the file otherwise."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{path}: {what} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def read_json(path: Path, what: str = "file", root: str | os.PathLike | None = None,
              max_bytes: int = LIMITS.json_bytes) -> Any:
    """Read and parse a JSON file (a regular file, at most ``max_bytes``)."""
    return parse_json(read_file(path, root, what, max_bytes), Path(path), what)


# -- digests --------------------------------------------------------------------------------------
#: Digests a manifest entry may carry: SHA-256 (always; ``verify`` uses it) and xxh3-128 (fast, used
#: by the checks on read when present).
DIGESTS = ("sha256", "xxh3_128")


def _xxh3():
    import xxhash

    return xxhash.xxh3_128()


def digest_entry(data: bytes | mmap.mmap | memoryview) -> dict[str, Any]:
    """The manifest entry of a file's contents: ``{"size", "sha256", "xxh3_128"}``."""
    x = _xxh3()
    x.update(data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "xxh3_128": x.hexdigest()}


def digest_of(data: bytes | mmap.mmap | memoryview | None, algorithm: str) -> str:
    """Hex digest of ``data`` (``None``: an empty file) with ``algorithm`` (one of :data:`DIGESTS`)."""
    h = hashlib.sha256() if algorithm == "sha256" else _xxh3()
    if data is not None:
        h.update(data)
    return h.hexdigest()


def sha256_file(path: Path, root: str | os.PathLike | None = None) -> str:
    """Hex SHA-256 of a regular file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    fd = open_regular(path, root)
    try:
        with os.fdopen(fd, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise RunError(f"{path}: cannot read: {e.strerror or e}") from None
    return h.hexdigest()


def check_path_length(path: str | os.PathLike, what: str) -> None:
    """Refuse a path the file system cannot hold (a component over NAME_MAX or the whole over PATH_MAX)."""
    text = os.fspath(path)
    try:
        name_max = os.pathconf(_existing_parent(text), "PC_NAME_MAX")
        path_max = os.pathconf(_existing_parent(text), "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(part)) for part in Path(text).parts), default=0)
    if longest > name_max:
        raise RunError(f"{what}: a path component is {longest} bytes long, more than the {name_max} this file "
                       f"system allows")
    if len(os.fsencode(os.path.abspath(text))) >= path_max:
        raise RunError(f"{what}: the path is {len(os.fsencode(os.path.abspath(text)))} bytes long, more than the "
                       f"{path_max - 1} this file system allows")


def _existing_parent(text: str) -> str:
    p = Path(os.path.abspath(text))
    for candidate in (p, *p.parents):
        try:
            if candidate.is_dir():
                return str(candidate)
        except OSError:
            continue
    return "/"


def looks_like_run(path: Path) -> bool:
    """Whether ``path`` holds a readable ``run.json`` of kind ``grokinterp-run`` (safe to replace)."""
    try:
        info = read_json(Path(path) / RUN_JSON, "run metadata")
    except RunError:
        return False
    return isinstance(info, dict) and info.get("kind") == RUN_KIND


def parse_safetensors_header(buf: bytes | mmap.mmap | None, path: Path) -> tuple[dict[str, Any], int]:
    """Parse and check the header of safetensors bytes: ``({name: {dtype, shape, data_offsets}}, data_start)``.

    Checks that the buffer holds the whole header and every tensor's bytes, that each tensor's byte
    size matches its dtype and shape, and that the tensors tile the data section exactly (no gaps,
    no overlaps, no aliasing: what the safetensors format requires). Raises :class:`RunError`
    naming the file otherwise.
    """
    size = 0 if buf is None else len(buf)
    if size < 8:
        raise RunError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > min(size - 8, 100_000_000):
        raise RunError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file {size})")
    try:
        header = json.loads(bytes(buf[8: 8 + n]))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError (a ValueError)
        raise RunError(f"{path}: corrupt safetensors header ({type(e).__name__}: {str(e)[:200]})") from None
    start = 8 + n
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise RunError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    ranges = []
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
        ranges.append((begin, end, name))
    ranges.sort()
    for (_, end0, name0), (begin, _, name) in zip(ranges, ranges[1:]):
        if begin < end0:
            raise RunError(f"{path}: corrupt safetensors header: tensors {name0!r} and {name!r} overlap (their "
                           f"byte ranges alias each other)")
    pos = 0
    for begin, end, name in ranges:
        if begin != pos:
            raise RunError(f"{path}: corrupt safetensors header: tensor {name!r} leaves bytes {pos}..{begin} "
                           f"unused before it")
        pos = end
    if start + pos != size:
        raise RunError(f"{path}: corrupt safetensors file: {size - start - pos} bytes after the last tensor")
    return header, start


def read_safetensors_header(path: Path, root: str | os.PathLike | None = None) -> tuple[dict[str, Any], int]:
    """:func:`parse_safetensors_header` of a file (a regular file; see :func:`open_regular`)."""
    return parse_safetensors_header(map_file(path, root, "safetensors file"), Path(path))


def tensor_views(buf: mmap.mmap, header: dict[str, Any], start: int, names, path: Path) -> dict[str, np.ndarray]:
    """Numpy views of tensors in a mapped safetensors file (copy-on-write: nothing is read until used)."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    out = {}
    for name in names:
        if name not in header or name == "__metadata__":
            raise RunError(f"{path}: tensor {name!r} is missing")
        info = header[name]
        begin, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        out[name] = raw[start + begin: start + end].view(dtype).reshape(info["shape"])
    return out


def mmap_tensors(path: Path, names: list[str] | None = None,
                 root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Memory-map tensors of a safetensors file as numpy arrays (copy-on-write, nothing read yet)."""
    buf = map_file(path, root, "safetensors file")
    header, start = parse_safetensors_header(buf, Path(path))
    names = names if names is not None else [k for k in header if k != "__metadata__"]
    return tensor_views(buf, header, start, names, Path(path))
