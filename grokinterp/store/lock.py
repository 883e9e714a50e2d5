"""The run lock: at most one writer per run directory, on a local disk or a cluster's shared file system.

``grokinterp train`` (new runs, ``--resume``, ``--overwrite``) holds the lock of its run for as long as
it writes; ``info``, ``verify`` and :attr:`grokinterp.store.run.Run.writer` read who holds it.

Design (also in ``checkpoints/README.md``):

* **Exclusion is the existence of** ``RUN/.grokinterp.lock``, created atomically: the holder's record
  (JSON) is written to a private file, which is then hard-linked to the lock's name. ``link()``
  fails when the name exists, atomically, on local file systems and on the shared ones clusters use
  (NFS v3 and later, Lustre, GPFS, BeeGFS); a lost NFS reply is recognised by the private file's
  link count. No lock manager is involved, so exclusion holds even where ``flock``/``fcntl`` locks
  are local to one node or unsupported (BeeGFS by default, Lustre mounted without ``flock``).
* **The record names the holder**: host, pid, the process's start time, the machine's boot id and
  pid namespace, when the lock was taken, a random token and the command.
* **Liveness**: the holder keeps an ``flock`` on the lock file where the file system supports it (a
  hint: the kernel drops it when the process dies) and touches the file's modification time every
  :data:`HEARTBEAT_S` seconds from a background thread (the heartbeat).
* **Stale locks**: on the *same host* (same host name, boot id and pid namespace) a lock whose
  process is gone — or whose pid now belongs to a process started at another time, or is a zombie —
  is stale and taken over at once. A lock held from *another host* cannot be checked that way: it is
  taken over only when its heartbeat is older than :data:`STALE_AFTER_S` (10 minutes) and no
  ``flock`` is held on it. Until then a second writer exits naming the holder and the heartbeat's
  age: stale-lock detection waits rather than risk two writers. (Clocks of the hosts are assumed to
  agree within a few minutes.)
* **Taking over** renames the stale file to a private name and checks that what it moved is the
  record it judged stale (if a competitor's fresh lock was moved instead, it is linked back); then
  the lock is taken the normal way, by ``link()``, which only one competitor can win.
* **Fencing**: before every flush the writer checks that the lock file is still its own (the same
  file, by device and inode); if not, it stops without writing (:class:`~grokinterp.errors.RunError`).
* **Release** removes the lock file after the same check.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunError
from . import layout as _io

__all__ = ["RunLock", "Holder", "acquire", "holder", "HEARTBEAT_S", "STALE_AFTER_S"]

#: Seconds between two heartbeats of a holder (the lock file's modification time is touched).
HEARTBEAT_S = 30.0
#: A lock held from another host is stale when its heartbeat is older than this (seconds).
STALE_AFTER_S = 600.0
_RECORD_MAX = 1 << 16
_HELD: dict[str, "RunLock"] = {}  # resolved lock path -> the lock this process holds (never re-opened here)
_HELD_GUARD = threading.Lock()
if hasattr(os, "register_at_fork"):  # a forked child holds none of its parent's locks
    os.register_at_fork(after_in_child=_HELD.clear)


def _key(path: Path) -> str:
    return os.path.realpath(path)


# -- who we are -----------------------------------------------------------------------------------
def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` of a process, from ``/proc`` (Linux)."""
    text = _read_text(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    st = _proc_stat(pid)
    return {"host": socket.gethostname(), "pid": pid, "pid_start": st[1] if st else None,
            "boot_id": _read_text("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_namespace()}


@dataclass(frozen=True)
class Holder:
    """Who holds a run's lock, as its record says.

    Attributes:
        host, pid: where the holding process runs.
        started: when the lock was taken (ISO 8601, local time of the holder).
        command: what holds it (``train``, ``resume``).
        heartbeat_age_s: seconds since the holder's last heartbeat (the lock file's modification time).
        alive: ``True`` (the holder is running), ``False`` (gone: the lock is stale) or ``None``
            (cannot tell yet: another host whose heartbeat is recent).
        this_process: the lock is held by this very process.
        record: the whole record (``token``, ``boot_id``, ``pid_ns``, ``pid_start``, ...).
    """

    host: str
    pid: int
    started: str
    command: str
    heartbeat_age_s: float
    alive: bool | None
    this_process: bool
    record: dict[str, Any]

    def describe(self) -> str:
        """One line: ``host H, pid P, since T (command C)``."""
        return f"host {self.host}, pid {self.pid}, since {self.started} ({self.command})"


def _same_host(rec: dict[str, Any], me: dict[str, Any]) -> bool:
    if rec.get("host") != me["host"]:
        return False
    for key in ("boot_id", "pid_ns"):  # another boot or another container: the pid means nothing here
        if rec.get(key) != me[key]:
            return False
    return True


def _pid_alive(pid: Any, pid_start: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    except OSError:
        return True
    st = _proc_stat(pid)
    if st is not None:
        state, start = st
        if state in ("Z", "X"):  # a zombie or dead process holds nothing
            return False
        if isinstance(pid_start, int) and start != pid_start:  # the pid was reused
            return False
    return True


def _flock_held(path: Path) -> bool | None:
    """Whether another open file holds an ``flock`` on ``path`` (``None``: cannot tell)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_record(path: Path) -> tuple[dict[str, Any] | None, os.stat_result] | None:
    """The lock file's record (``None`` if unreadable) and its stat; ``None`` when there is no lock file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunError(f"{path}: cannot read the run lock ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise RunError(f"{path}: the run lock is {_io.describe_mode(st.st_mode)}, not a regular file; remove it")
    try:
        raw = _io.read_file(path, None, "run lock", _RECORD_MAX)
        rec = json.loads(raw)
        if not isinstance(rec, dict) or not isinstance(rec.get("token"), str):
            rec = None
    except (RunError, ValueError, RecursionError):
        rec = None
    return rec, st


def _judge(path: Path, rec: dict[str, Any] | None, st: os.stat_result) -> Holder | None:
    """The holder of a lock file (``alive`` decided as the module notes say); ``None``: unreadable record."""
    age = max(time.time() - st.st_mtime, 0.0)
    if rec is None:
        return None
    me = _identity()
    with _HELD_GUARD:
        mine = _HELD.get(_key(path))
    if mine is not None and mine.record.get("token") == rec.get("token"):
        alive: bool | None = True
    elif _same_host(rec, me):
        alive = _pid_alive(rec.get("pid"), rec.get("pid_start"))
    elif _flock_held(path):
        alive = True
    else:
        alive = False if age > STALE_AFTER_S else None
    pid = rec.get("pid")
    return Holder(host=str(rec.get("host")), pid=pid if isinstance(pid, int) else -1, started=str(rec.get("started")),
                  command=str(rec.get("command")), heartbeat_age_s=age, alive=alive,
                  this_process=mine is not None and mine.record.get("token") == rec.get("token"), record=rec)


def holder(run_dir: str | os.PathLike) -> Holder | None:
    """Who holds the lock of ``run_dir`` (``None``: nobody, or only a stale lock whose holder is gone
    is left, which the next writer takes over). Never takes or changes the lock."""
    path = Path(run_dir) / _io.LOCK_FILE
    with _HELD_GUARD:
        mine = _HELD.get(_key(path))
    if mine is not None:
        return Holder(host=mine.record["host"], pid=mine.record["pid"], started=mine.record["started"],
                      command=mine.record["command"], heartbeat_age_s=0.0, alive=True, this_process=True,
                      record=dict(mine.record))
    got = _read_record(path)
    if got is None:
        return None
    rec, st = got
    h = _judge(path, rec, st)
    if h is None:  # a record being written, or damaged: someone may be taking the lock right now
        if time.time() - st.st_mtime > STALE_AFTER_S:
            return None  # unreadable and untouched for long: stale (the next writer takes it over)
        return Holder(host="?", pid=-1, started="?", command="?", heartbeat_age_s=max(time.time() - st.st_mtime, 0),
                      alive=None, this_process=False, record={})
    return h if h.alive is not False else None


# -- taking and holding the lock ------------------------------------------------------------------
class RunLock:
    """A held run lock (see the module notes). Release with :meth:`release` or use as a context manager.

    Attributes:
        run_dir: the run directory.
        path: the lock file.
        record: what the lock file says (host, pid, started, token, ...).
    """

    def __init__(self, run_dir: Path, path: Path, record: dict[str, Any], fd: int):
        self.run_dir, self.path, self.record, self._fd = run_dir, path, record, fd
        self._key = _key(path)
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"grokinterp-lock-heartbeat {run_dir}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def check(self) -> None:
        """Fencing: raise :class:`RunError` unless the lock file is still this lock's (before each write)."""
        if not self.held:
            raise RunError(f"{self.run_dir}: the run lock was released; nothing may be written")
        try:
            st = os.lstat(self.path)
            ok = (st.st_dev, st.st_ino) == self._ident
        except OSError:
            ok = False
        if not ok:
            other = None
            try:  # what the lock file says now (not this process's registry: that still names us)
                got = _read_record(self.path)
                other = _judge(self.path, *got) if got is not None else None
            except RunError:
                pass
            now = f" (now held by {other.describe()})" if other is not None and not other.this_process else ""
            raise RunError(f"{self.run_dir}: this process no longer holds the run lock{now}; stopping without "
                           f"writing (a stale-lock takeover happened while it was paused?)")

    def release(self) -> None:
        """Stop the heartbeat, remove the lock file (if it is still this lock's) and close it."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
                _io.fsync_dir(self.run_dir)
        except OSError:
            pass
        with _HELD_GUARD:
            if _HELD.get(self._key) is self:
                del _HELD[self._key]
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.run_dir)!r}, held={self.held})"


def _refusal(run_dir: Path, h: Holder | None, path: Path) -> RunError:
    if h is None:
        return RunError(f"{run_dir}: the run lock {path.name} is being taken by another process right now, or is "
                        f"unreadable; try again (remove {path} only if no process uses the run)")
    if h.this_process:
        return RunError(f"{run_dir}: this process is already writing the run ({h.describe()})")
    if h.alive:
        return RunError(f"{run_dir}: the run is being written by {h.describe()}; wait for it to finish or stop it "
                        f"(Ctrl-C / SIGTERM flushes and exits)")
    return RunError(
        f"{run_dir}: the run is locked by {h.describe()}, on another host whose process cannot be checked from "
        f"here; its last heartbeat was {h.heartbeat_age_s:.0f} s ago. The lock is taken over once the heartbeat is "
        f"older than {STALE_AFTER_S:.0f} s; if you are sure that process is gone, remove {path}")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_link(private: Path, path: Path) -> bool:
    """Make ``path`` a second name of ``private`` unless ``path`` exists; True if it now is ours."""
    try:
        os.link(private, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise NotImplementedError from e  # no hard links here: fall back to O_EXCL
        try:  # NFS: the link may have been made although the reply was lost
            return os.stat(private).st_nlink == 2 and os.path.samefile(private, path)
        except OSError:
            raise RunError(f"{path}: cannot create the run lock ({e.strerror or e})") from None


def _take(path: Path, record: dict[str, Any]) -> bool:
    """One attempt at creating the lock file holding ``record``."""
    data = (json.dumps(record, indent=1) + "\n").encode()
    private = path.with_name(f"{path.name}.{record['token']}")
    try:
        _write_private(private, data)
    except OSError as e:
        raise RunError(f"{path.parent}: cannot create the run lock ({e.strerror or e}; is the directory "
                       f"writable?)") from None
    try:
        return _try_link(private, path)
    except NotImplementedError:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    finally:
        try:
            os.unlink(private)
        except OSError:
            pass


def _take_over(path: Path, stale_token: str | None, my_token: str) -> None:
    """Remove the stale lock file whose record has ``stale_token`` (and nothing else) from ``path``."""
    grave = path.with_name(f"{path.name}.stale.{my_token}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return  # a competitor removed it first
    except OSError as e:
        raise RunError(f"{path}: cannot remove a stale run lock ({e.strerror or e})") from None
    try:
        moved = json.loads(_io.read_file(grave, None, "run lock", _RECORD_MAX))
        moved_token = moved.get("token") if isinstance(moved, dict) else None
    except (RunError, ValueError, RecursionError):
        moved_token = None
    if moved_token != stale_token:  # a competitor's fresh lock: put it back (link fails if a third one exists)
        try:
            os.link(grave, path)
        except OSError:
            pass
    try:
        os.unlink(grave)
    except OSError:
        pass


def acquire(run_dir: str | os.PathLike, command: str = "train") -> RunLock:
    """Take the lock of ``run_dir`` (which must exist), taking over a stale one (see the module notes).

    Raises:
        RunError: the run is locked by a live (or not yet provably gone) holder, named in the message;
            or the lock file cannot be created.
    """
    import fcntl

    run_dir = Path(run_dir)
    path = run_dir / _io.LOCK_FILE
    with _HELD_GUARD:
        if _key(path) in _HELD:
            mine = _HELD[_key(path)]
            raise RunError(f"{run_dir}: this process is already writing the run (since {mine.record['started']})")
    token = secrets.token_hex(16)
    record = {**_identity(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_unix": time.time(),
              "command": command, "token": token, "grokinterp_lock": 1}
    deadline = time.monotonic() + 5.0
    while True:
        if _take(path, record):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            for _ in range(20):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # a reader probing this instant
                    time.sleep(0.01)
                except OSError:
                    break  # no flock here: the record and the heartbeat remain
            lock = RunLock(run_dir, path, record, fd)
            with _HELD_GUARD:
                _HELD[lock._key] = lock
            return lock
        got = _read_record(path)
        if got is None:
            continue  # released meanwhile: try again
        rec, st = got
        h = _judge(path, rec, st)
        if h is None and time.time() - st.st_mtime > STALE_AFTER_S:
            _take_over(path, None, token)  # an unreadable record nobody has touched for long
            continue
        if h is not None and h.alive is False:
            _take_over(path, rec.get("token") if rec else None, token)
            continue
        if time.monotonic() > deadline or (h is not None and h.alive):
            raise _refusal(run_dir, h, path)
        time.sleep(0.05)  # a record being written: look again
