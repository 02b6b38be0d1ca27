"""The virtualenv of a package as staged for nfpm: relocated, normalized, reproducible."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import os
import shutil
from pathlib import Path

from pkgspec import SYSTEM_PYTHON, run


def relocate(prefix: Path, target: str) -> None:
    """Rewrite the staging path out of the virtualenv (it runs from ``target``)."""
    staged = str(prefix)
    for script in (prefix / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        if script.name.startswith("activate") or script.name == "Activate.ps1":
            # Interactive helpers with the build path baked in; the package needs none.
            script.unlink()
            continue
        data = script.read_bytes()
        if data.startswith(b"#!") and staged.encode() in data:
            script.write_bytes(data.replace(staged.encode(), target.encode()))
    cfg = prefix / "pyvenv.cfg"
    lines = [
        f"command = {SYSTEM_PYTHON} -m venv {target}" if line.startswith("command") else line
        for line in cfg.read_text().splitlines()
    ]
    cfg.write_text("\n".join(lines) + "\n")
    # pip records where a wheel came from (a build path) and who installed it.
    for direct in prefix.glob("lib/*/site-packages/*.dist-info/direct_url.json"):
        direct.unlink()
    for cache in sorted(prefix.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    # Data files some distributions install at the virtualenv's top (py-consul's
    # requirements files), and the empty include/ directory.
    for item in prefix.iterdir():
        if item.is_file() and not item.is_symlink() and item.name != "pyvenv.cfg":
            item.unlink()
    shutil.rmtree(prefix / "include", ignore_errors=True)
    # Debug symbols of the wheels' extension modules, as dh_strip removes them.
    for lib in sorted(prefix.rglob("*.so")):
        if lib.is_file() and not lib.is_symlink():
            run(["strip", "--strip-unneeded", "--remove-section=.comment", lib])
    rewrite_records(prefix)
    # lib64 -> lib is a relative symlink venv makes; keep it.
    leftovers = run(["grep", "-rlF", staged, prefix], capture_output=True, check=False)
    if leftovers.stdout.strip():
        raise SystemExit(f"build path left in the virtualenv:\n{leftovers.stdout}")


def normalize(root: Path, epoch: int) -> None:
    """Every mtime is ``epoch`` (SOURCE_DATE_EPOCH); modes are 0755/0644 (umask-independent)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_symlink():
            os.utime(path, (epoch, epoch), follow_symlinks=False)
            continue
        mode = path.stat().st_mode
        executable = path.is_dir() or (mode & 0o111 and runnable(path))
        path.chmod(0o755 if executable else 0o644)
        os.utime(path, (epoch, epoch))
    os.utime(root, (epoch, epoch))


def gzip_to(data: bytes, out: Path) -> Path:
    """``data`` gzip-compressed into ``out``, without a timestamp (reproducible)."""
    with (
        out.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(data)
    return out


def rewrite_records(prefix: Path) -> None:
    """Hashes and sizes of each distribution's RECORD match the files as shipped.

    The scripts (shebang rewritten) and the extension modules (stripped) changed after pip
    wrote them; pip's hashes of the scripts would even carry the build path.
    """
    for record in sorted(prefix.glob("lib/*/site-packages/*.dist-info/RECORD")):
        site = record.parent.parent
        rows = []
        for row in csv.reader(record.read_text().splitlines()):
            if not row:
                continue
            target = (site / row[0]).resolve() if not row[0].startswith("/") else Path(row[0])
            if row[1] and target.is_file():
                data = target.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                rows.append([row[0], f"sha256={digest.decode()}", str(len(data))])
            elif target.exists() or row[0].endswith("RECORD"):
                rows.append(row)
            # else: removed above (direct_url.json)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        record.write_text(out.getvalue())


def blocks(text: str, **keep: bool) -> str:
    """``text`` without the ``#@if NAME`` ... ``#@end`` blocks whose ``keep[NAME]`` is false."""
    out: list[str] = []
    skipping: str | None = None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("#@if "):
            name = stripped.removeprefix("#@if ").strip()
            if not keep[name]:
                skipping = name
            continue
        if stripped == "#@end":
            skipping = None
            continue
        if skipping is None:
            out.append(line)
    return "".join(out)


def runnable(path: Path) -> bool:
    """An ELF object or a script: what may keep its executable bit."""
    with path.open("rb") as fh:
        head = fh.read(4)
    return head.startswith(b"#!") or head == b"\x7fELF"


def roff_escape(text: str) -> str:
    """``text`` as literal roff (man page) text."""
    lines = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        # A line starting with . or ' would be a roff request.
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)
