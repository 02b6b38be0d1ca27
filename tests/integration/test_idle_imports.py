"""A file-mode sidecar's memory: what it doesn't import until it needs it (issue 15).

Each module below costs resident memory in every sidecar process that loads it (controld's
client, the telemetry reporter, registration and the workers ~2 MB; asyncio, which structlog
imports, ~1.5 MB; importlib.metadata, which pydantic's plugin loader imports, ~2 MB). A
file-mode sidecar that has served a request and answered ``/ready`` must not have loaded them;
the first ``/metrics`` scrape loads meshd's metrics view, and never prometheus-client or the
stdlib HTTP servers and clients its exposition module imports (~3.5 MB: meshd writes the text
format itself). Nor, scraped or not, ssl and hashlib with OpenSSL's libraries (~4 MB): only
TLS uses them. The sidecar runs in a fresh interpreter, so the test process's own imports
don't count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, closed_port, write_sidecar_config

pytestmark = pytest.mark.timeout(60)

#: Never loaded by a sidecar, scraped or not: prometheus-client and what its exposition module
#: imports (meshd writes the text format itself).
NEVER = ("prometheus_client", "http.server", "http.client", "urllib.request", "wsgiref")
#: Loaded only at the first scrape, or in the modes that use them (controld, registry, workers,
#: identity), never by an idle file-mode sidecar.
LAZY = (
    *NEVER,
    "meshd.metrics",
    "meshd.control.client",
    "meshd.control.source",
    "meshd.telemetry.reporter",
    "meshd.telemetry.exporter",
    "meshcore.api",
    "meshd.registration",
    "meshcore.registry.client",
    "meshd.workers",
    "meshd.identity",
    "cryptography",
    # Deferred by the CLI before anything imports structlog or builds a pydantic model.
    "asyncio",
    "importlib.metadata",
    # trio's look for the pthread library (ldconfig) and the PEM fallback without memfd.
    "ctypes.util",
    "tempfile",
    "shutil",
)
#: Loaded only where TLS is used, never by a file-mode sidecar without TLS, scraped or not:
#: meshd's TLS layer, ssl and what loads OpenSSL's libcrypto (trio's ssl and hmac, pydantic's
#: secrets, hashlib).
NO_TLS = (
    "meshd.net.tls",
    "meshd.net.tlsconfig",
    "ssl",
    "_ssl",
    "hashlib",
    "_hashlib",
    "hmac",
    "secrets",
)
#: The shared libraries behind them (~4 MB resident with OpenSSL's start-up).
OPENSSL_LIBRARIES = ("libcrypto", "libssl")

# Runs one sidecar in-process, its imports set up as the CLI does: one request through its
# listener, GET /ready, the loaded modules; then GET /metrics and the modules again. Prints both
# lists as JSON.
_PROGRAM = """
import json, sys
from pathlib import Path
from meshd.cli import _defer_unused_imports
_defer_unused_imports()  # what `meshd run` does first
import trio
from meshd.sidecar import Sidecar

async def get(port, path):
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = f"GET {path} HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n"
        await stream.send_all(head.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])

async def main():
    async with trio.open_nursery() as nursery:
        sidecar = await nursery.start(Sidecar(Path(sys.argv[1])).run)
        port = sidecar.listeners.slots["inbound"].port
        proxied = await get(port, "/")
        ready = await get(sidecar.admin_port, "/ready")
        idle = sorted(sys.modules)
        metrics = await get(sidecar.admin_port, "/metrics")
        scraped = sorted(sys.modules)
        maps = Path("/proc/self/maps").read_text()
        nursery.cancel_scope.cancel()
    print(json.dumps({"statuses": [proxied, ready, metrics], "idle": idle, "scraped": scraped,
                      "maps": maps}))

trio.run(main)
"""


def _loaded(names: list[str], module: str) -> bool:
    return any(name == module or name.startswith(module + ".") for name in names)


def test_file_mode_sidecar_loads_no_lazy_module(tmp_path: Path) -> None:
    bootstrap = write_sidecar_config(
        tmp_path,
        service="api",
        app_port=closed_port(),
        listeners=[{"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0"}],
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(bootstrap)],
        capture_output=True,
        env=clean_env(),
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    # The app is down: the proxied request fails upstream, but it went through the HTTP path.
    assert result["statuses"] == [502, 200, 200]
    assert [m for m in LAZY if _loaded(result["idle"], m)] == []
    assert _loaded(result["scraped"], "meshd.metrics")
    assert [m for m in NEVER if _loaded(result["scraped"], m)] == []
    assert [m for m in NO_TLS if _loaded(result["scraped"], m)] == []
    assert [lib for lib in OPENSSL_LIBRARIES if lib in result["maps"]] == []


def test_cli_defers_asyncio_and_importlib_metadata(tmp_path: Path) -> None:
    # `meshd validate` goes through the CLI's start (models built, the sidecar module and
    # structlog imported); -X importtime lists every module the process imported.
    bootstrap = write_sidecar_config(tmp_path, service="api", app_port=closed_port(), listeners=[])
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "meshd", "validate", "-c", str(bootstrap)],
        capture_output=True,
        env=clean_env(),
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    imported = [line.rpartition("|")[2].strip() for line in done.stderr.decode().splitlines()]
    assert "structlog.stdlib" in imported  # the module that imports asyncio
    assert "meshcore.model.snapshot" in imported  # pydantic models built
    # shutil: argparse's formatter asks it the terminal's width (meshd's asks only for text).
    deferred = ("asyncio", "importlib.metadata", "ctypes.util", "tempfile", "shutil", *NO_TLS)
    assert [m for m in deferred if _loaded(imported, m)] == []
