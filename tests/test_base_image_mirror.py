"""scripts/docker-base-image.sh finds the Debian mirror in apt's own sources (both formats).

`docker-base-image.sh --mirror` prints the mirror it would give debootstrap; APT_SOURCES_DIR
points it at fixture directories. Where apt-get is installed, apt's own reading of the same
files (`apt-get indextargets`) must pick the same mirror.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "docker-base-image.sh"

DEBIAN_12 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-updates main
deb http://contrib-only.example/debian bookworm contrib
deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] http://ftp.de.debian.org/debian/ bookworm main  # it
deb http://deb.debian.org/debian bookworm main
"""

DEB822_DETAILS = """\
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

# lower-case keys, two URIs, a comment and a key block inside the stanza
types: deb-src deb
uris: http://a.example/debian http://b.example/debian
suites: bookworm-updates bookworm
# components: main
components: contrib main
signed-by:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K5JYTkYkTSMdyhu0
 -----END PGP PUBLIC KEY BLOCK-----
"""

THIRD_PARTY = {
    "00-sury.list": "deb [signed-by=/usr/share/keyrings/sury.gpg] https://packages.sury.org/php/ bookworm main\n",
    "01-docker.list": "deb [arch=amd64] https://download.docker.com/linux/debian bookworm stable\n",
    "02-microsoft.sources": "Types: deb\nURIs: https://packages.microsoft.com/debian/12/prod\nSuites: bookworm\n"
    "Components: main\n",
}


def sources(**files: str) -> dict[str, str]:
    """Files under sources.list.d/, by name."""
    return {f"sources.list.d/{name}": text for name, text in files.items()}


CASES = [
    pytest.param(sources(**{"debian.sources": DEBIAN_12}), "http://deb.debian.org/debian", id="deb822 of Debian 12"),
    pytest.param({"sources.list": ONE_LINE}, "http://ftp.de.debian.org/debian", id="one-line sources.list"),
    pytest.param(sources(**{"mirror.list": ONE_LINE}), "http://ftp.de.debian.org/debian", id="one-line .list"),
    pytest.param(sources(**{"x.sources": DEB822_DETAILS}), "http://a.example/debian", id="deb822 details"),
    pytest.param(
        {"sources.list": "deb http://from-sources-list.example/debian bookworm main\n",
         **sources(**{"a.sources": DEBIAN_12})},
        "http://from-sources-list.example/debian",
        id="sources.list first",
    ),
    pytest.param(
        sources(**{
            "b.list": "deb http://b.example/debian bookworm main\n",
            "a.sources": "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\n",
            "0.list.save": "deb http://saved.example/debian bookworm main\n",
            "0.list.disabled": "deb http://disabled.example/debian bookworm main\n",
            "Z.list": "deb http://upper-case-first.example/debian bookworm main\n",
        }),
        "http://upper-case-first.example/debian",
        id="sources.list.d by name",
    ),
    pytest.param(sources(**THIRD_PARTY, **{"zz-debian.sources": DEBIAN_12}), "http://deb.debian.org/debian",
                 id="third-party bookworm main skipped"),
    pytest.param(
        sources(**{"snapshot.sources": "Types: deb\nURIs: http://snapshot.debian.org/archive/debian/20250520T000000Z/"
                   "\nSuites: bookworm\nComponents: main\n"}),
        "http://snapshot.debian.org/archive/debian/20250520T000000Z",
        id="snapshot.debian.org",
    ),
    pytest.param(
        {"sources.list": "deb http://security.debian.org/debian-security bookworm-security main\n"
                         "deb http://deb.debian.org/debian bookworm-updates main\n",
         **sources(**THIRD_PARTY)},
        None,
        id="no Debian source",
    ),
    pytest.param({}, None, id="no sources at all"),
]


def write(root: Path, files: dict[str, str]) -> Path:
    (root / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def mirror(apt_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DEBIAN_MIRROR", "SUITE")}
    environ |= {"APT_SOURCES_DIR": str(apt_dir), **env}
    return subprocess.run([str(SCRIPT), "--mirror"], env=environ, capture_output=True, text=True, timeout=30)


def is_debian(uri: str) -> bool:
    """The script's rule: a path ending in /debian or a host under debian.org, never security."""
    parts = urlsplit(uri)
    segments = parts.path.rstrip("/").split("/")
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https", "file") or "debian-security" in segments:
        return False
    if host == "security.debian.org":
        return False
    return segments[-1] == "debian" or host == "debian.org" or host.endswith(".debian.org")


def apt_mirror(apt_dir: Path, suite: str = "bookworm") -> str | None:
    """What apt itself reads from those files: the first Debian `deb` source of suite main."""
    out = subprocess.run(
        ["apt-get", "-o", f"Dir::Etc={apt_dir}", "indextargets", "--no-release-info",
         "--format", "$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    for line in out.splitlines():
        kind, uri, release, component = line.split()
        if kind == "deb" and release == suite and component == "main" and is_debian(uri):
            return uri.rstrip("/")
    return None


@pytest.mark.parametrize(("files", "expected"), CASES)
def test_the_mirror_comes_from_apt_sources(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    apt_dir = write(tmp_path / "apt", files)
    result = mirror(apt_dir)
    if expected is None:
        assert (result.returncode, result.stdout) == (1, "")
        assert len(result.stderr.splitlines()) == 1
        assert "set DEBIAN_MIRROR" in result.stderr
        assert str(apt_dir) in result.stderr
    else:
        assert (result.returncode, result.stdout, result.stderr) == (0, expected + "\n", "")


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
@pytest.mark.parametrize(("files", "expected"), CASES)
def test_apt_reads_the_same_mirror(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    assert apt_mirror(write(tmp_path / "apt", files)) == expected


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_this_machines_sources_give_apts_mirror() -> None:
    expected = apt_mirror(Path("/etc/apt"))
    result = mirror(Path("/etc/apt"))
    assert (result.returncode, result.stdout.strip() or None) == ((0, expected) if expected else (1, None))


def test_debian_mirror_overrides_the_sources(tmp_path: Path) -> None:
    apt_dir = write(tmp_path / "apt", sources(**{"debian.sources": DEBIAN_12}))
    result = mirror(apt_dir, DEBIAN_MIRROR="http://mirror.internal/debian")
    assert (result.returncode, result.stdout) == (0, "http://mirror.internal/debian\n")
    result = mirror(tmp_path / "nowhere", DEBIAN_MIRROR="http://mirror.internal/debian")
    assert (result.returncode, result.stdout) == (0, "http://mirror.internal/debian\n")


def test_the_suite_is_matched_exactly(tmp_path: Path) -> None:
    apt_dir = write(tmp_path / "apt", {"sources.list": "deb http://deb.debian.org/debian bookworm main\n"
                                                       "deb http://trixie.example/debian trixie main\n"})
    assert mirror(apt_dir, SUITE="trixie").stdout == "http://trixie.example/debian\n"
    assert mirror(apt_dir, SUITE="bookwor").returncode == 1


def test_the_script_has_no_mirror_built_in() -> None:
    """The default comes from apt's sources; deb.debian.org appears only in the hint to set DEBIAN_MIRROR."""
    lines = [line for line in SCRIPT.read_text().splitlines() if "deb.debian.org" in line]
    assert all(re.search(r"e\.g\. DEBIAN_MIRROR=", line) for line in lines), lines
