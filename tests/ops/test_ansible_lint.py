"""The Ansible content is lint-clean (production profile) and the playbooks parse."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(argv[0])
    assert tool is not None, f"{argv[0]} missing (pip install -e '.[test]')"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [tool, *argv[1:]],
        cwd=ANSIBLE,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    result = _run(["ansible-lint", "--offline", "--nocolor"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.parametrize("playbook", ["site.yml", "upgrade.yml"])
def test_playbooks_parse(tmp_path: Path, playbook: str) -> None:
    result = _run(
        ["ansible-playbook", "--syntax-check", "-i", "inventory/example.yml", playbook], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
