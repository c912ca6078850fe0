"""Output files written whole or not at all.

Every file edgedb writes is first written to a temporary file beside it, flushed to disk,
then put in its place with one ``os.replace``: a full disk or an error while writing
leaves the earlier file as it was (truncating it first lost it, and a fresh run left a
0-byte file) and no temporary behind.
"""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def _temporary_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder, hidden, with ``path``'s suffix (OpenCV and
    matplotlib choose the format from it). Made with the umask's permissions, unlike
    ``tempfile.mkstemp``'s 0600, so the output is as readable as a plain write makes it."""
    while True:
        candidate = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:
            continue


def _flush_to_disk(path: Path) -> None:
    """fsync: where a full disk defers its error to writeback (NFS, some ext4 cases), it
    shows here, before the earlier file is replaced, not after."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; when the block ends it replaces
    ``path``. If the block raises, the temporary is removed and ``path`` keeps its earlier
    content; an OSError is raised again naming ``path`` (not the temporary)."""
    target = Path(os.path.realpath(path))  # through a symlink, as a plain write goes
    temporary = None
    try:
        temporary = _temporary_beside(target)
        yield temporary
        _flush_to_disk(temporary)
        if target.exists():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:  # named as the file asked for
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise


def write_atomically(path: PathLike, data: Union[str, bytes, memoryview]) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` whole or not at all."""
    with atomic_output(path) as temporary, open(temporary, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)


def save_onnx(model, path: PathLike) -> None:
    """``onnx.save`` whole or not at all."""
    import onnx

    with atomic_output(path) as temporary:
        onnx.save(model, str(temporary))
