"""Tests for meshcore.deferimports: stand-ins load the real module on first use; pydantic still
finds an installed plugin."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcore.deferimports import call_and_forget, declares_pydantic_plugins, import_deferring

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A module ``lib`` that imports a module ``dep`` and reads it only in ``use()``."""
    suffix = uuid.uuid4().hex[:8]
    lib, dep = f"lib_{suffix}", f"dep_{suffix}"
    (tmp_path / f"{dep}.py").write_text("VALUE = 42\n")
    (tmp_path / f"{lib}.py").write_text(
        f"import {dep}\n\ndef use():\n    return {dep}.VALUE\n\ndef held():\n    return {dep}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield lib, dep
    for name in (lib, dep):
        sys.modules.pop(name, None)


def test_deferred_module_loads_at_first_use(modules: tuple[str, str]) -> None:
    lib, dep = modules
    module = import_deferring(lib, (dep,))
    assert lib in sys.modules
    assert dep not in sys.modules  # the stand-in left sys.modules after the import
    assert module.use() == 42
    real = sys.modules[dep]  # the first use imported the real module...
    assert module.use() == 42  # ...and the stand-in now holds its attributes
    assert module.held().VALUE is real.VALUE
    with pytest.raises(AttributeError):
        _ = module.held().MISSING


def test_an_imported_module_is_not_replaced(modules: tuple[str, str]) -> None:
    lib, dep = modules
    real = __import__(dep)
    module = import_deferring(lib, (dep,))
    assert module.held() is real


def test_from_import_of_a_deferred_module_gets_the_real_one(
    tmp_path: Path, modules: tuple[str, str]
) -> None:
    _, dep = modules
    other = f"other_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{other}.py").write_text(f"from {dep} import VALUE\n")
    try:
        module = import_deferring(other, (dep,))
        assert module.VALUE == 42
        assert sys.modules[dep].VALUE == 42
    finally:
        sys.modules.pop(other, None)


def _dist(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_declared_plugins_are_found_on_the_path(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _dist(site, "tool", "[console_scripts]\ntool = tool:main\n")
    (site / "old.egg-info").write_text("Name: old\n")  # a file, not a directory
    assert not declares_pydantic_plugins([str(site), str(tmp_path / "missing")])
    _dist(site, "plugged", "[console_scripts]\nx = y:z\n\n[ pydantic ]\nrec = rec:plugin\n")
    assert declares_pydantic_plugins([str(site)])
    archive = tmp_path / "lib.zip"
    archive.write_bytes(b"PK")
    assert declares_pydantic_plugins([str(archive)])  # can't tell: ask importlib.metadata


# A fresh interpreter: the stand-in loader, then a model validated; prints the plugin's calls
# and whether importlib.metadata was imported.
_PROGRAM = """
import json, sys
from meshcore.deferimports import skip_pydantic_plugin_scan
skip_pydantic_plugin_scan()
from pydantic import BaseModel

class Item(BaseModel):
    n: int

assert Item.model_validate({"n": 1}).n == 1
calls = sys.modules["recplugin"].CALLS if "recplugin" in sys.modules else []
print(json.dumps({"calls": calls, "metadata": "importlib.metadata" in sys.modules}))
"""

_PLUGIN = """
CALLS = []

class Plugin:
    def new_schema_validator(self, schema, schema_type, *args, **kwargs):
        CALLS.append(schema_type.__name__)
        return None, None, None

plugin = Plugin()
"""


@pytest.mark.parametrize("installed", [False, True])
def test_pydantic_plugins_load_only_when_declared(tmp_path: Path, installed: bool) -> None:
    site = tmp_path / "site"
    site.mkdir()
    if installed:
        (site / "recplugin.py").write_text(textwrap.dedent(_PLUGIN))
        _dist(site, "recplugin", "[pydantic]\nrecorder = recplugin:plugin\n")
    env = {"PYTHONPATH": f"{REPO}:{site}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, env=env, timeout=45, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if installed:
        assert result == {"calls": ["Item"], "metadata": True}  # pydantic's own loader ran
    else:
        assert result == {"calls": [], "metadata": False}


# A fresh interpreter (this one has imported ctypes.util): a module asking for the pthread
# library inside the block, then the state after it; prints JSON.
_PTHREAD_PROGRAM = """
import json, sys
from meshcore.deferimports import pthread_found_without_ldconfig
with pthread_found_without_ldconfig():
    import asks_pthread
after = {"util": "ctypes.util" in sys.modules, "subprocess": "subprocess" in sys.modules}
import ctypes.util
print(json.dumps({
    "found": asks_pthread.FOUND,
    "after": after,
    "real": ctypes.util.find_library("pthread"),
    "other": ctypes.util.find_library("c"),
}))
"""


def test_pthread_is_found_without_ldconfig(tmp_path: Path) -> None:
    (tmp_path / "asks_pthread.py").write_text(
        'import ctypes.util\nFOUND = ctypes.util.find_library("pthread")\n'
    )
    env = {"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin:/sbin:/usr/sbin"}
    done = subprocess.run(
        [sys.executable, "-c", _PTHREAD_PROGRAM],
        capture_output=True,
        env=env,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if not os.confstr("CS_GNU_LIBC_VERSION"):
        pytest.skip("not glibc: the real find_library answers")
    # The same answer as ldconfig's, with no child process and no real ctypes.util loaded.
    assert result["found"] == result["real"] == "libpthread.so.0"
    assert result["after"] == {"util": False, "subprocess": False}
    assert result["other"]  # the real module answers every other name


_TRIO_PROGRAM = """
import json, sys
from meshd.cli import _defer_unused_imports
_defer_unused_imports()
from trio._core import _thread_cache
print(json.dumps({
    "names_threads": _thread_cache.set_os_thread_name is not None,
    "loaded": [m for m in ("ctypes.util", "tempfile", "shutil") if m in sys.modules],
}))
"""


def test_trio_still_names_its_threads() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _TRIO_PROGRAM],
        capture_output=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result == {"names_threads": True, "loaded": []}


def test_call_and_forget_frees_what_the_call_imported(modules: tuple[str, str]) -> None:
    lib, dep = modules
    kept = "json"  # imported before the call: stays
    assert kept in sys.modules
    assert call_and_forget(lib, "use", forget=(dep, kept)) == 42
    assert lib not in sys.modules
    assert dep not in sys.modules
    assert kept in sys.modules
    alive = {o.__name__ for o in gc.get_objects() if isinstance(o, types.ModuleType)}
    assert not {lib, dep} & alive
    assert call_and_forget(lib, "use") == 42  # imported afresh


_TLS_PROGRAM = """
import json, sys
from meshd.cli import _defer_unused_imports
_defer_unused_imports()
import pydantic.types
import trio

def openssl_loaded():
    maps = open("/proc/self/maps").read()
    return [m for m in ("ssl", "_ssl", "hashlib", "hmac", "secrets") if m in sys.modules] + [
        lib for lib in ("libcrypto", "libssl") if lib in maps
    ]

before = openssl_loaded()
# Their first uses: trio's SSLStream and DTLS cookies, pydantic's SecretStr comparison.
import ssl, hmac
from tls_certs import make_ca
ca = make_ca()
leaf = ca.service("api")
for name, data in (("leaf.pem", leaf.cert_pem), ("key.pem", leaf.key_pem), ("ca.pem", ca.root_pem)):
    open(sys.argv[1] + "/" + name, "wb").write(data)
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(sys.argv[1] + "/leaf.pem", sys.argv[1] + "/key.pem")
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.load_verify_locations(sys.argv[1] + "/ca.pem")

async def main():
    from trio.testing import memory_stream_pair
    left, right = memory_stream_pair()
    client = trio.SSLStream(left, client_ctx, server_hostname="api")
    server = trio.SSLStream(right, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"hello")
        got = await server.receive_some(5)
    return got, client.cipher() is not None

got, ciphered = trio.run(main)
cookie = trio._dtls.hmac.new(b"key", b"msg", "sha256").digest()
print(json.dumps({
    "before": before,
    "got": got.decode(),
    "ciphered": ciphered,
    "same_ssl": trio._ssl._stdlib_ssl.SSLError is ssl.SSLError,
    "hmac": cookie == hmac.new(b"key", b"msg", "sha256").digest(),
    "secret": pydantic.SecretStr("a") == pydantic.SecretStr("a"),
}))
"""


def test_trio_and_pydantic_load_openssl_at_first_use(tmp_path: Path) -> None:
    # Deferred by the CLI: an idle sidecar without TLS has no OpenSSL library mapped
    # (~4 MB resident); trio's TLS, its DTLS cookies and pydantic's SecretStr still work.
    certs = REPO / "tests" / "unit" / "meshd" / "net"
    done = subprocess.run(
        [sys.executable, "-c", _TLS_PROGRAM, str(tmp_path)],
        capture_output=True,
        env={"PYTHONPATH": f"{REPO}:{certs}", "PATH": "/usr/bin:/bin"},
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result == {
        "before": [],
        "got": "hello",
        "ciphered": True,
        "same_ssl": True,
        "hmac": True,
        "secret": True,
    }
