"""Tests for meshd.cli's argument parser: the same usage and help text as argparse's own
formatter, without importing shutil to parse a command line (issue 15)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.cli import _parser

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
    ours = _parsers(_parser())
    plain = _parsers(_parser())
    for parser in plain:
        parser.formatter_class = argparse.HelpFormatter
    assert [p.prog for p in ours] == ["meshd", "meshd run", "meshd validate"]
    for mine, theirs in zip(ours, plain, strict=True):
        assert mine.format_help() == theirs.format_help()
        assert mine.format_usage() == theirs.format_usage()


_PROGRAM = """
import json, sys
from meshd.cli import _parser
args = _parser().parse_args(["run", "-c", "bootstrap.yaml", "--log-level", "INFO"])
print(json.dumps({"level": args.log_level, "shutil": "shutil" in sys.modules}))
"""


def test_parsing_imports_no_shutil() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        capture_output=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout.decode()) == {"level": "info", "shutil": False}
