"""Temporaries of atomic outputs, and their removal once the process that wrote them is gone.

`zarr_store.atomic_path(final)` writes into `.tmp-<name>-<id>` beside `final` and, while replacing an
old output, moves that aside as `.old-<name>-<id>`. The writer holds an exclusive `flock` on a
third sibling, `.lock-<name>-<id>`, from before the temporary exists until after both are gone
(`Claim`). The kernel drops the lock when the writer's process ends, however it ends (kill -9
included), so whether the lock can be taken says whether the owner is gone: exactly, whatever
became of its pid (a reused pid keeps nothing alive), and a live writer's temporaries are never
taken, not even from a concurrent run of the same stage. Forked children (pool and DataLoader
workers) close their copies of the lock, so the lock lives exactly as long as the writing process.

Who sweeps (`sweep`: the stale temporaries beside an output, in it and one level further down):
- every stage, first thing (`owns`), for every output it writes, whether or not it gets as far
  as writing (and `atomic_path`, before each write);
- the reaper: a small process each `roirecon` process forks at its start (`start_reaper`) that
  waits for it to end, then sweeps the outputs it `owns`. This is what makes `kill -9` leave nothing
  under DVC: DVC deletes a stage's outputs before running it, and after a kill the next `dvc repro`
  finds the dependencies as dvc.lock records them and checks the old outputs out of its cache
  without running the stage ("Stage is cached - skipping run"): a sweep that waited for the
  stage's next start would not come.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import time
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:   # not POSIX: no owner can be told gone; only lock-less leftovers are swept
    fcntl = None

# .tmp-<name>-<id> (the output being written), .old-<name>-<id> (the one it replaces),
# .lock-<name>-<id> (held by the writer). Leftovers of older versions have no lock: stale.
_NAME = re.compile(r"\.(tmp|old|lock)-(.+)-([0-9a-f]{8})")


def sibling(final: Path, kind: str, ident: str) -> Path:
    return final.with_name(f".{kind}-{final.name}-{ident}")


# ------------------------------------------------------------------ owning temporaries

_held: set[int] = set()   # the owner locks this process holds (fds)


class Claim:
    """The right to write `.tmp-`/`.old-` siblings of `final` under one id: the writer's `.lock-`
    sibling, locked. `release` once both are gone (renamed into place or removed)."""

    def __init__(self, final: Path):
        self.final = final
        while True:
            self.id = uuid.uuid4().hex[:8]
            self.lock = sibling(final, "lock", self.id)
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o644)
            except FileExistsError:
                continue
            if fcntl is None:
                break
            fcntl.flock(fd, fcntl.LOCK_EX)   # waits only for a sweeper that took it in the instant before
            if _same_file(self.lock, fd):
                break
            os.close(fd)                      # that sweeper removed it: take another id
        self.fd, self.pid = fd, os.getpid()
        _held.add(fd)

    def path(self, kind: str) -> Path:
        return sibling(self.final, kind, self.id)

    def release(self) -> None:
        if os.getpid() != self.pid or self.fd not in _held:   # a forked child never releases the parent's
            return
        _held.discard(self.fd)
        try:
            self.lock.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ------------------------------------------------------------------ sweeping

def _take(lock: Path) -> int | None:
    """Try the owner lock `lock`: -1 when there is none (no owner), an fd holding it when its owner
    is gone (close it to let go), None when its owner is alive."""
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return -1
    except OSError:
        return None   # unreadable: not ours to judge
    if fcntl is None:
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _groups(directory: Path, name: str | None = None) -> set[tuple[str, str]]:
    """The temporaries in `directory` (of the output `name`, or of any) as (output name, id)."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return set()
    return {(m.group(2), m.group(3)) for m in map(_NAME.fullmatch, entries)
            if m and (name is None or m.group(2) == name)}


def _sweep_group(directory: Path, name: str, ident: str) -> list[Path]:
    """Remove the temporaries `name` `ident` in `directory` if their owner is gone; what was removed."""
    lock = directory / f".lock-{name}-{ident}"
    fd = _take(lock)
    if fd is None:
        return []
    removed = []
    try:
        if fd >= 0 and not _same_file(lock, fd):
            return []   # another sweeper has just removed it (and what it guarded)
        for kind in ("tmp", "old"):
            p = directory / f".{kind}-{name}-{ident}"
            if _remove(p):
                removed.append(p)
        if fd >= 0 and _remove(lock):
            removed.append(lock)
    finally:
        if fd >= 0:
            os.close(fd)
    return removed


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    return not (path.exists() or path.is_symlink())


def sweep(final: Path | str) -> list[Path]:
    """Remove every stale temporary (owner gone) of the output `final`: its siblings, and when it is
    a directory those in it and in its subdirectories (files a stage writes one by one into an
    output directory, train-unet's `<checkpoint dir>/<config>/last.pt`); such a subdirectory that
    held nothing else goes too. Returns what was removed."""
    final = Path(final)
    removed = [p for key in sorted(_groups(final.parent, final.name)) for p in _sweep_group(final.parent, *key)]
    if final.is_dir() and not final.is_symlink():
        for top, dirs, _ in os.walk(final):
            here = Path(top)
            # a temporary is swept or alive, never entered; no deeper than one level below `final`
            dirs[:] = [] if here != final else [d for d in dirs if not _NAME.fullmatch(d)]
            found = [p for key in sorted(_groups(here)) for p in _sweep_group(here, *key)]
            removed += found
            if found and here != final:
                try:
                    here.rmdir()
                except OSError:   # not empty: something else lives there
                    pass
    return removed


# ------------------------------------------------------------------ the reaper

_reaper: int | None = None   # this process's end of the pipe to its reaper
REAP_RETRY_S = 3.0           # how long the reaper keeps sweeping while its owner's workers die


def start_reaper() -> bool:
    """Fork the reaper of this process: it sweeps the outputs this process `owns` once this process
    has ended, however it ended. Call it first thing in a program's main (no threads yet); returns
    whether one runs. The reaper is a session of its own (a kill of the stage's process group,
    Ctrl-C or a CI timeout, leaves it to do its job), holds no terminal or pipe of its parent's
    (`| tee log` ends with the stage) and exits when its sweep is done."""
    global _reaper
    if _reaper is not None or not hasattr(os, "fork") or not hasattr(os, "setsid"):
        return _reaper is not None
    r, w = os.pipe()
    owner = os.getpid()
    pid = os.fork()
    if pid == 0:   # the reaper
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, r)
            os.closerange(r + 1, 1 << 16)
            _reap(r, owner)
            code = 0
        finally:
            os._exit(code)
    os.close(r)
    _reaper = w
    return True


def _reap(r: int, owner: int) -> None:
    """Read NUL-separated paths until `owner`'s end of the pipe closes, wait until `owner` has ended,
    then sweep them."""
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    # A dying process closes its files one by one: the pipe can close before an owner lock does.
    # Once this process has a new parent, `owner` has closed them all.
    deadline = time.monotonic() + 60
    while os.getppid() == owner and time.monotonic() < deadline:
        time.sleep(0.005)
    paths = [Path(os.fsdecode(raw)) for raw in dict.fromkeys(data.split(b"\0")) if raw]
    # The owner's pool workers die with it (PR_SET_PDEATHSIG), but a moment later: until they have,
    # one may still hold a lock copy it inherited mid-fork or write into a temporary being swept.
    # So sweep again until nothing of theirs is left, for REAP_RETRY_S at most.
    deadline = time.monotonic() + REAP_RETRY_S
    while True:
        for p in paths:
            sweep(p)
        if not any(_groups(p.parent, p.name) for p in paths) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def owns(*paths: Path | str | None) -> list[Path]:
    """Declare `paths` (None: skipped) outputs of this process: their stale temporaries are swept
    now, and again by the reaper when this process ends. A stage calls it first, with every output
    it writes. Returns what was removed now."""
    global _reaper
    removed: list[Path] = []
    for p in paths:
        if p is None:
            continue
        p = Path(os.path.abspath(p))
        removed += sweep(p)
        if _reaper is not None:
            try:
                os.write(_reaper, os.fsencode(p) + b"\0")
            except OSError:   # the reaper is gone (killed): the start sweep remains
                os.close(_reaper)
                _reaper = None
    return removed


def _after_fork_in_child() -> None:
    """A forked child (pool or DataLoader worker) drops its copies of the owner locks and of the
    reaper's pipe: both then end with the process that holds them, not with its last child."""
    global _reaper
    for fd in list(_held):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    if _reaper is not None:
        try:
            os.close(_reaper)
        except OSError:
            pass
        _reaper = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
