"""Fixtures of the identity unit tests."""

from __future__ import annotations

import pytest

from .identity_testca import TestCA


@pytest.fixture(scope="session")
def ca() -> TestCA:
    """One CA for the whole session (making keys is cheap, but not free)."""
    return TestCA()
