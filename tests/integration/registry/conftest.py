"""Fixtures of the registry compatibility suite: real ``controld registry`` processes, clients.

* ``registry`` / ``acl_registry``: a fresh registry subprocess per test (ACLs off / on with
  :data:`MGMT_TOKEN` as the management token), ready when ``/v1/status/leader`` answers;
  stopped by PID at the end. The product paths (meshd's registration, controld's discovery,
  controld with an external registry) run on ``acl_registry``, as in production; the Consul
  API compatibility tests run with ACLs off, as against a Consul dev agent, because py-consul
  sends no token on some calls (``agent.service_definition``, ``agent.self``, ...), which a
  Consul with ACLs would refuse too. ``restart()`` / ``kill9()`` / ``restart(hard=True)`` on it
  keep the data dir.
* ``consul_client``: py-consul's std client (``import consul``) on ``registry``;
  ``make_client(registry, token=...)`` for others. Their HTTP sessions are closed at the end.
* ``http``: an httpx client on ``registry`` for raw requests (exact JSON, headers, codes).
* ``pyconsul11``: a venv with python-consul 1.1.0 (the original client; same ``import
  consul`` name, so it cannot live in the project's venv), built once and cached
  (``compat_venv.COMPAT_VENV_CACHE``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import consul
import httpx
import pytest

from .compat_support import MGMT_TOKEN, RegistryProcess
from .compat_venv import CompatVenv, find_python

#: python-consul 1.1.0's asyncio client uses ``@asyncio.coroutine`` (gone in Python 3.11),
#: so its venv needs an older interpreter; the std client runs on any.
PYCONSUL11_PYTHONS = ("3.10", "3.9", "3.8")
PYCONSUL11_REQUIREMENTS = ("python-consul==1.1.0", "aiohttp>=3.8,<4")


@pytest.fixture(autouse=True)
def _no_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # py-consul reads CONSUL_HTTP_ADDR/TOKEN from the environment and prefers them.
    for name in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL"):
        monkeypatch.delenv(name, raising=False)


def _start(tmp_path: Path, name: str, token: str | None) -> RegistryProcess:
    proc = RegistryProcess(tmp_path / f"{name}-data", tmp_path / f"{name}-logs", token=token)
    proc.start()
    return proc


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A fresh registry (ACLs off) for this test."""
    proc = _start(tmp_path, "registry", None)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def acl_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A fresh registry with ACLs on and :data:`MGMT_TOKEN` as its management token."""
    proc = _start(tmp_path, "acl-registry", MGMT_TOKEN)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., Any]]:
    """``make_client(registry, token=None, **kwargs)`` -> a py-consul std client."""
    clients: list[Any] = []

    def make(proc: RegistryProcess, token: str | None = None, **kwargs: Any) -> Any:
        client = consul.Consul(host="127.0.0.1", port=proc.port, token=token, **kwargs)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.http.session.close()


@pytest.fixture
def consul_client(registry: RegistryProcess, make_client: Callable[..., Any]) -> Any:
    """py-consul's std client on ``registry``."""
    return make_client(registry)


@pytest.fixture
def http(registry: RegistryProcess) -> Iterator[httpx.Client]:
    """Raw HTTP client on ``registry``."""
    with httpx.Client(base_url=registry.url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
def pyconsul11() -> CompatVenv:
    """A venv with python-consul 1.1.0 (std + aio clients), built once and cached."""
    python = find_python(PYCONSUL11_PYTHONS)
    if python is None:
        pytest.fail(
            "python-consul 1.1.0's aio client needs Python <= 3.10 (it uses asyncio.coroutine); "
            f"none of python{'/'.join(PYCONSUL11_PYTHONS)} found on PATH or under pyenv"
        )
    venv = CompatVenv("pyconsul11", python, PYCONSUL11_REQUIREMENTS)
    venv.ensure()
    return venv


@pytest.fixture(scope="session")
def pyconsul_aio() -> CompatVenv:
    """A venv with the project's py-consul version plus aiohttp, for ``consul.aio``."""
    from importlib.metadata import version

    venv = CompatVenv(
        "pyconsul-aio", sys.executable, (f"py-consul=={version('py-consul')}", "aiohttp>=3.9,<4")
    )
    venv.ensure()
    return venv
