"""``bench/l7_instructions.py``'s harness (run briefly, without valgrind) through meshd's TCP
listener (``--l4``) and with the ``dataplane`` suite's resilience policy (``--policy``), and
that policy is the suite's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import l7_instructions  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def test_the_policy_is_the_dataplane_suites_less_its_health_check() -> None:
    text = (BENCH / "templates" / "meshd-snapshot.yaml").read_text()
    suite = yaml.safe_load(text.replace("@", ""))
    (route,) = suite["route_tables"][0]["routes"]
    cluster = next(c for c in suite["clusters"] if c["name"] == "backend")
    doc = l7_instructions.snapshot_doc(1000, 2000, l4=False, policy=True)
    (ours,) = doc["route_tables"][0]["routes"]
    assert {k: ours[k] for k in ("timeout_s", "retries")} == {
        k: route[k] for k in ("timeout_s", "retries")
    }
    (ours_cluster,) = doc["clusters"]
    for key in ("lb_policy", "limits", "outlier_detection"):
        assert ours_cluster[key] == cluster[key]
    assert "health_check" in cluster and "health_check" not in ours_cluster
    plain = l7_instructions.snapshot_doc(1000, 2000, l4=False, policy=False)
    assert "route_tables" not in plain and plain["listeners"][0]["cluster"] == "backend"


@pytest.mark.parametrize("flag", ["--l4", "--policy"])
def test_the_harness_proxies(flag: str) -> None:
    # The worker the tool runs under valgrind: 100 warm-up requests per connection, then 64;
    # it raises (exit status 1) on any response but the backend's.
    done = subprocess.run(
        [sys.executable, str(BENCH / "l7_instructions.py"), "--worker", "64", flag],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
