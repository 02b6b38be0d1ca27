"""The demo's sample app: two tiny HTTP services and a traffic generator (stdlib only).

    python app.py api     --port 18181 --version v1
    python app.py web     --port 18180 --api http://127.0.0.1:15001
    python app.py traffic --url http://127.0.0.1:15006/

``web`` answers ``GET /`` by calling ``api`` through its own sidecar's outbound listener,
passing ``x-request-id`` and ``traceparent`` on so the sidecars see one trace per request.
``api`` serves ``/api/items``, ``/api/slow?ms=N`` and ``/api/status/<code>``, and names its
``--version`` in every answer. ``traffic`` sends one request every ``--interval`` seconds and
prints a line per ``--report`` seconds, with the share of answers per api version (so a traffic
split shows up as it happens); on SIGTERM/SIGINT it prints the totals and exits 0 if every
request succeeded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import sys
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Headers an app in a mesh passes from its inbound request to its outbound calls.
_PROPAGATE = ("x-request-id", "traceparent")


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 with JSON answers; quiet (the sidecars keep the access log)."""

    protocol_version = "HTTP/1.1"
    server_version = "demo"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class ApiHandler(_Handler):
    """The backend."""

    version = "v1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        trace = {name: self.headers.get(name, "") for name in _PROPAGATE}
        if url.path == "/api/items":
            time.sleep(random.uniform(0.001, 0.015))  # noqa: S311 - a plausible latency spread
            items = [{"id": 1, "name": "teapot"}, {"id": 2, "name": "kettle"}]
            self.reply(200, {"service": "api", "version": self.version, "items": items, **trace})
        elif url.path == "/api/slow":
            ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            time.sleep(min(max(ms, 0), 30_000) / 1000)
            self.reply(200, {"service": "api", "version": self.version, "slept_ms": ms, **trace})
        elif url.path.startswith("/api/status/"):
            code = int(url.path.rsplit("/", 1)[1])
            self.reply(code if 200 <= code < 600 else 400, {"service": "api", "status": code})
        elif url.path == "/healthz":
            self.reply(200, {"ok": True})
        else:
            self.reply(404, {"service": "api", "error": f"no such path {url.path}"})

    do_HEAD = do_GET


class WebHandler(_Handler):
    """The frontend: calls api through the mesh."""

    api: tuple[str, int] = ("127.0.0.1", 15001)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.reply(200, {"ok": True})
            return
        if path != "/":
            self.reply(404, {"service": "web", "error": f"no such path {path}"})
            return
        headers = {k: v for k in _PROPAGATE if (v := self.headers.get(k))}
        try:
            status, resp_headers, body = self._call_api("/api/items", headers)
        except (http.client.HTTPException, OSError) as exc:
            self.reply(502, {"service": "web", "error": f"calling api: {exc!r}"})
            return
        if status != 200:
            reason = resp_headers.get("x-meshd-error", "")
            self.reply(502, {"service": "web", "api_status": status, "x-meshd-error": reason})
            return
        self.reply(
            200,
            {
                "service": "web",
                "request_id": headers.get("x-request-id", ""),
                "api": json.loads(body),
            },
        )

    def _call_api(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        # A connection per call: a snapshot reloaded with SIGHUP applies to new connections,
        # so every request of the demo shows the change at once.
        conn = http.client.HTTPConnection(*self.api, timeout=10)
        try:
            conn.request("GET", path, headers={**headers, "connection": "close"})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def serve(handler: type[_Handler], port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    # Started in the background by a script, SIGINT is ignored: Ctrl-C is then the script's
    # to handle (it stops everything in order); by hand, Ctrl-C stops the server quietly.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, stop)
    with server:
        server.serve_forever(poll_interval=0.2)


class Traffic:
    """Sends GETs to one URL at a steady pace and reports what came back."""

    def __init__(self, url: str, interval: float, report: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.interval = interval
        self.report = report
        self.stopping = False
        self.total: Counter[str] = Counter()
        #: Answers per api version (what a traffic split changes).
        self.versions: Counter[str] = Counter()
        self._conn: http.client.HTTPConnection | None = None

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def stopped(self) -> bool:
        # A method, not the attribute: the signal handler changes it behind the loop's back.
        return self.stopping

    def one(self) -> tuple[str, float]:
        """Outcome (``ok`` or an error label) and latency of one request."""
        start = time.perf_counter()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            self._conn.request("GET", self.path)
            resp = self._conn.getresponse()
            body = resp.read()
            if resp.will_close:
                self._conn.close()
                self._conn = None
        except (http.client.HTTPException, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return type(exc).__name__, time.perf_counter() - start
        if 200 <= resp.status < 300:
            outcome = "ok"
            self.versions[_api_version(body)] += 1
        else:
            reason = resp.getheader("x-meshd-error")
            outcome = f"{resp.status} {reason}" if reason else str(resp.status)
        return outcome, time.perf_counter() - start

    def run(self) -> int:
        """Loop until stopped; 0 if at least one request was sent and all succeeded."""
        window: Counter[str] = Counter()
        latencies: list[float] = []
        next_report = time.monotonic() + self.report
        next_send = time.monotonic()
        while not self.stopped():
            now = time.monotonic()
            if now >= next_report:
                self._print("last", window, latencies)
                window.clear()
                latencies.clear()
                next_report = now + self.report
            if now < next_send:
                time.sleep(min(next_send, next_report) - now)
                continue
            next_send += self.interval
            outcome, seconds = self.one()
            if self.stopped():
                break  # a request cut short by the shutdown is not the mesh's fault
            window[outcome] += 1
            self.total[outcome] += 1
            latencies.append(seconds)
        if self._conn is not None:
            self._conn.close()
        self._print("total", self.total, [])
        sent = sum(self.total.values())
        return 0 if sent and self.total["ok"] == sent else 1

    def _print(self, label: str, counts: Counter[str], latencies: list[float]) -> None:
        sent = sum(counts.values())
        line = f"traffic {time.strftime('%H:%M:%S')}  {label} {sent:4d} req  {counts['ok']:4d} ok"
        errors = ", ".join(f"{n}x {k}" for k, n in counts.most_common() if k != "ok")
        if latencies:
            ordered = sorted(latencies)
            p50 = ordered[len(ordered) // 2] * 1000
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
            line += f"  p50 {p50:5.1f} ms  p99 {p99:5.1f} ms"
        if label == "last" and self.versions:
            total = sum(self.versions.values())
            shares = ", ".join(f"{v} {n * 100 // total}%" for v, n in sorted(self.versions.items()))
            line += f"  api {shares}"
            self.versions.clear()
        if errors:
            line += f"  errors: {errors}"
        print(line, flush=True)


def _api_version(body: bytes) -> str:
    """The api version that answered through web (``?`` if the answer doesn't say)."""
    try:
        answer = json.loads(body)
        return str(answer["api"]["version"])
    except (ValueError, KeyError, TypeError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``app.py {api,web,traffic} ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="run the backend")
    api.add_argument("--port", type=int, default=18181)
    api.add_argument("--version", default="v1", help="the version this instance reports")
    web = sub.add_parser("web", help="run the frontend")
    web.add_argument("--port", type=int, default=18180)
    web.add_argument("--api", default="http://127.0.0.1:15001", help="api, via the sidecar")
    traffic = sub.add_parser("traffic", help="send requests at a steady pace")
    traffic.add_argument("--url", default="http://127.0.0.1:15006/")
    traffic.add_argument("--interval", type=float, default=0.2, help="seconds between requests")
    traffic.add_argument("--report", type=float, default=5.0, help="seconds between reports")
    args = parser.parse_args(argv)

    if args.command == "api":
        ApiHandler.version = args.version
        serve(ApiHandler, args.port)
    elif args.command == "web":
        target = urlsplit(args.api)
        WebHandler.api = (target.hostname or "127.0.0.1", target.port or 80)
        serve(WebHandler, args.port)
    else:
        gen = Traffic(args.url, args.interval, args.report)
        signal.signal(signal.SIGTERM, gen.stop)
        signal.signal(signal.SIGINT, gen.stop)
        return gen.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
