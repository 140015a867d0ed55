"""Sweep the temporaries a killed stage left beside its outputs.

`store.atomic_path(final)` writes into a `.tmp-<name>-<8 hex>` sibling of `final` and moves an
old output aside as `.old-<name>-<8 hex>` while replacing it. A process killed in between leaves
those behind, and nothing else ever removes them. When a stage next writes `final`, the
siblings of `final` older than the running process cannot belong to it (nor, with one writer
per output, to anyone else) and are removed; newer ones are left alone.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

_IMPORTED = time.time()


def process_start_time() -> float:
    """When this process started (epoch seconds): from /proc on Linux, else when this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def _newest_mtime(path: Path) -> float:
    """mtime of `path` and, for a directory, of its direct entries (a store being written changes them)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        with os.scandir(path) as it:
            for entry in it:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    pass
    return newest


def stale_temporaries(final: Path | str, before: float | None = None) -> list[Path]:
    """`.tmp-<name>-*` and `.old-<name>-*` siblings of `final` last modified before `before`
    (default: this process's start)."""
    final = Path(final)
    before = process_start_time() if before is None else before
    pattern = re.compile(rf"\.(tmp|old)-{re.escape(final.name)}-[0-9a-f]{{8}}")
    found = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        if pattern.fullmatch(p.name):
            try:
                if _newest_mtime(p) < before:
                    found.append(p)
            except OSError:
                continue  # removed meanwhile
    return sorted(found)


def sweep_stale_temporaries(final: Path | str, before: float | None = None) -> list[Path]:
    """Remove the stale temporaries of `final` (see `stale_temporaries`); returns what was removed."""
    removed = []
    for p in stale_temporaries(final, before):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        if not (p.exists() or p.is_symlink()):
            removed.append(p)
    return removed
