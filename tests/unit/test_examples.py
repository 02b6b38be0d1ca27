"""Every YAML file under ``examples/`` is valid, as ``meshd validate`` or ``meshctl`` check it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshcore.model import Snapshot
from meshcore.model.documents import load_paths
from meshcore.model.loading import load_model
from meshd.sidecar import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
YAML_FILES = sorted([*EXAMPLES.rglob("*.yaml"), *EXAMPLES.rglob("*.yml")])


def _documents(path: Path) -> list[object]:
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def _is_bootstrap(path: Path) -> bool:
    docs = _documents(path)
    return len(docs) == 1 and isinstance(docs[0], dict) and {"snapshot", "service"} <= set(docs[0])


def _is_policy(path: Path) -> bool:
    return any(isinstance(doc, dict) and "kind" in doc for doc in _documents(path))


BOOTSTRAPS = [p for p in YAML_FILES if _is_bootstrap(p)]
POLICIES = [p for p in YAML_FILES if _is_policy(p)]


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
    assert snapshot is not None and snapshot.version >= 0


@pytest.mark.parametrize("path", POLICIES, ids=_ids(POLICIES))
def test_policy_files_load(path: Path) -> None:
    assert load_paths([path])


@pytest.mark.parametrize("path", YAML_FILES, ids=_ids(YAML_FILES))
def test_every_yaml_file_is_a_bootstrap_policy_or_a_snapshot_in_use(path: Path) -> None:
    if path in BOOTSTRAPS or path in POLICIES:
        return
    referenced = {_snapshot_path(b).resolve() for b in BOOTSTRAPS}
    assert path.resolve() in referenced, f"{path} is not the snapshot of any bootstrap"
    load_model(Snapshot, path)


def test_static_example_addresses_do_not_collide() -> None:
    """The static sidecars run side by side on one host: every address must be distinct."""
    demo = [b for b in BOOTSTRAPS if b.is_relative_to(EXAMPLES / "static")]
    assert demo
    seen: dict[str, str] = {}
    for path in demo:
        bootstrap, snapshot = load_config(path)
        assert snapshot is not None
        name = bootstrap.service
        owned = {f"{name} app": str(bootstrap.app), f"{name} admin": str(bootstrap.admin)}
        owned |= {f"{name} listener {x.name}": str(x.address) for x in snapshot.listeners}
        for what, address in owned.items():
            assert address not in seen, f"{what} and {seen[address]} both use {address}"
            seen[address] = what
