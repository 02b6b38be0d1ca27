"""What packaging/build makes: the packages, their commands, users and directories."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The distribution's interpreter: the virtualenvs point at it (Debian 12: 3.11).
SYSTEM_PYTHON = Path("/usr/bin/python3")
PY = "python3.11"
MAINTAINER = "meshd maintainers <meshd@example.org>"
HOMEPAGE = "https://example.org/meshd"


@dataclass(frozen=True)
class Package:
    """One package: its name, command, summary, and the system user its daemon runs as."""

    name: str
    command: str
    summary: str
    description: str
    user: str | None
    config_dir: str | None
    state_dir: str | None
    units: tuple[str, ...]


PACKAGES = (
    Package(
        name="meshd",
        command="meshd",
        summary="Sidecar proxy of the service mesh",
        description=(
            "The data plane of the meshd service mesh: one sidecar per local service routes\n"
            "HTTP/1.1 and TCP between services over mutual TLS, enforces access policies and\n"
            "exports metrics. Runs as meshd@NAME.service with /etc/meshd/NAME.yaml."
        ),
        user="meshd",
        config_dir="/etc/meshd",
        state_dir="/var/lib/meshd",
        units=("meshd@.service", "meshd@.socket"),
    ),
    Package(
        name="controld",
        command="controld",
        summary="Control plane of the meshd service mesh",
        description=(
            "The control plane of the meshd service mesh: a Consul-compatible service\n"
            "registry, the policy store, the certificate authority of the mesh and the\n"
            "snapshot push to the sidecars. Runs as controld.service."
        ),
        user="controld",
        config_dir="/etc/controld",
        state_dir="/var/lib/controld",
        units=("controld.service",),
    ),
    Package(
        name="meshctl",
        command="meshctl",
        summary="Operator tools of the meshd service mesh",
        description=(
            "meshctl, the operator CLI of the meshd service mesh: apply and inspect policy,\n"
            "mint join tokens, show the sidecars' status, explain routing decisions."
        ),
        user=None,
        config_dir=None,
        state_dir=None,
        units=(),
    ),
)

#: The module run as each command (``python -m``) to generate its man page.
CLI_MODULES = {"meshd": "meshd.cli", "controld": "controld.cli", "meshctl": "tui.cli"}
#: Subcommands whose --help goes into the man page's COMMANDS section.
SUBCOMMANDS = {"meshd": ("run", "validate"), "controld": ("run", "registry"), "meshctl": ()}


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"packaging/build: {message}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str | Path], *, check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (text mode); raises on a non-zero exit unless ``check`` is false."""
    # Commands and arguments are this script's own (tool paths, cache paths).
    return subprocess.run([str(c) for c in cmd], check=check, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]  # noqa: S603
