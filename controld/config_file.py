"""``controld run --config FILE``: the command-line options, written down as YAML.

The file is a mapping of ``controld run`` long option names (without ``--``) to values::

    data-dir: /var/lib/controld
    admin: 127.0.0.1:8501
    push: 127.0.0.1:8502
    tls: "off"
    tls-san: [controld.example, 10.0.0.5]
    log-level: info
    registry-acl-disabled: false

It is turned into options placed *before* those of the command line, so the command line
wins for single-valued options (and adds to lists such as ``tls-san``). Every value is
checked by the same parser as on the command line. A flag (``registry-acl-disabled``) takes
``true`` or ``false``; for other options ``false`` means ``off`` (YAML reads a bare ``off``
as false), null leaves the option out. SIGHUP reads the file again (:mod:`controld.lifecycle`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from meshcore.errors import MeshError

__all__ = ["ConfigFileError", "file_arguments"]

#: Options that make no sense in the file.
_REFUSED = frozenset({"config", "help", "version"})


class ConfigFileError(MeshError):
    """The configuration file can't be read or is not a mapping of option names to values."""


def file_arguments(path: Path, flags: frozenset[str]) -> list[str]:
    """The command-line arguments ``path`` stands for (``["--admin", "127.0.0.1:8501", ...]``).

    ``flags``: the option names (without ``--``) that take no value. A list repeats the
    option. Raises :class:`ConfigFileError`.
    """
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: not valid YAML: {exc}") from exc
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ConfigFileError(f"{path}: expected a mapping of option names to values")
    argv: list[str] = []
    for key, value in doc.items():
        if not isinstance(key, str) or not key or key.startswith("-") or key in _REFUSED:
            raise ConfigFileError(f"{path}: {key!r} is not an option of the file")
        option = f"--{key}"
        if value is None:
            continue
        if key in flags:
            if not isinstance(value, bool):
                raise ConfigFileError(f"{path}: {key}: expected true or false, got {value!r}")
            argv += [option] if value else []
        elif value is False:
            argv += [option, "off"]
        elif isinstance(value, list):
            for item in value:
                argv += [option, _scalar(path, key, item)]
        else:
            argv += [option, _scalar(path, key, value)]
    return argv


def _scalar(path: Path, key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigFileError(f"{path}: {key}: expected a string or a number, got {value!r}")
    return str(value)
