"""The venvs of other Consul clients the registry compatibility suite runs scripts in.

:class:`CompatVenv` builds (once, cached under ``/var/cache/meshd-test/venv-compat/``, or the
checkout's ``.venv-compat/`` where that is not writable) a venv with another Consul client,
e.g. python-consul 1.1.0 which cannot share a venv with py-consul (both are
``import consul``), and runs small client scripts in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .compat_support import REPO, clean_env

#: Where the extra client venvs live: with the tests' other caches outside the checkout
#: (``$MESHD_TEST_CACHE``, as the chroots of tests/ops and tests/packaging), so that every
#: checkout, CI's clean clones too, reuses them; the checkout's git-ignored ``.venv-compat/``
#: where that is not writable (not root).
COMPAT_VENV_CACHE = (
    Path(os.environ.get("MESHD_TEST_CACHE", "/var/cache/meshd-test")) / "venv-compat"
)
COMPAT_VENV_FALLBACK = REPO / ".venv-compat"


def find_python(versions: tuple[str, ...]) -> str | None:
    """The first interpreter found for ``versions`` (e.g. ``("3.10", "3.9")``): PATH, then pyenv."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for version in versions:
        candidates = [str(p) for p in sorted(root.glob(f"{version}*/bin/python{version}"))]
        candidates += [p for p in (shutil.which(f"python{version}"),) if p]
        for candidate in candidates:
            # pyenv shims exist for versions that are not selected and then fail: try it.
            probe = subprocess.run(
                [candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if probe.returncode == 0 and probe.stdout.strip() == version:
                return candidate
    return None


class CompatVenv:
    """A venv named ``<name>-<hash of what it is made of>`` with ``requirements`` installed by
    pip, reused (see :data:`COMPAT_VENV_CACHE`).

    What it is made of (the interpreter's base installation and version, the requirements) is
    in its name and in a stamp file written last: another checkout needing other versions gets
    another venv, and one in use is never rebuilt. A venv without its stamp (a build cut short)
    or without its interpreter is rebuilt, under a lock (checkouts and runs share the cache).
    Building needs the package index once.
    """

    def __init__(self, name: str, python: str, requirements: tuple[str, ...]) -> None:
        self.name = name
        self.python = python
        self.requirements = requirements
        # The venv runs on the base installation, not on ``python`` when that is a venv's (the
        # checkout's .venv): identified by it, the venv outlives the checkout.
        base = subprocess.run(
            [python, "-c", "import sys; print(sys.base_prefix, sys.version)"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        self._stamp = json.dumps({"python": base, "requirements": list(requirements)})
        tag = hashlib.sha256(self._stamp.encode()).hexdigest()[:12]
        root = COMPAT_VENV_CACHE
        with contextlib.suppress(OSError):
            root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            root = COMPAT_VENV_FALLBACK
        self.path = root / f"{name}-{tag}"

    @property
    def bin_python(self) -> Path:
        """The venv's interpreter."""
        return self.path / "bin" / "python"

    def _ready(self) -> bool:
        stamp = self.path / ".compat-stamp"
        return stamp.exists() and stamp.read_text() == self._stamp and self.bin_python.exists()

    def ensure(self) -> None:
        """Create or repair the venv; raises ``RuntimeError`` with pip's output on failure."""
        if self._ready():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.parent == COMPAT_VENV_FALLBACK:
            # Keeps the cache out of git even before the checkout's .gitignore lists it.
            (self.path.parent / ".gitignore").write_text("*\n")
        with (self.path.parent / f"{self.path.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it right now
            if self._ready():
                return
            shutil.rmtree(self.path, ignore_errors=True)
            steps = [
                [self.python, "-m", "venv", str(self.path)],
                [str(self.bin_python), "-m", "pip", "install", "-q", *self.requirements],
            ]
            for argv in steps:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=600, check=False, env=clean_env()
                )
                if done.returncode != 0:
                    shutil.rmtree(self.path, ignore_errors=True)
                    raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
            (self.path / ".compat-stamp").write_text(self._stamp)

    def run_script(
        self, script: str, *args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None
    ) -> Any:
        """Run ``script`` (Python source) with ``args``; its last stdout line is JSON, returned."""
        done = subprocess.run(
            [str(self.bin_python), "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            # The checkout must not shadow the client under test, so no PYTHONPATH here.
            env={k: v for k, v in clean_env(env).items() if k != "PYTHONPATH"},
            cwd=str(self.path),
        )
        if done.returncode != 0:
            raise AssertionError(
                f"client script exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-3000:]}"
            )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        assert lines, f"client script printed nothing; stderr:\n{done.stderr[-3000:]}"
        return json.loads(lines[-1])
