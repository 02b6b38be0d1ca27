"""Replacing a file so a reader (or a crash) never sees half of it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, sync_dir: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename; file mode ``mode``.

    The temporary file is private to this process (its pid in the name), created anew
    (``O_EXCL``, ``O_NOFOLLOW``: a planted link is not followed) and removed on failure.
    ``sync_dir`` also fsyncs the directory, so the rename itself survives a power loss.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            # O_CREAT's mode is filtered by the umask.
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
