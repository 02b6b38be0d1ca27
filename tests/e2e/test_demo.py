"""The README's first command: ``./scripts/demo`` brings up the mesh in STRICT mTLS and traffic
flows. Runs the real script (bounded by ``DEMO_SECONDS``) with its state in a temporary
directory; skipped when one of the demo's fixed ports is taken (a demo already running)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Every port scripts/demo binds on 127.0.0.1.
DEMO_PORTS: tuple[int, ...] = (8500, 8501, 8502, 8503, 15000, 15001, 15006, 15100, 15106, 15200)
DEMO_PORTS += (15206, 15300, 15301, 15306, 18180, 18181, 18182, 18183)
WEB = "spiffe://demo.mesh.local/ns/default/svc/web"


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _records(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_demo_runs_in_strict_mtls(tmp_path: Path) -> None:
    taken = [p for p in DEMO_PORTS if _taken(p)]
    if taken:
        pytest.skip(f"demo ports in use: {taken}")
    run_dir = tmp_path / "demo"
    env = dict(os.environ, DEMO_SECONDS="12", DEMO_DIR=str(run_dir))
    env["MESHD_VENV"] = str(Path(sys.executable).parent.parent)
    done = subprocess.run(
        [str(REPO / "scripts" / "demo")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "first request ok" in out
    total = re.search(r"total\s+(\d+) req\s+(\d+) ok", out)
    assert total is not None, out[-2000:]
    assert int(total.group(1)) > 0
    assert total.group(1) == total.group(2)

    logs = run_dir / "logs"
    # api's sidecar saw web's certificate on every request it served.
    access = [r for r in _records(logs / "api-v1-sidecar.log") if r.get("event") == "access"]
    assert access
    assert all(r.get("source_identity") == WEB for r in access)
    assert all(r.get("source") == "web" for r in access)
    # Every sidecar enrolled (the join tokens are spent) and holds its certificate.
    state = run_dir / "state"
    for name in ("web", "api-v1", "api-v2", "loadgen"):
        assert not (state / f"{name}.join").exists()
        assert any((state / f"{name}.identity").iterdir())
