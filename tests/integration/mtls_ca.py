"""The unit tests' mini CA (``tests/unit/meshd/net/tls_certs.py``), for integration tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).parents[1] / "unit" / "meshd" / "net" / "tls_certs.py"
_spec = importlib.util.spec_from_file_location("_mtls_tls_certs", _PATH)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
sys.modules["_mtls_tls_certs"] = _module  # dataclasses look the module up by name
_spec.loader.exec_module(_module)

Leaf = _module.Leaf
MiniCA = _module.MiniCA
make_ca = _module.make_ca
spiffe = _module.spiffe
TRUST_DOMAIN: str = _module.TRUST_DOMAIN
