#!/usr/bin/env python3
"""Which functions of the compiled group library a sidecar runs: ``packaging/mypyc-hot.txt``.

Not a suite (no ``run_suite``): the tool that writes the list ``hatch_build.py`` links the group
library by (issue 15). The kernel maps a library's code in 64 kB fault-around windows, and a
sidecar's start-up runs code all over the group library, so without an order all of its
``.text`` is resident at idle. Linked with the functions a sidecar runs first and together
(``hatch_build.section_order``), the windows of the code it never runs are never mapped.

The run: the checkout's compiled build (``meshd_build.prepare``, as ``bench/run`` makes it), one
meshd under ``valgrind --tool=callgrind`` with the ``memory`` suite's sidecar (the ``policy``
snapshot: retries, breakers, outlier detection, a health check every second, EWMA, a rate
limit) and a TCP listener as the ``dataplane`` suite's, in front of the dataplane suite's nginx;
once ready: keep-alive and new-connection requests on both listeners, ``/ready`` and two
``/metrics`` scrapes, then :data:`IDLE_S` seconds idle (health checks, outlier sweeps). The
counts are dumped before meshd is stopped (the shutdown path is not kept resident). The
functions of the group library with any instruction counted, sorted by name, are the list.

    .venv/bin/python bench/mypyc_hot.py            # rewrites packaging/mypyc-hot.txt
    .venv/bin/python bench/mypyc_hot.py --out /tmp/hot.txt

Run it again after changing the compiled modules: a function the list misses still links
(after the listed ones) and costs memory only when it runs; a listed one that no longer exists
is skipped (tests/unit/test_hatch_build.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import LOOPBACK, BenchError, Context, http_get
from dataplane import start_nginx
from meshd_build import prepare
from policy import bench_snapshot

ROOT = Path(__file__).resolve().parent.parent
#: Seconds the sidecar idles before the counts are taken: its timers run (health check 1 s).
IDLE_S = 12
#: Requests on each listener, on one keep-alive connection and on new connections each.
REQUESTS = 20
#: Where the list is (``hatch_build.HOT_LIST``).
DEFAULT_OUT = ROOT / "packaging" / "mypyc-hot.txt"
HEADER = (
    "# Functions of meshd's mypyc group library that a sidecar runs: start-up, requests on an\n"
    "# HTTP and a TCP listener, /ready, /metrics, health checks (bench/mypyc_hot.py writes it;\n"
    "# hatch_build.py links them together, bench/README.md `memory`). A name that no longer\n"
    "# exists is skipped; one missing costs memory only.\n"
)
#: Profile runs whose functions are joined: the cyclic GC (``*_traverse``) and the timers run
#: at times no run controls.
RUNS = 2
#: ``callgrind_annotate`` lines: ``<Ir> (<pct>)  <file>:<function>['<depth>] [<object>]``
#: (callgrind names a function's recursive calls by their depth).
_LINE = re.compile(r"^\s*[\d,]+\s.*?:(?P<fn>[^\s']+)(?:'\d+)? \[(?P<obj>[^\]]+)\]\s*$")
#: A symbol (callgrind names code without one by its address: left out).
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _keepalive(port: int, count: int) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        for _ in range(count):
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise BenchError(f"GET / on {port} answered {resp.status}")
    finally:
        conn.close()


def _workload(ports: tuple[int, int], admin: int) -> None:
    for port in ports:
        _keepalive(port, REQUESTS)
        for _ in range(REQUESTS):
            if http_get(port, timeout=30)[0] != 200:
                raise BenchError(f"GET / on {port} failed")
    for path in ("/ready", "/metrics", "/metrics"):
        if http_get(admin, path, timeout=30)[0] != 200:
            raise BenchError(f"GET {path} on the admin port failed")


def _write_sidecar(workdir: Path, backend: int, l7: int, l4: int, admin: int) -> Path:
    snapshot = bench_snapshot(backend, l7, policy=True)
    snapshot["listeners"].append(
        {
            "name": "bench-l4",
            "direction": "outbound",
            "address": f"{LOOPBACK}:{l4}",
            "protocol": "tcp",
            "cluster": "backend",
        }
    )
    (workdir / "snapshot.yaml").write_text(json.dumps(snapshot, indent=2) + "\n")
    return common.render(
        "meshd-bootstrap.yaml", workdir / "bootstrap.yaml", backend_port=backend, admin_port=admin
    )


def profile(ctx: Context, valgrind: str, out: Path) -> None:
    """Run the sidecar under callgrind (counts dumped to ``out``.1 before the stop)."""
    tools = common.ensure_tools({"nginx": "nginx-light"})
    backend, l7, l4, admin = common.free_ports(4)
    with common.ProcessGroup() as procs:
        start_nginx(ctx, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend)
        bootstrap = _write_sidecar(ctx.tempdir("meshd"), backend, l7, l4, admin)
        argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
        argv += [ctx.python, "-m", "meshd", "run", "-c", str(bootstrap), "--log-level", "info"]
        meshd = procs.start("meshd", argv, cwd=bootstrap.parent, env=ctx.project_env())
        for port in (admin, l7, l4):
            common.wait_for_port(port, meshd, timeout=600.0)  # valgrind: ~50x slower
        deadline = time.monotonic() + 300
        while http_get(admin, "/ready", timeout=30)[0] != 200:
            if time.monotonic() > deadline:
                raise BenchError(f"meshd never became ready:\n{meshd.log_tail()}")
            time.sleep(0.5)
        _workload((l7, l4), admin)
        time.sleep(IDLE_S)
        dump = subprocess.run(
            ["callgrind_control", "--dump=hot", str(meshd.pid)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if dump.returncode != 0:
            raise BenchError(f"callgrind_control failed: {dump.stdout}{dump.stderr}")
        meshd.popen.send_signal(signal.SIGTERM)
        meshd.popen.wait(timeout=300)


def hot_functions(annotated: str, library: str) -> list[str]:
    """The functions of ``library`` (its file name) in ``callgrind_annotate``'s output."""
    found = set()
    for line in annotated.splitlines():
        match = _LINE.match(line)
        if match and Path(match["obj"]).name == library and _SYMBOL.fullmatch(match["fn"]):
            found.add(match["fn"])
    return sorted(found)


def main(argv: list[str]) -> int:
    """Profile the compiled build of the checkout and write the list."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="mypyc-hot-") as tmp:
        work = Path(tmp)
        build = prepare(ROOT, "mypyc", work / "build")
        print(build.info_line(), flush=True)
        assert build.path is not None
        (library,) = [p.name for p in build.path.glob("*__mypyc.*.so")]
        names: set[str] = set()
        for run in range(RUNS):
            wrk = common.WrkParams.from_env()
            ctx = Context(ROOT, sys.executable, wrk, work / f"suite{run}", build)
            ctx.workdir.mkdir()
            profile(ctx, valgrind, work / f"callgrind{run}.out")
            dumps = sorted(work.glob(f"callgrind{run}.out.*"))
            if not dumps:
                raise SystemExit("callgrind wrote no dump")
            annotated = subprocess.run(
                ["callgrind_annotate", "--threshold=100", "--inclusive=no", str(dumps[0])],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            names.update(hot_functions(annotated, library))
    if not names:
        raise SystemExit(f"no function of {library} ran: is it the compiled build?")
    args.out.write_text(HEADER + "".join(f"{name}\n" for name in sorted(names)))
    print(f"{len(names)} functions of {library} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
