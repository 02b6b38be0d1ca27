"""A file path OpenSSL can read PEM data from, for ``ssl`` which loads keys only from files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["pem_path"]


@contextlib.contextmanager
def pem_path(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open holding ``data``, gone on exit.

    ``ssl`` loads certificates and keys only from files; a memfd keeps the private key off
    every filesystem. Elsewhere, a private temporary directory.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("mesh-pem", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    import tempfile  # only here: an idle sidecar doesn't load it (with shutil, bz2 and lzma)

    with tempfile.TemporaryDirectory(prefix="mesh-pem-") as tmp:
        path = os.path.join(tmp, "pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        yield path
