"""Modules the daemons' libraries import at start-up but use late or never (issue 15).

Every module a process imports stays resident for its lifetime. Two imports made by libraries
meshd loads cost an idle sidecar about 3.5 MB (of ~46) for nothing it uses:

* structlog imports :mod:`asyncio` (29 modules, ~1.5 MB) only to call
  ``asyncio.get_running_loop()`` in its async logging methods, which a Trio daemon doesn't use.
  :func:`import_deferring` imports structlog with a stand-in for asyncio that imports the real
  module the first time anything of it is used.
* trio imports :mod:`ssl` (for its ``SSLStream``) and :mod:`hmac` (for its DTLS cookies), and
  pydantic :mod:`secrets` (for ``SecretStr``'s comparison, through hmac): each loads OpenSSL's
  libcrypto (with libssl, the Python modules and OpenSSL's start-up ~4 MB resident), which a
  sidecar without TLS never uses. The same stand-ins defer them.
* pydantic's first model class asks its plugin loader for plugins, and the loader imports
  :mod:`importlib.metadata` (with email, zipfile, csv and more: ~2 MB) to read the ``pydantic``
  entry points of the installed distributions. Usually none declares one.
  :func:`skip_pydantic_plugin_scan` puts a stand-in loader in its place that looks for a
  ``[pydantic]`` section in the distributions' ``entry_points.txt`` itself and hands over to
  pydantic's loader when it finds one, or whenever it can't tell (another distribution finder,
  a zip file on ``sys.path``). So an installed plugin still loads.

* trio names its worker threads through ``pthread_setname_np``, and to find that function it
  calls :func:`ctypes.util.find_library` when imported. That runs ``ldconfig -p`` in a child
  process and imports :mod:`tempfile` and :mod:`shutil` (with the bz2 and lzma modules and
  libraries): ~0.5 MB, and a fork at every start. :func:`pthread_found_without_ldconfig` answers
  that one question itself on glibc, which names the library ``libpthread.so.0`` everywhere.

And one the other way round: :func:`call_and_forget` runs a one-off job at start (meshd's
command line parser) and then drops the modules it imported, so the memory they took is reused
by what the process imports next.

The others must run before the library's first import (meshd's CLI calls them first thing); a module
already imported is left as it is.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from importlib.machinery import PathFinder
from types import ModuleType
from typing import Any

__all__ = [
    "call_and_forget",
    "declares_pydantic_plugins",
    "import_deferring",
    "pthread_found_without_ldconfig",
    "skip_pydantic_plugin_scan",
]

_PYDANTIC_LOADER = "pydantic.plugin._loader"
_CTYPES_UTIL = "ctypes.util"
#: glibc's soname of its threads library (a stub since 2.34 that resolves to libc's functions):
#: what ``ldconfig -p`` lists for ``pthread`` on every glibc system.
_GLIBC_PTHREAD = "libpthread.so.0"


def import_deferring(name: str, deferred: Iterable[str]) -> ModuleType:
    """Import module ``name`` while each not yet imported module of ``deferred`` is a stand-in.

    A stand-in imports its real module the first time one of its attributes is read, and from
    then on holds the real module's attributes. Stand-ins stay out of ``sys.modules`` after the
    import, so every other importer gets the real module. ``name`` itself is imported as usual.
    """
    installed: list[tuple[str, ModuleType]] = []
    for module in deferred:
        if module not in sys.modules:
            stand_in = _stand_in(module)
            sys.modules[module] = stand_in
            installed.append((module, stand_in))
    try:
        return importlib.import_module(name)
    finally:
        for module, stand_in in installed:
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]


def _stand_in(name: str) -> ModuleType:
    stand_in = ModuleType(name)

    def load(attribute: str) -> Any:
        # Only called for attributes the stand-in lacks (PEP 562): the first use, or a name the
        # real module lacks too (then the real module's AttributeError).
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]  # import the real module, not this one
        real = importlib.import_module(name)
        stand_in.__dict__.update(real.__dict__)
        return getattr(real, attribute)

    stand_in.__getattr__ = load  # type: ignore[method-assign]
    return stand_in


def skip_pydantic_plugin_scan() -> None:
    """Let pydantic find its plugins without :mod:`importlib.metadata` when none is installed.

    Installs the stand-in plugin loader (module docstring); does nothing once pydantic's loader
    is imported.
    """
    if _PYDANTIC_LOADER in sys.modules:
        return
    loader = ModuleType(_PYDANTIC_LOADER)
    found: list[bool] = []

    def real() -> ModuleType:
        if sys.modules.get(_PYDANTIC_LOADER) is loader:
            del sys.modules[_PYDANTIC_LOADER]
        return importlib.import_module(_PYDANTIC_LOADER)

    def get_plugins() -> Iterable[Any]:
        if not found:  # the installed distributions don't change while the daemon runs
            found.append(declares_pydantic_plugins())
        if not found[0]:
            return ()  # what pydantic's loader returns when no entry point is declared
        plugins: Callable[[], Iterable[Any]] = real().get_plugins
        return plugins()

    def other(attribute: str) -> Any:
        # The import system asks a module for ``__path__`` (is it a package?) and the like:
        # pydantic's loader is a plain module, and those aren't a use of it.
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(real(), attribute)

    loader.get_plugins = get_plugins  # type: ignore[attr-defined]
    loader.__getattr__ = other  # type: ignore[method-assign]
    sys.modules[_PYDANTIC_LOADER] = loader


def declares_pydantic_plugins(paths: Iterable[str] | None = None) -> bool:
    """Whether a distribution on ``paths`` (default ``sys.path``) may declare a ``pydantic``
    entry point; True whenever this can't be told without :mod:`importlib.metadata`."""
    for finder in sys.meta_path:
        if finder is not PathFinder and hasattr(finder, "find_distributions"):
            return True  # distributions from elsewhere than the path entries below
    for entry in sys.path if paths is None else paths:
        root = entry or "."
        if os.path.isfile(root):
            return True  # a zip file: importlib.metadata reads those
        try:
            names = os.listdir(root)
        except OSError:
            continue  # importlib.metadata skips entries that aren't directories too
        for child in names:
            if child.lower().endswith((".dist-info", ".egg-info")) and _has_pydantic_group(
                os.path.join(root, child, "entry_points.txt")
            ):
                return True
    return False


def _has_pydantic_group(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return False  # no entry points (or not a directory: an egg-info file)
    for line in lines:
        line = line.strip()  # noqa: PLW2901
        if line.startswith("[") and line.endswith("]") and line[1:-1].strip() == "pydantic":
            return True
    return False


@contextlib.contextmanager
def pthread_found_without_ldconfig() -> Iterator[None]:
    """Within the block, ``ctypes.util.find_library("pthread")`` answers without ``ldconfig``.

    On glibc, while :mod:`ctypes.util` isn't imported yet, a stand-in takes its place (in
    ``sys.modules`` and as the ``ctypes`` package's attribute) that answers ``pthread`` with
    glibc's soname; any other name, or any other use, imports the real module and asks it. The
    stand-in is gone after the block, so every later importer gets the real module.
    """
    import ctypes

    if _CTYPES_UTIL in sys.modules or not _is_glibc():
        yield
        return
    stand_in = _stand_in(_CTYPES_UTIL)

    def find_library(name: str) -> str | None:
        if name == "pthread":
            return _GLIBC_PTHREAD
        return stand_in.__getattr__("find_library")(name)  # type: ignore[no-any-return]

    stand_in.find_library = find_library  # type: ignore[attr-defined]
    sys.modules[_CTYPES_UTIL] = stand_in
    ctypes.util = stand_in  # type: ignore[attr-defined]  # what `import ctypes.util` binds
    try:
        yield
    finally:
        if sys.modules.get(_CTYPES_UTIL) is stand_in:
            del sys.modules[_CTYPES_UTIL]
        if getattr(ctypes, "util", None) is stand_in:
            del ctypes.util  # type: ignore[attr-defined]


def _is_glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not a name this libc knows
        return False
    return bool(version) and str(version).startswith("glibc ")


def call_and_forget(module: str, function: str, *args: Any, forget: Iterable[str] = ()) -> Any:
    """``module.function(*args)``, then ``module`` and the modules of ``forget`` forgotten.

    Each of them that this call imported leaves ``sys.modules`` and its package's attributes,
    and a collection frees it, so its memory goes to what the process allocates next; a module
    imported before the call stays. For a job done once: what it returns must hold nothing of
    those modules (plain values), or they stay alive anyway, and a later import loads a module
    afresh.
    """
    loaded = set(sys.modules)
    try:
        return getattr(importlib.import_module(module), function)(*args)
    finally:
        for name in (module, *forget):
            if name not in loaded:
                _forget(name)
        gc.collect()


def _forget(name: str) -> None:
    module = sys.modules.pop(name, None)
    package, _, attribute = name.rpartition(".")
    parent = sys.modules.get(package)
    if module is not None and parent is not None and getattr(parent, attribute, None) is module:
        delattr(parent, attribute)
