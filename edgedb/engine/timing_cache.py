"""The timing cache file: TensorRT's measured kernel timings, shared by the builds of one
GPU and TensorRT version, so a rebuild of the same shapes skips most of the timing.

Several builds may share one file (two ``edgedb build`` runs, a service building on
demand), and a file may be damaged. So, as TensorRT's own sample does
(``samples/utils/timingCache.cpp`` v10.3.0: a ``FileLock`` around each read and write,
``createTimingCache`` checked for nullptr, the file's cache ``combine``-d with the new one
before writing):

- the file is read and written under an exclusive lock on ``NAME.lock`` (POSIX; elsewhere
  without one);
- a blob TensorRT cannot read (``create_timing_cache`` returns None) or one for another
  GPU (``set_timing_cache`` returns False) gives an empty cache and a warning, never a
  failed build;
- after a build, the timings already in the file (perhaps written by another build in the
  meantime) are combined with the new ones and the result is written atomically.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from edgedb._files import write_atomically

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` + ".lock" for the block (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; builds there rarely share a cache file
        yield
        return
    lock_path = Path(str(path) + ".lock")
    try:
        handle = open(lock_path, "a+b")
    except OSError as error:  # a read-only folder: go on unlocked, the write will say so
        log.warning("cannot lock the timing cache %s: %s", path, error)
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() else b""
    except OSError as error:
        log.warning("cannot read the timing cache %s (%s); starting an empty one", path, error)
        return b""


def _cache_from(config, data: bytes, path: Path):
    """A timing cache from ``data``, or an empty one where TensorRT cannot read it."""
    cache = config.create_timing_cache(data) if data else None
    if cache is None:
        if data:
            log.warning("the timing cache %s is damaged or not a TensorRT timing cache; starting an empty one "
                        "(it is rewritten after the build)", path)
        cache = config.create_timing_cache(b"")
    return cache


def attach_timing_cache(config, path: Path):
    """Reads ``path`` into a timing cache and sets it on ``config``; returns the cache
    (the builder config does not own it: keep it alive until the build ends)."""
    with file_lock(path):
        data = _read(path)
    cache = _cache_from(config, data, path)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s is for another GPU or TensorRT version; starting an empty one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def save_timing_cache(config, path: Path) -> None:
    """Combines the build's timings with what the file holds now and writes the result
    atomically, under the lock. A failure is a warning: the engine is built either way."""
    built = config.get_timing_cache()
    if built is None:
        return
    try:
        with file_lock(path):
            merged = _cache_from(config, _read(path), path)
            if not merged.combine(built, ignore_mismatch=False):
                log.warning("the timing cache %s is for another GPU or TensorRT version; replacing it", path)
                merged = built
            write_atomically(path, memoryview(merged.serialize()))
    except OSError as error:
        log.warning("cannot write the timing cache %s: %s", path, error)
