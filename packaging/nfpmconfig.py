"""The nfpm configuration of a package: contents, maintainer scripts, metadata.

nfpm reads YAML; the configuration is written as JSON (which is YAML), with sorted keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pkgspec import HERE, HOMEPAGE, MAINTAINER, PY, Package
from staging import blocks


@dataclass(frozen=True)
class Recipe:
    """One build's settings: where to write, which version, which timestamp."""

    work: Path
    version: str
    release: str
    epoch: int

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
            text = blocks(template.read_text(), user=pkg.user is not None, units=bool(pkg.units))
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
        text = blocks(
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
