"""Tests for meshd's command line (meshd.cliargs, meshd.cli): the same usage and help text as
argparse's own formatter, without importing shutil to parse a command line, and the parser
forgotten once it has parsed (issue 15)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.cliargs import parser

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[3]


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *(p for sub in subs for p in sub.choices.values())]


@pytest.mark.parametrize("columns", ["40", "80", "200"])
def test_help_and_usage_as_argparse_writes_them(
    monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    ours = _parsers(parser())
    plain = _parsers(parser())
    for each in plain:
        each.formatter_class = argparse.HelpFormatter
    assert [p.prog for p in ours] == ["meshd", "meshd run", "meshd validate"]
    for mine, theirs in zip(ours, plain, strict=True):
        assert mine.format_help() == theirs.format_help()
        assert mine.format_usage() == theirs.format_usage()


_PROGRAM = """
import gc, json, sys, types
before = [m for m in ("argparse", "gettext") if m in sys.modules]
from meshd.cli import _options
options = _options(["run", "-c", "bootstrap.yaml", "--log-level", "INFO"])
gone = ("argparse", "gettext", "meshd.cliargs", "shutil")
alive = [o.__name__ for o in gc.get_objects() if isinstance(o, types.ModuleType)]
print(json.dumps({
    "before": before,
    "options": [options.command, str(options.config), options.log_level, options.worker_index],
    "listed": [m for m in gone if m in sys.modules],
    "alive": [m for m in gone if m in alive],
}))
"""


def test_the_parser_is_forgotten_once_it_has_parsed() -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.check_output([sys.executable, "-c", _PROGRAM], env=env, timeout=45)
    result = json.loads(out)
    assert result["before"] == []
    assert result["options"] == ["run", "bootstrap.yaml", "info", 0]
    # Neither listed nor alive: freed for what the sidecar imports next.
    assert result["listed"] == result["alive"] == []
