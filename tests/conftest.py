"""Shared by every test folder: pytest puts this folder on ``sys.path`` (it has no
``__init__.py``), so test modules and their support modules import :mod:`ports` from here."""
