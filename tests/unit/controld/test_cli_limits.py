"""``controld run --api-max-body-bytes``: parsed into the daemon's config, positive only."""

from __future__ import annotations

from pathlib import Path

import pytest

from controld.api.gate import DEFAULT_MAX_BODY_BYTES
from controld.cli import _daemon_config, _parser
from controld.daemon import DaemonConfig


def config(tmp_path: Path, *extra: str) -> DaemonConfig:
    parser = _parser()
    args = parser.parse_args(["run", "--data-dir", str(tmp_path), *extra])
    return _daemon_config(args.run_parser, args)


def test_the_body_limit_flag(tmp_path: Path) -> None:
    assert config(tmp_path).api_max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1 << 20
    limited = config(tmp_path, "--api-max-body-bytes", "4096")
    assert limited.api_max_body_bytes == 4096
    for bad in ("0", "-1", "1M", "x"):
        with pytest.raises(SystemExit):
            config(tmp_path, "--api-max-body-bytes", bad)
