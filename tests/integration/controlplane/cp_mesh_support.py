"""Building blocks of the control-plane end-to-end test: controld, apps and meshd as processes.

* :class:`Controld` runs ``python -m controld run`` (embedded registry) with its own data dir
  and admin token file; the first start picks free ports (port 0) and reads them from the
  ``ready`` log line, restarts reuse them and the data dir.
* :class:`Apps` runs tiny HTTP apps (stdlib, one subprocess) that answer every request with
  their instance id, so a test sees which instance a request reached.
* :class:`Sidecar` runs ``python -m meshd run`` with a controld-mode bootstrap (Contract 6)
  and a ``registry:`` section, so it registers its app itself.

Every process is stopped by PID (SIGTERM, then SIGKILL); every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from helpers import clean_env, ready_record, stop_process
from ports import free_ports as free_ports  # noqa: PLC0414 (re-exported)

REPO = Path(__file__).resolve().parents[3]
#: Bound of any single wait in this test.
TIMEOUT = 30.0

APP_SCRIPT = """
import http.server, json, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = (self.server.ident + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

servers = {}
for ident in sys.argv[1:]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.ident = ident
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[ident] = server.server_address[1]
print(json.dumps(servers), flush=True)
sys.stdin.read()
"""


async def wait_for(
    check: Callable[[], Any], *, what: str, timeout: float = TIMEOUT, every: float = 0.1
) -> Any:
    """Call ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            last = check()
            if hasattr(last, "__await__"):
                last = await last
            if last:
                return last
            await trio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


async def wait_ready_line(
    proc: subprocess.Popen[bytes], log_path: Path, what: str
) -> dict[str, Any]:
    """Wait (bounded) for the ``ready`` log line of ``proc``; fail with its output if it exits."""

    def ready_line() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{_tail(log_path)}")
        return ready_record(log_path)

    ready: dict[str, Any] = await wait_for(ready_line, what=f"{what} ready line")
    return ready


@dataclass
class Controld:
    """``controld run`` with an embedded registry, restartable on the same ports and data."""

    workdir: Path
    admin_port: int = 0
    registry_port: int = 0
    #: Where the sidecars register and long-poll.
    push_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_path: Path = field(init=False)

    @property
    def token_file(self) -> Path:
        """The admin token file (created by controld on first start)."""
        return self.workdir / "admin-token"

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def push_url(self) -> str:
        """The sidecars' base URL (the same API on the push listener)."""
        return f"http://127.0.0.1:{self.push_port}"

    @property
    def registry_url(self) -> str:
        """The embedded registry's base URL."""
        return f"http://127.0.0.1:{self.registry_port}"

    def admin_token(self) -> str:
        """The admin token controld wrote."""
        return self.token_file.read_text().strip()

    def registry_token(self, service: str) -> str:
        """A registry ACL token with ``service``'s identity (``POST /v1/tokens/registry``):
        the embedded registry enforces ACLs, so each sidecar registers with its own."""
        resp = httpx.post(
            f"{self.url}/v1/tokens/registry",
            json={"service": service},
            headers={"Authorization": f"Bearer {self.admin_token()}"},
            timeout=TIMEOUT,
        )
        resp.raise_for_status()
        return str(resp.json()["secret_id"])

    async def start(self) -> None:
        """Start and wait (bounded) for ``/ready``; ports from the ``ready`` line the first time."""
        self.starts += 1
        self.log_path = self.workdir / f"controld-{self.starts}.log"
        argv = [sys.executable, "-m", "controld", "run", "--data-dir", str(self.workdir / "data")]
        argv += ["--registry-listen", f"127.0.0.1:{self.registry_port}"]
        argv += ["--admin", f"127.0.0.1:{self.admin_port}", "--push", f"127.0.0.1:{self.push_port}"]
        argv += ["--admin-token-file", str(self.token_file), "--log-format", "json"]
        argv += ["--tls", "off"]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )

        ready = await wait_ready_line(self.proc, self.log_path, "controld")
        self.admin_port = int(ready["admin_port"])
        self.registry_port = int(ready["registry_port"])
        self.push_port = int(ready["push_port"])

        async def is_ready() -> bool:
            async with httpx.AsyncClient(timeout=5.0) as client:
                try:
                    resp = await client.get(f"{self.url}/ready")
                except httpx.HTTPError:
                    return False
            return resp.status_code == 200 and self.token_file.exists()

        await wait_for(is_ready, what="controld /ready")

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        code = stop_process(self.proc)
        self.proc = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        """The end of the current run's output."""
        return _tail(self.log_path, lines)


@dataclass
class Apps:
    """Stdlib HTTP apps in one subprocess; each answers ``<ident>\\n``."""

    workdir: Path
    idents: tuple[str, ...]
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start them and read their ports (bounded)."""
        script = self.workdir / "apps.py"
        script.write_text(APP_SCRIPT)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *self.idents],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        line = b""
        # The script prints one line right after binding; a blocking read is bounded by it.
        while not line and time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
        self.ports = {str(k): int(v) for k, v in json.loads(line).items()}

    def stop(self) -> None:
        """Close its stdin (it exits), then stop it by PID if needed."""
        if self.proc is None:
            return
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        stop_process(self.proc)
        self.proc = None


@dataclass
class Sidecar:
    """One meshd sidecar in controld mode (bootstrap written by :meth:`write_bootstrap`)."""

    workdir: Path
    name: str
    service: str
    app_port: int
    inbound_port: int
    upstreams: dict[str, int] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    #: More bootstrap fields (e.g. ``tracing``), merged over the defaults.
    extra: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    admin_port: int = 0

    @property
    def bootstrap_path(self) -> Path:
        """Where the bootstrap is written."""
        return self.workdir / f"{self.name}.yaml"

    def descriptor(self) -> dict[str, Any]:
        """The proxy descriptor this sidecar registers (what controld compiles for)."""
        return {
            "proxy_id": self.name,
            "service": self.service,
            "namespace": "default",
            "inbound": {"host": "127.0.0.1", "port": self.inbound_port},
            "upstreams": [
                {"service": svc, "port": port, "host": "127.0.0.1"}
                for svc, port in self.upstreams.items()
            ],
        }

    def write_bootstrap(self, controld: Controld, token: str) -> None:
        """Token file and bootstrap (Contract 6) with self-registration in controld's registry."""
        token_file = self.workdir / f"{self.name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        registry_token_file = self.workdir / f"{self.name}.registry-token"
        registry_token_file.write_text(controld.registry_token(self.service) + "\n")
        registry_token_file.chmod(0o600)
        doc = {
            "service": self.service,
            "node": self.name,
            "app": f"127.0.0.1:{self.app_port}",
            "admin": "127.0.0.1:0",
            "inbound": f"127.0.0.1:{self.inbound_port}",
            "upstreams": [{"service": svc, "port": port} for svc, port in self.upstreams.items()],
            "drain_timeout_s": 2.0,
            "drain_delay_s": 0,
            "snapshot": {
                "controld": {
                    "url": controld.push_url,
                    "token_file": str(token_file),
                    "wait_s": 30,
                    "cache_file": str(self.workdir / f"{self.name}.snapshot.json"),
                    "timeout_s": 5,
                    "retry_max_s": 1.0,
                }
            },
            "registry": {
                "address": controld.registry_url,
                "token_file": str(registry_token_file),
                "service_id": self.name,
                "tags": list(self.tags),
                "check": {"kind": "tcp", "interval_s": 1.0, "timeout_s": 1.0},
            },
        }
        doc.update(self.extra)
        self.bootstrap_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    async def start(self) -> None:
        """Start and wait (bounded) for the ``ready`` line (first snapshot applied)."""
        self.log_path = self.workdir / f"{self.name}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshd", "run", "-c", str(self.bootstrap_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )

        ready = await wait_ready_line(self.proc, self.log_path, f"meshd {self.name}")
        self.admin_port = int(ready.get("admin_port") or 0)

    def stop(self) -> None:
        """SIGTERM (drain), SIGKILL if it hangs."""
        stop_process(self.proc)
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the sidecar's output."""
        return _tail(self.log_path, lines)


class Api:
    """controld's API with the admin token (httpx, async)."""

    def __init__(self, controld: Controld) -> None:
        self.controld = controld
        self.client = httpx.AsyncClient(timeout=10.0)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()

    async def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> httpx.Response:
        """One request to controld (admin token unless ``token`` is given)."""
        token = token if token is not None else self.controld.admin_token()
        return await self.client.request(
            method,
            f"{self.controld.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def ok(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """Like :meth:`request`; asserts a 2xx and returns the JSON (None if empty)."""
        resp = await self.request(method, path, body, token)
        assert 200 <= resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    async def proxies(self) -> dict[str, dict[str, Any]]:
        """``GET /v1/proxies`` by proxy id."""
        doc = await self.ok("GET", "/v1/proxies")
        return {p["proxy_id"]: p for p in doc["proxies"]}

    async def apply(self, *resources: dict[str, Any]) -> httpx.Response:
        """``PUT /v1/resources``."""
        return await self.request("PUT", "/v1/resources", {"resources": list(resources)})
