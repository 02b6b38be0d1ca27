#!/usr/bin/env python3
"""meshd-inbound's user-space instructions per full mTLS handshake: an A/B that load can't move.

Not a suite (no ``run_suite``): a tool for working on the handshake path next to
``bench/profile_mtls.py``, whose CPU per handshake moves several percent between rounds of
the same code on a shared machine. Each checkout's ``meshd-inbound`` of the ``mtls`` suite
(STRICT, identity from files, in front of the ``dataplane`` backend nginx) runs under
``valgrind --tool=callgrind``; one Python client makes ``--warm`` full mTLS 1.3 handshakes
with the ``web`` certificate, each followed by ``GET / HTTP/1.0`` as ``openssl s_time -new``
sends it, then ``--handshakes`` more, counted between two callgrind dumps. ``nginx`` as a
checkout measures the suite's ``nginx-back`` (one process, ``master_process off``) alike.

    .venv/bin/python bench/mtls_instructions.py /tmp/base . nginx
    .venv/bin/python bench/mtls_instructions.py --objects mypyc:/tmp/base mypyc:.

Counted: user-space instructions of the server process (OpenSSL, the interpreter, libc),
less the sweeps of meshd's deadline reaper in that time (a timer, every 50 ms of wall time:
about as many as handshakes under callgrind; each counted at what it costs idle, measured
after as long a pause; compiled builds from before the sweep became a tick of Trio's I/O
step only: see ``SWEEP``), deterministic to about 0.3% with
``PYTHONHASHSEED=0``; ``--objects`` splits them by shared
object (libcrypto, libssl, libc, python3.11, ...). Not counted: the kernel's share (system
calls: ``strace -c`` them) and scheduling, so a change of syscalls or wake-ups still needs
``profile_mtls.py``. A checkout takes about half a minute (meshd starts slowly under valgrind).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataplane as dp
import mtls
from certs import Pki, write_pki
from common import (
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    WrkParams,
    ensure_tools,
    free_ports,
    http_get,
    render,
    wait_for_port,
)
from profile_l7 import _checkout_ctx

#: The checkout name that measures the suite's ``nginx-back`` instead of a meshd.
NGINX = "nginx"
_TOTALS = re.compile(r"^(?:totals|summary): (\d+)", re.M)
_START_S = 300.0
#: The name of callgrind's output files (``callgrind.out.1``, ... one per dump).
OUT = "callgrind.out"


def handshakes(port: int, pki: Pki, count: int) -> int:
    """``count`` full mTLS handshakes one after the other, each with ``GET / HTTP/1.0`` read to
    its end (the ``mtls`` suite's check exchange, as ``openssl s_time -new``); how many were
    answered 200."""
    ok = 0
    for _ in range(count):
        data = mtls._mtls_exchange(port, pki, with_cert=True)
        ok += data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    return ok


def dump(proc: ManagedProcess, out: Path) -> Path:
    """Make callgrind write (and zero) its counters to ``out.N``; the file it wrote."""
    before = set(out.parent.glob(f"{out.name}.*"))
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        for path in set(out.parent.glob(f"{out.name}.*")) - before:
            if _TOTALS.search(path.read_text(errors="replace")):
                return path
        time.sleep(0.2)
    raise BenchError(f"{proc.name}: callgrind wrote no dump:\n{proc.log_tail()}")


def by_object(path: Path) -> Counter[str]:
    """Instructions per shared object in a callgrind dump (each function's own cost)."""
    names: dict[str, str] = {}
    costs: Counter[str] = Counter()
    current = ""
    after_call = False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("ob=", "cob=")):
            ident, _, name = line.split("=", 1)[1].partition(" ")
            if name:
                names[ident] = name
            if line.startswith("ob="):
                current = names.get(ident, ident)
        elif line.startswith("calls="):
            after_call = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                costs[current] += int(parts[1])
    return costs


def start_callgrind_meshd(
    ctx: Context, procs: ProcessGroup, name: str, bootstrap: Path, port: int, admin: int
) -> ManagedProcess:
    """``meshd run -c bootstrap`` as ``name`` under callgrind (its counters written to
    ``callgrind.out.*`` beside the bootstrap on each :func:`dump`), once it is ready."""
    workdir = bootstrap.parent
    env = {**ctx.project_env(), "PYTHONHASHSEED": "0"}
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / OUT}", ctx.python]
    argv += ["-m", "meshd", "run", "-c", str(bootstrap), "--log-level", "warning"]
    proc = procs.start(name, argv, cwd=workdir, env=env)
    for wanted in (admin, port):
        wait_for_port(wanted, proc, timeout=_START_S)
    deadline = time.monotonic() + _START_S
    while http_get(admin, "/ready")[0] != 200:
        if time.monotonic() > deadline:
            raise BenchError(f"{name} never became ready:\n{proc.log_tail()}")
        time.sleep(0.5)
    return proc


def _start_meshd(
    ctx: Context, procs: ProcessGroup, pki: Pki, backend: int, workdir: Path
) -> tuple[ManagedProcess, int]:
    port, admin = free_ports(2)
    ports = {"port": port, "admin_port": admin, "app_port": backend, "inbound_port": port}
    bootstrap = mtls.sidecar_config(workdir, pki, "api", **ports)
    return start_callgrind_meshd(ctx, procs, "meshd-inbound", bootstrap, port, admin), port


def _start_nginx(
    nginx: str, procs: ProcessGroup, workdir: Path, backend: int, out: Path
) -> tuple[ManagedProcess, int]:
    (port,) = free_ports(1)
    conf = workdir / "nginx.conf"
    values = {"dir": workdir, "user_line": dp._user_line(), "port": port, "backend_port": backend}
    render("nginx-mtls-back.conf", conf, **values)
    # One process, so the worker's instructions are the counted process's.
    conf.write_text(conf.read_text().replace("daemon off;", "daemon off;\nmaster_process off;"))
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", nginx]
    argv += ["-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    proc = procs.start("nginx-back", argv, cwd=workdir)
    wait_for_port(port, proc, timeout=_START_S)
    return proc, port


def measure(
    base: Context, spec: str, index: int, pki: Pki, backend: int, args: argparse.Namespace
) -> Measured:
    """Instructions per handshake of one checkout (or ``nginx``), and their split by object."""
    workdir = base.tempdir(f"server-{index}" if spec != NGINX else "nginx-back")
    out = workdir / OUT
    with ProcessGroup() as procs:
        if spec == NGINX:
            server, port = _start_nginx(args.nginx, procs, workdir, backend, out)
        else:
            ctx = _checkout_ctx(Context(base.root, base.python, base.wrk, workdir), spec, index)
            server, port = _start_meshd(ctx, procs, pki, backend, workdir)
        if handshakes(port, pki, args.warm) != args.warm:
            raise BenchError(f"{spec}: the warm-up handshakes were not all answered 200")
        dump(server, out)
        started = time.monotonic()
        if handshakes(port, pki, args.handshakes) != args.handshakes:
            raise BenchError(f"{spec}: the handshakes were not all answered 200")
        counted = dump(server, out)
        # As long again with no connection: what one sweep of the deadline reaper costs.
        time.sleep(max(1.0, time.monotonic() - started))
        idle = dump(server, out)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        label = f"{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec)}"
        shutil.copy(counted, args.keep / f"{label}.counted")
        shutil.copy(idle, args.keep / f"{label}.idle")
    total, objects = _total(counted), by_object(counted)
    sweeps, idle_sweeps = calls_to(counted, SWEEP), calls_to(idle, SWEEP)
    if sweeps and idle_sweeps:
        share = sweeps / idle_sweeps
        total -= round(_total(idle) * share)
        for name, count in by_object(idle).items():
            objects[name] -= round(count * share)
    return Measured(total / args.handshakes, objects, sweeps, _total(idle) / max(1, idle_sweeps))


#: The compiled deadline reaper (``ProxyShared.run_deadlines``), once per sweep: every 50 ms
#: of wall time, so ~1-2 times per handshake under callgrind's slow-down (against one in ~20
#: at full speed), each ~145,000 instructions. Its count in the measured window, at the cost
#: of an idle sweep, is taken out. Pure Python builds run it interpreted: not taken out. Since
#: 2026-12-07 the sweep is a tick of Trio's I/O step (``ProxyShared.sweep_deadlines``), only
#: while there are connections: never idle, so nothing is taken out of such a build; its ticks
#: (~1-2 per handshake here, at most ~12,000 instructions each against 145,000) are counted in.
SWEEP = "run_deadlines_ProxyShared_gen_____mypyc_generator_helper__"


@dataclass(frozen=True)
class Measured:
    """One checkout's count: instructions per handshake (less the reaper's sweeps), by
    object, the sweeps taken out and what one costs."""

    per_handshake: float
    objects: Counter[str]
    sweeps: int
    per_sweep: float


def _total(path: Path) -> int:
    total = _TOTALS.search(path.read_text(errors="replace"))
    assert total is not None
    return int(total.group(1))


def calls_to(path: Path, name: str) -> int:
    """Calls of the functions whose name contains ``name`` in a callgrind dump."""
    ids: set[str] = set()
    callee = ""
    calls = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")):
            ident, _, fn = line.split("=", 1)[1].partition(" ")
            if fn and name in fn:
                ids.add(ident)
            if line.startswith("cfn="):
                callee = ident
        elif line.startswith("calls=") and callee in ids:
            calls += int(line[6:].split()[0])
    return calls


@contextlib.contextmanager
def backend_and_pki(prefix: str, nginx: str) -> Iterator[tuple[Context, Pki, int]]:
    """A work directory (removed after), the ``mtls`` suite's PKI in it and the ``dataplane``
    backend nginx (stopped after): the context, the PKI and the backend's port."""
    workroot = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base = Context(Path.cwd(), sys.executable, WrkParams.from_env(), workroot)
        pki = write_pki(base.tempdir("pki"), mtls.SERVICES)
        (backend,) = free_ports(1)
        with ProcessGroup() as procs:
            dp.start_nginx(base, procs, nginx, "backend", "nginx-backend.conf", port=backend)
            yield base, pki, backend
    finally:
        shutil.rmtree(workroot, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Parse the arguments, measure each checkout, print instructions per handshake."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "checkouts",
        nargs="+",
        help=f"meshd source trees (mypyc:DIR: DIR's compiled build; {NGINX}: nginx-back)",
    )
    parser.add_argument("--handshakes", type=int, default=60)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--objects", action="store_true", help="split by shared object")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy each checkout's counted dump (and the idle one) to DIR",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    tools = ensure_tools({"nginx": "nginx-light"})
    args.nginx = tools["nginx"]
    with backend_and_pki("meshd-mtls-instructions-", tools["nginx"]) as (base, pki, backend):
        first = 0.0
        for index, spec in enumerate(args.checkouts):
            got = measure(base, spec, index, pki, backend, args)
            per_hs = got.per_handshake
            first = first or per_hs
            swept = f"; less {got.sweeps} sweeps of {got.per_sweep:,.0f}" if got.sweeps else ""
            print(
                f"IR_PER_HANDSHAKE {spec}: {per_hs:,.0f} (x{per_hs / first:.4f} of the first"
                f"{swept})",
                flush=True,
            )
            if args.objects:
                for name, count in got.objects.most_common(6):
                    print(f"    {count / args.handshakes:>12,.0f}  {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
