"""Every YAML file under ``examples/`` is valid, as ``meshd validate`` would check it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshcore.model import Snapshot
from meshcore.model.loading import load_model
from meshd.sidecar import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
YAML_FILES = sorted([*EXAMPLES.rglob("*.yaml"), *EXAMPLES.rglob("*.yml")])


def _is_bootstrap(path: Path) -> bool:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and "snapshot" in data and "service" in data


BOOTSTRAPS = [p for p in YAML_FILES if _is_bootstrap(p)]


def _snapshot_path(bootstrap: Path) -> Path:
    data = yaml.safe_load(bootstrap.read_text(encoding="utf-8"))
    path = Path(data["snapshot"]["file"])
    return path if path.is_absolute() else bootstrap.parent / path


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(EXAMPLES)) for p in paths]


def test_there_are_examples() -> None:
    assert BOOTSTRAPS, f"no bootstrap files under {EXAMPLES}"


@pytest.mark.parametrize("path", BOOTSTRAPS, ids=_ids(BOOTSTRAPS))
def test_bootstrap_and_its_snapshot_load(path: Path) -> None:
    bootstrap, snapshot = load_config(path)
    assert bootstrap.service
    assert snapshot.version >= 0


@pytest.mark.parametrize("path", YAML_FILES, ids=_ids(YAML_FILES))
def test_every_yaml_file_is_a_bootstrap_or_a_snapshot_in_use(path: Path) -> None:
    if path in BOOTSTRAPS:
        return
    referenced = {_snapshot_path(b).resolve() for b in BOOTSTRAPS}
    assert path.resolve() in referenced, f"{path} is not the snapshot of any bootstrap"
    load_model(Snapshot, path)


def test_demo_addresses_do_not_collide() -> None:
    """The demo's sidecars run side by side on one host: every address must be distinct."""
    demo = [b for b in BOOTSTRAPS if b.is_relative_to(EXAMPLES / "demo")]
    assert demo
    seen: dict[str, str] = {}
    for path in demo:
        bootstrap, snapshot = load_config(path)
        name = bootstrap.service
        owned = {f"{name} app": str(bootstrap.app), f"{name} admin": str(bootstrap.admin)}
        owned |= {f"{name} listener {x.name}": str(x.address) for x in snapshot.listeners}
        for what, address in owned.items():
            assert address not in seen, f"{what} and {seen[address]} both use {address}"
            seen[address] = what
